"""Each training loss against a direct, loop-based computation of its definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dermfm.train.losses import (
    clip_loss,
    local_alignment_loss,
    make_loss,
    masked_latent_loss,
    siglip_loss,
    view_weights,
)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _log_softmax_at(scores: list[float], i: int, keep: list[bool] | None = None) -> float:
    keep = keep or [True] * len(scores)
    den = sum(math.exp(s) for s, k in zip(scores, keep, strict=True) if k)
    return scores[i] - math.log(den)


def test_clip_loss_matches_the_infonce_definition() -> None:
    img, txt = _unit(5, 8, seed=1), _unit(5, 8, seed=2)
    scale = torch.tensor(math.log(20.0))
    sims = (img @ txt.T).tolist()
    direct = 0.0
    for i in range(5):
        direct -= _log_softmax_at([20 * s for s in sims[i]], i) / 10
        direct -= _log_softmax_at([20 * sims[j][i] for j in range(5)], i) / 10
    assert clip_loss(img, txt, scale).item() == pytest.approx(direct, rel=1e-5)


def test_clip_loss_leaves_same_label_pairs_out_of_the_denominator() -> None:
    img, txt = _unit(4, 8, seed=3), _unit(4, 8, seed=4)
    labels = torch.tensor([0, 0, 1, -1])
    sims = (img @ txt.T).tolist()
    direct = 0.0
    for i in range(4):
        keep = [j == i or not (labels[i] == labels[j] and labels[i] >= 0) for j in range(4)]
        direct -= _log_softmax_at([10 * s for s in sims[i]], i, keep) / 8
        direct -= _log_softmax_at([10 * sims[j][i] for j in range(4)], i, keep) / 8
    got = clip_loss(img, txt, torch.tensor(math.log(10.0)), labels)
    assert got.item() == pytest.approx(direct, rel=1e-5)
    assert got.item() != pytest.approx(clip_loss(img, txt, torch.tensor(math.log(10.0))).item())


def test_siglip_loss_matches_the_pairwise_sigmoid_definition() -> None:
    img, txt = _unit(4, 8, seed=5), _unit(4, 8, seed=6)
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-3.0)
    direct = 0.0
    for i in range(4):
        for j in range(4):
            z = 10 * float(img[i] @ txt[j]) - 3.0
            sign = 1.0 if i == j else -1.0
            direct -= math.log(1 / (1 + math.exp(-sign * z)))
    got = siglip_loss(img, txt, scale, bias)
    assert got.item() == pytest.approx(direct / 4, rel=1e-5)


def test_make_view_weights_are_a_detached_softmax_over_present_views() -> None:
    texts = _unit(3, 4, 8, seed=7).requires_grad_(True)
    valid = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    w = view_weights(texts, valid, temperature=0.5)
    assert not w.requires_grad
    for b in range(3):
        sims = [float(texts[b, v].detach() @ texts[b, 0].detach()) / 0.5 for v in range(4)]
        den = sum(math.exp(s) for s, ok in zip(sims, valid[b], strict=True) if ok)
        for v in range(4):
            expected = math.exp(sims[v]) / den if valid[b, v] else 0.0
            assert w[b, v].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_make_loss_matches_a_direct_multi_positive_computation() -> None:
    b, v, s = 3, 3, 5.0
    img, texts = _unit(b, 8, seed=8), _unit(b, v, 8, seed=9)
    valid = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    labels = torch.tensor([2, 2, 1])
    label_views = torch.tensor([True, False, False])
    w = view_weights(texts, valid, 0.5)
    cols = [(j, u) for j in range(b) for u in range(v)]

    def false_negative(i: int, j: int, u: int) -> bool:
        return i != j and labels[i] == labels[j] and bool(label_views[u])

    i2t = 0.0
    for i in range(b):
        keep = [bool(valid[j, u]) and not false_negative(i, j, u) for j, u in cols]
        scores = [s * float(img[i] @ texts[j, u]) for j, u in cols]
        for u in range(v):
            if valid[i, u]:
                i2t -= float(w[i, u]) * _log_softmax_at(scores, cols.index((i, u)), keep)
    t2i = 0.0
    for i in range(b):
        for u in range(v):
            if valid[i, u]:
                keep = [not false_negative(j, i, u) for j in range(b)]
                scores = [s * float(img[j] @ texts[i, u]) for j in range(b)]
                t2i -= float(w[i, u]) * _log_softmax_at(scores, i, keep)
    direct = (i2t / b + t2i / b) / 2
    got = make_loss(img, texts, valid, torch.tensor(math.log(s)), labels, label_views, 0.5)
    assert got.item() == pytest.approx(direct, rel=1e-5)


def test_make_loss_gradients_are_finite_with_missing_views() -> None:
    img = _unit(4, 8, seed=10).requires_grad_(True)
    texts = _unit(4, 3, 8, seed=11).requires_grad_(True)
    valid = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    make_loss(img, texts, valid, torch.tensor(2.0), torch.tensor([0, 0, 0, 1])).backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(texts.grad).all()
    assert texts.grad[0, 1].abs().sum() == 0  # a missing view gets no gradient


def test_make_loss_requires_the_diagnosis_view() -> None:
    valid = torch.tensor([[0, 1], [1, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match="view 0"):
        make_loss(_unit(2, 4), _unit(2, 2, 4), valid, torch.tensor(1.0))


def test_local_alignment_matches_attention_pooled_regions() -> None:
    b, v, p, s, tau = 2, 2, 3, 4.0, 0.2
    patches, texts = _unit(b, p, 6, seed=12), _unit(b, v, 6, seed=13)
    valid = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    weights = torch.tensor([[0.7, 0.3], [1.0, 0.0]])
    direct = 0.0
    for k in range(b):
        for u in range(v):
            if not valid[k, u]:
                continue
            t = texts[k, u]
            scores = []
            for j in range(b):
                a = torch.softmax(patches[j] @ t / tau, dim=0)
                region = F.normalize((a[:, None] * patches[j]).sum(0), dim=0)
                scores.append(s * float(t @ region))
            direct -= float(weights[k, u]) * _log_softmax_at(scores, k)
    got = local_alignment_loss(patches, texts, valid, torch.tensor(math.log(s)), weights, tau)
    assert got.item() == pytest.approx(direct / b, rel=1e-5)


def test_masked_latent_loss_is_cosine_distance_on_masked_positions_only() -> None:
    g = torch.Generator().manual_seed(14)
    pred, target = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, 0, 1] = mask[1, 2, 2] = True
    direct = [
        1 - F.cosine_similarity(pred[0, :, 0, 1], target[0, :, 0, 1], dim=0),
        1 - F.cosine_similarity(pred[1, :, 2, 2], target[1, :, 2, 2], dim=0),
    ]
    assert masked_latent_loss(pred, target, mask).item() == pytest.approx(
        float(sum(direct) / 2), rel=1e-5
    )
    target2 = target.clone()
    target2[0, :, 0, 0] += 5  # an unmasked position changes nothing
    assert masked_latent_loss(pred, target2, mask).item() == pytest.approx(
        masked_latent_loss(pred, target, mask).item()
    )
    with pytest.raises(ValueError, match="hides no position"):
        masked_latent_loss(pred, target, torch.zeros_like(mask))
