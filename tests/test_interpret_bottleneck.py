"""Concept-bottleneck classifier: sparse explanations, C choice, zeroed latents, vs a probe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dermfm.evaluate.probe import LinearProbe
from dermfm.interpret.bottleneck import (
    INTERCEPT_SCALING,
    ConceptBottleneck,
    compare_with_probe,
)

SIGNAL = (3, 7, 11)  # the latents that decide the class; 3 and 7 for class 1, 11 against


def sparse_codes(seed: int, n: int = 1500, n_latents: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """SAE-like activations (5% of latents fire per image, exponential magnitudes) and binary
    labels drawn from ``sigmoid(6 * (a3 + a7 - a11 - 0.3))``: only three latents matter."""
    rng = np.random.default_rng(seed)
    acts = rng.exponential(1.0, (n, n_latents)) * (rng.random((n, n_latents)) < 0.05)
    acts[:, SIGNAL] = rng.exponential(1.0, (n, 3)) * (rng.random((n, 3)) < 0.3)
    logit = 6.0 * (acts[:, 3] + acts[:, 7] - acts[:, 11] - 0.3)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return acts, y


@pytest.mark.parametrize("seed", [0, 1])
def test_uses_the_deciding_latents_with_their_signs_and_is_sparse(seed: int) -> None:
    acts, y = sparse_codes(seed)
    model = ConceptBottleneck(seed=0).fit(acts, y)
    top = model.explain(1, top=3)
    assert {e.latent for e in top} == set(SIGNAL)
    signs = {e.latent: np.sign(e.weight) for e in top}
    assert signs == {3: 1.0, 7: 1.0, 11: -1.0}
    # class 0 of a binary model is explained by the same latents with opposite signs
    assert [(e.latent, -e.weight) for e in model.explain(0, top=3)] == [
        (e.latent, e.weight) for e in top
    ]
    weights = model.weights_[1]
    assert model.n_used_latents_ == np.count_nonzero(weights)
    assert model.n_used_latents_ <= acts.shape[1] // 4  # most latents get no weight
    assert np.abs(weights[list(SIGNAL)]).sum() >= 0.7 * np.abs(weights).sum()


def test_three_classes_each_rest_on_their_latent() -> None:
    rng = np.random.default_rng(5)
    acts = rng.exponential(1.0, (1200, 120)) * (rng.random((1200, 120)) < 0.05)
    cls = rng.integers(0, 3, 1200)
    acts[np.arange(1200), np.array(SIGNAL)[cls]] += rng.uniform(0.5, 2.0, 1200)
    names = np.array(["mel", "nv", "bcc"])[cls]
    model = ConceptBottleneck(seed=0).fit(acts, names)
    assert model.weights_.shape == (3, 120)
    for label, latent in zip(["mel", "nv", "bcc"], SIGNAL, strict=True):
        first = model.explain(label, top=1)[0]
        assert first.latent == latent and first.weight > 0
    # string labels: an integer is a position in classes_ (sorted: bcc, mel, nv)
    assert model.explain(0, top=1)[0].latent == SIGNAL[2]
    proba = model.predict_proba(acts[:50])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (model.predict(acts) == names).mean() > 0.9


def test_c_choice_equals_a_manual_sklearn_loop() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    acts, y = sparse_codes(2, n=900, n_latents=60)
    train, val, test = slice(0, 500), slice(500, 750), slice(750, None)
    cs = (0.03, 0.3, 3.0, 30.0)
    model = ConceptBottleneck(Cs=cs, seed=0).fit(acts[train], y[train], acts[val], y[val])

    scale = np.abs(acts[train]).max(axis=0)
    scale[scale == 0] = 1.0
    scores, fitted = {}, {}
    for c in cs:
        reference = LogisticRegression(
            C=c,
            l1_ratio=1.0,
            solver="liblinear",
            intercept_scaling=INTERCEPT_SCALING,
            max_iter=1000,
            random_state=0,
        ).fit(acts[train] / scale, y[train])
        fitted[c] = reference
        scores[c] = balanced_accuracy_score(y[val], reference.predict(acts[val] / scale))
    best = max(cs, key=lambda c: (scores[c], -c))  # ties go to the smaller C
    assert best == model.C_
    assert model.val_scores_ == pytest.approx(scores)
    np.testing.assert_allclose(
        model.predict_proba(acts[test]), fitted[best].predict_proba(acts[test] / scale), atol=1e-10
    )
    np.testing.assert_allclose(model.scale_, scale)


def test_zeroed_latents_leave_the_explanation_and_the_predictions() -> None:
    acts, y = sparse_codes(3, n=1000)
    model = ConceptBottleneck(seed=0, zero_latents=[3, 150]).fit(acts, y)
    explained = {e.latent for e in model.explain(1, top=200)}
    assert 3 not in explained and 150 not in explained
    assert {7, 11} <= {e.latent for e in model.explain(1, top=2)}
    assert model.weights_[:, [3, 150]].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # what the zeroed latent does at test time no longer matters
    changed = acts[:100].copy()
    changed[:, 3] += 5.0
    np.testing.assert_array_equal(model.predict_proba(changed), model.predict_proba(acts[:100]))
    # the caller's array is not modified
    assert acts[:, 3].any()


def test_explain_returns_names_and_checks_inputs() -> None:
    acts, y = sparse_codes(0, n=600, n_latents=40)
    model = ConceptBottleneck(Cs=(1.0,)).fit(acts, y)
    names = {3: ["ruler", "scale bar"], 7: ["blue-white veil"]}
    listed = {e.latent: e.names for e in model.explain(1, names=names, top=3)}
    assert listed[3] == ["ruler", "scale bar"] and listed[7] == ["blue-white veil"]
    assert listed[11] == []
    with pytest.raises(ValueError, match="unknown class 5"):
        model.explain(5)
    with pytest.raises(ValueError, match="top must be"):
        model.explain(1, top=0)
    with pytest.raises(ValueError, match="39 latents but the bottleneck was fitted on 40"):
        model.predict(acts[:, :39])
    with pytest.raises(ValueError, match="not fitted"):
        ConceptBottleneck().predict(acts)
    with pytest.raises(ValueError, match="not fitted"):
        ConceptBottleneck().explain(0)
    with pytest.raises(ValueError, match="out of range"):
        ConceptBottleneck(zero_latents=[40]).fit(acts, y)
    with pytest.raises(ValueError, match=">= 0"):
        ConceptBottleneck(zero_latents=[-1])


def test_compare_with_probe_pairs_the_two_reports() -> None:
    rng = np.random.default_rng(4)
    n, d = 700, 16
    acts, y = sparse_codes(4, n=n, n_latents=80)
    # embeddings carrying a weaker copy of the same signal
    embeddings = rng.normal(size=(n, d))
    embeddings[:, 0] += 0.8 * (acts[:, 3] + acts[:, 7] - acts[:, 11])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    train, test = slice(0, 450), slice(450, None)
    bottleneck = ConceptBottleneck(seed=0).fit(acts[train], y[train])
    probe = LinearProbe(seed=0).fit(embeddings[train], y[train])
    groups = np.arange(n - 450) // 2  # pairs of rows resampled together
    result = compare_with_probe(
        bottleneck,
        probe,
        acts[test],
        embeddings[test],
        y[test],
        ["benign", "malignant"],
        groups=groups,
        n_boot=200,
    )
    for metric in ("accuracy", "balanced_accuracy"):
        paired = result.paired[metric]
        assert paired.value_a == result.probe[metric].value
        assert paired.value_b == result.bottleneck[metric].value
        assert paired.difference.value == pytest.approx(
            result.bottleneck[metric].value - result.probe[metric].value
        )
        assert paired.difference.low <= paired.difference.value <= paired.difference.high
    expected = (bottleneck.predict(acts[test]) == y[test]).mean()
    assert result.bottleneck["accuracy"].value == pytest.approx(expected)
    assert result.n_used_latents == bottleneck.n_used_latents_
    assert json.loads(json.dumps(result.to_dict()))["n_used_latents"] == result.n_used_latents
    markdown = result.to_markdown()
    assert "linear probe (embeddings)" in markdown and "bottleneck - probe" in markdown
    with pytest.raises(ValueError, match="same images"):
        compare_with_probe(
            bottleneck, probe, acts[test], embeddings[450:500], y[test], ["a", "b"], n_boot=0
        )
