"""dermfm.evaluate.retrieval: recall@k and median rank against a brute-force loop, against
CLIP_benchmark's and open_clip's definitions, and on hand-checkable multi-positive cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dermfm.evaluate.retrieval import pairs_from_texts, retrieval_metrics


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force_ranks(queries: np.ndarray, gallery: np.ndarray, correct: list[set[int]]) -> list:
    """Sort the gallery of each query by decreasing similarity, walk it until the first correct
    item (continuous random scores have no ties)."""
    ranks = []
    for q, ok in zip(queries, correct, strict=True):
        if not ok:
            continue
        sims = [float(np.dot(q, g)) for g in gallery]
        order = sorted(range(len(gallery)), key=lambda j: -sims[j])
        ranks.append(next(pos for pos, j in enumerate(order, 1) if j in ok))
    return ranks


def _clip_benchmark_recall(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int):
    """CLIP_benchmark 1.6.2 ``metrics/zeroshot_retrieval.py:recall_at_k`` (verbatim logic):
    per-query true recall; CLIP-style R@k is ``(recall > 0).mean()``."""
    nb_texts, nb_images = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_indices_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def _open_clip_metrics(image_features: torch.Tensor, text_features: torch.Tensor) -> dict:
    """open_clip ``training/train.py:get_clip_metrics`` (one caption per image)."""
    metrics = {}
    logits_per_image = image_features @ text_features.t()
    logits = {"image_to_text": logits_per_image, "text_to_image": logits_per_image.t()}
    ground_truth = torch.arange(len(text_features)).view(-1, 1)
    for name, logit in logits.items():
        ranking = torch.argsort(logit, descending=True)
        preds = torch.where(ranking == ground_truth)[1].numpy()
        metrics[f"{name}_median_rank"] = np.floor(np.median(preds)) + 1
        for k in [1, 5, 10]:
            metrics[f"{name}_R@{k}"] = np.mean(preds < k)
    return metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_multiple_positives(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_images, n_texts, d = 60, 90, 8
    images, texts = _unit(rng, n_images, d), _unit(rng, n_texts, d)
    # 0-3 captions per image; a caption may belong to several images; some texts to none
    image_to_texts = [
        sorted(rng.choice(n_texts - 5, size=int(rng.integers(0, 4)), replace=False).tolist())
        for _ in range(n_images)
    ]
    found = retrieval_metrics(images, texts, image_to_texts, ks=(1, 3, 10), n_boot=50, seed=seed)

    i2t = _brute_force_ranks(images, texts, [set(t) for t in image_to_texts])
    by_text = [{i for i, ts in enumerate(image_to_texts) if t in ts} for t in range(n_texts)]
    t2i = _brute_force_ranks(texts, images, by_text)
    for direction, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in (1, 3, 10):
            est = found[f"{direction}_R@{k}"]
            assert est.value == pytest.approx(np.mean(np.array(ranks) <= k))
            assert est.n == len(ranks)
            assert est.low <= est.value <= est.high
        assert found[f"{direction}_median_rank"].value == math.floor(np.median(ranks))
    assert list(found) == [
        "image_to_text_R@1",
        "image_to_text_R@3",
        "image_to_text_R@10",
        "text_to_image_R@1",
        "text_to_image_R@3",
        "text_to_image_R@10",
        "image_to_text_median_rank",
        "text_to_image_median_rank",
    ]


@pytest.mark.parametrize("captions_per_image", [1, 3])
def test_agrees_with_clip_benchmark(captions_per_image: int) -> None:
    rng = np.random.default_rng(7)
    n_images, d = 80, 6
    images = _unit(rng, n_images, d)
    # texts close to their image, with noise so that retrieval is imperfect
    owner = np.repeat(np.arange(n_images), captions_per_image)
    texts = images[owner] + rng.normal(scale=0.5, size=(owner.shape[0], d))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    image_to_texts = [np.flatnonzero(owner == i).tolist() for i in range(n_images)]
    found = retrieval_metrics(images, texts, image_to_texts, ks=(1, 5, 10), n_boot=0)

    # CLIP_benchmark: scores = texts @ images.T, positive_pairs[text, image]
    scores = torch.from_numpy(texts @ images.T)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(owner.shape[0]), torch.from_numpy(owner)] = True
    for k in (1, 5, 10):
        image_retrieval = (_clip_benchmark_recall(scores, positive, k) > 0).float().mean().item()
        text_retrieval = (_clip_benchmark_recall(scores.T, positive.T, k) > 0).float().mean()
        assert found[f"text_to_image_R@{k}"].value == pytest.approx(image_retrieval)
        assert found[f"image_to_text_R@{k}"].value == pytest.approx(text_retrieval.item())
    assert 0.1 < found["image_to_text_R@1"].value < 0.95  # a non-trivial case


def test_agrees_with_open_clip_single_caption() -> None:
    rng = np.random.default_rng(3)
    images = _unit(rng, 101, 5)
    texts = images + rng.normal(scale=0.6, size=images.shape)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    found = retrieval_metrics(images, texts, [[i] for i in range(101)], n_boot=0)
    expected = _open_clip_metrics(torch.from_numpy(images), torch.from_numpy(texts))
    for key, value in expected.items():
        assert found[key].value == pytest.approx(value), key


def test_perfect_embeddings() -> None:
    rng = np.random.default_rng(0)
    emb = _unit(rng, 40, 64)
    found = retrieval_metrics(emb, torch.from_numpy(emb), [[i] for i in range(40)], n_boot=100)
    for key, est in found.items():
        assert est.value == 1.0, key
        assert (est.low, est.high) == (1.0, 1.0)


def test_random_embeddings_recall_is_k_over_n() -> None:
    rng = np.random.default_rng(11)
    n = 400
    found = retrieval_metrics(_unit(rng, n, 32), _unit(rng, n, 32), [[i] for i in range(n)])
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            p = k / n
            assert abs(found[f"{direction}_R@{k}"].value - p) < 4 * math.sqrt(p * (1 - p) / n)
        median = found[f"{direction}_median_rank"]
        assert abs(median.value - n / 2) < 0.15 * n  # ranks are uniform on 1..n
        assert median.low <= median.value <= median.high


def test_hand_checked_multi_positive_case() -> None:
    # angles in the plane: images at 0 and 90 degrees; texts at 10, 80, 100 and 200 degrees
    def at(*degrees: float) -> np.ndarray:
        r = np.radians(degrees)
        return np.stack([np.cos(r), np.sin(r)], axis=1)

    images = at(0, 90)
    texts = at(10, 80, 100, 200)
    # image 0: texts 1 and 3 (its best, text 0, is wrong); image 1: texts 1 (shared) and 2
    found = retrieval_metrics(images, texts, [[1, 3], [1, 2]], ks=(1, 2), n_boot=0)
    # image 0 ranks texts 0 (10deg), 1 (80), 2 (100), 3 (200): first correct = text 1 -> rank 2
    # image 1 ranks texts 1 (10deg off) and 2 (10deg off) tied first, both correct -> rank 1
    assert found["image_to_text_R@1"].value == 0.5
    assert found["image_to_text_R@2"].value == 1.0
    assert found["image_to_text_median_rank"].value == 1.0  # floor(median(2, 1))
    # text 0 captions no image: not a query. text 1 (80deg): images 1 then 0, both correct ->
    # rank 1; text 2 (100deg): image 1 first -> 1; text 3 (200deg): image 1 (110deg off) is
    # ahead of image 0 (160deg off) -> rank 2
    assert found["text_to_image_R@1"].value == pytest.approx(2 / 3)
    assert found["text_to_image_R@1"].n == 3
    assert found["text_to_image_R@2"].value == 1.0


def test_ties_count_against_the_query() -> None:
    # a constant model: every score ties, so no query is helped by the tie
    emb = np.ones((5, 3)) / math.sqrt(3)
    found = retrieval_metrics(emb, emb, [[i] for i in range(5)], ks=(1, 5), n_boot=0)
    assert found["image_to_text_R@1"].value == 0.0
    assert found["image_to_text_R@5"].value == 1.0
    assert found["image_to_text_median_rank"].value == 5.0


def test_groups_widen_the_interval() -> None:
    rng = np.random.default_rng(5)
    base = _unit(rng, 30, 16)
    texts = base + rng.normal(scale=0.9, size=base.shape)
    # every image five times (e.g. five photos of one lesion), all captioned by the same text
    images = np.repeat(base, 5, axis=0)
    image_to_texts = [[i // 5] for i in range(150)]
    groups = [i // 5 for i in range(150)]
    rows = retrieval_metrics(images, texts, image_to_texts, n_boot=400)
    clustered = retrieval_metrics(images, texts, image_to_texts, n_boot=400, groups=groups)
    for key in ("image_to_text_R@1", "image_to_text_R@5"):
        assert rows[key].value == clustered[key].value
        width_rows = rows[key].high - rows[key].low
        assert clustered[key].high - clustered[key].low > 1.5 * width_rows


def test_pairs_from_texts_deduplicates() -> None:
    unique, mapping = pairs_from_texts(
        [["a nevus", "dermoscopy of a nevus"], ["a melanoma"], [], ["a nevus", "a nevus"]]
    )
    assert unique == ["a nevus", "dermoscopy of a nevus", "a melanoma"]
    assert mapping == [[0, 1], [2], [], [0]]
    with pytest.raises(ValueError, match="one string"):
        pairs_from_texts(["a nevus"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="must be strings"):
        pairs_from_texts([["a", 3]])  # type: ignore[list-item]


def test_bad_inputs() -> None:
    rng = np.random.default_rng(0)
    images, texts = _unit(rng, 4, 3), _unit(rng, 4, 3)
    ok = [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="dimensions"):
        retrieval_metrics(images, _unit(rng, 4, 5), ok)
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        retrieval_metrics(images, texts, [[0], [1], [2], [4]])
    with pytest.raises(ValueError, match="4 images"):
        retrieval_metrics(images, texts, ok[:3])
    bad = images.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(bad, texts, ok)
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(images, texts, ok, ks=(0, 5))
    with pytest.raises(ValueError, match="no image has a caption"):
        retrieval_metrics(images, texts, [[], [], [], []])
    with pytest.raises(ValueError, match="groups"):
        retrieval_metrics(images, texts, ok, groups=[1, 2])
