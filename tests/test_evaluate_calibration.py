"""dermfm.evaluate.calibration against loop implementations of the definitions and scikit-learn,
and temperature scaling on logits with a planted temperature."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import log_softmax, softmax
from sklearn import metrics as skm

from dermfm.evaluate.calibration import (
    ReliabilityCurve,
    TemperatureScaler,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    plot_reliability,
    reliability_curve,
)


def _probs(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Dirichlet probabilities and labels drawn from a sharpened copy (so not calibrated)."""
    p = rng.dirichlet(np.full(c, 0.5), size=n)
    sharp = p**2 / (p**2).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in sharp])
    return y, p


def _ece_loop(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    """Guo et al. (2017), eq. 3, sample by sample: bin m holds confidences in ((m-1)/M, m/M]."""
    n = y.shape[0]
    total = 0.0
    for m in range(1, n_bins + 1):
        members = [i for i in range(n) if (m - 1) / n_bins < max(p[i]) <= m / n_bins]
        if not members:
            continue
        acc = sum(int(np.argmax(p[i]) == y[i]) for i in members) / len(members)
        conf = sum(max(p[i]) for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


def _planted(
    seed: int, n: int, c: int, temperature: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from softmax(true logits); observed logits = true logits * temperature, so
    dividing the observed logits by ``temperature`` recovers the calibrated model."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(c, 6))
    true_logits = rng.normal(size=(n, 6)) @ weights.T
    probs = softmax(true_logits, axis=1)
    y = (probs.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return y, true_logits, true_logits * temperature


# --------------------------------------------------------------------------- ECE and curve


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_equals_loop_definition(seed: int, n_bins: int) -> None:
    rng = np.random.default_rng(seed)
    y, p = _probs(rng, 300, int(rng.integers(2, 8)))
    assert expected_calibration_error(y, p, n_bins) == pytest.approx(_ece_loop(y, p, n_bins))


def test_ece_on_bin_edges() -> None:
    # confidences exactly on edges 0.5 and 1.0 fall into the bin they close
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75], [0.6, 0.4]])
    y = np.array([1, 0, 1, 1])
    curve = reliability_curve(y, p, n_bins=2)
    np.testing.assert_array_equal(curve.count, [1, 3])
    # bin 1: conf 0.5, wrong (arg-max 0) -> |0 - 0.5|; bin 2: conf mean 0.7833, acc 2/3
    expected = 1 / 4 * 0.5 + 3 / 4 * abs(2 / 3 - (1.0 + 0.75 + 0.6) / 3)
    assert expected_calibration_error(y, p, 2) == pytest.approx(expected)
    assert expected_calibration_error(y, p, 2) == pytest.approx(_ece_loop(y, p, 2))


def test_reliability_curve_bins() -> None:
    rng = np.random.default_rng(3)
    y, p = _probs(rng, 400, 4)
    curve = reliability_curve(y, p, n_bins=10)
    assert isinstance(curve, ReliabilityCurve)
    np.testing.assert_allclose(curve.edges, np.arange(11) / 10)
    assert curve.n == 400
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    for m in range(10):
        inside = (conf > m / 10) & (conf <= (m + 1) / 10)
        assert curve.count[m] == inside.sum()
        if inside.any():
            assert curve.confidence[m] == pytest.approx(conf[inside].mean())
            assert curve.accuracy[m] == pytest.approx(correct[inside].mean())
            assert not curve.empty[m]
        else:
            assert curve.empty[m]
            assert math.isnan(curve.confidence[m]) and math.isnan(curve.accuracy[m])
    # 4 classes: no confidence below 1/4, so the lowest bins are flagged empty
    assert curve.empty[:2].all()
    data = json.loads(json.dumps(curve.to_dict()))
    assert data["confidence"][:2] == [None, None]
    assert data["count"] == curve.count.tolist()
    assert data["ece"] == pytest.approx(_ece_loop(y, p, 10))


def test_calibrated_sample_has_small_ece() -> None:
    """Labels drawn from the probabilities themselves: calibrated by construction."""
    rng = np.random.default_rng(4)
    n, c = 20000, 5
    p = rng.dirichlet(np.full(c, 0.7), size=n)
    y = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    assert expected_calibration_error(y, p) < 0.02
    sharp = p**4 / (p**4).sum(axis=1, keepdims=True)  # overconfident copy of the same model
    assert expected_calibration_error(y, sharp) > 0.1


def test_nll_and_brier_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    y, p = _probs(rng, 500, 6)
    p = 0.9 * p + 0.1 / 6  # bounded away from 0: no clipping involved
    labels = list(range(6))
    assert negative_log_likelihood(y, p) == pytest.approx(skm.log_loss(y, p, labels=labels))
    assert brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p, labels=labels))
    # by hand: a sure right answer costs 0, a sure wrong one 2 (Brier) and ~36 (clipped NLL)
    assert brier_score([0, 1], [[1.0, 0.0], [1.0, 0.0]]) == pytest.approx(1.0)
    assert negative_log_likelihood([0], [[1.0, 0.0]]) == pytest.approx(0.0)
    assert negative_log_likelihood([1], [[1.0, 0.0]]) == pytest.approx(-math.log(2.0**-52))


def test_torch_inputs_are_accepted() -> None:
    rng = np.random.default_rng(6)
    y, p = _probs(rng, 200, 3)
    yt, pt = torch.from_numpy(y), torch.from_numpy(p).float().requires_grad_()
    assert expected_calibration_error(yt, pt) == pytest.approx(
        expected_calibration_error(y, p), abs=1e-6
    )
    assert brier_score(yt, pt) == pytest.approx(brier_score(y, p), abs=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: expected_calibration_error([0, 1], [[0.5, 0.5]]), "differ in length"),
        (lambda: expected_calibration_error([0], [0.5, 0.5]), "2-D"),
        (lambda: expected_calibration_error([0, 2], np.full((2, 2), 0.5)), "columns"),
        (lambda: expected_calibration_error([0], [[2.0, -1.0]]), r"\[0, 1\]"),
        (lambda: expected_calibration_error([0], [[0.5, 0.6]]), "sum to 1"),
        (lambda: expected_calibration_error([0], [[np.nan, 1.0]]), "NaN"),
        (lambda: expected_calibration_error([0], [[0.5, 0.5]], n_bins=0), "n_bins"),
        (lambda: reliability_curve([0], [[0.5, 0.5]], n_bins=2.5), "n_bins"),
        (lambda: negative_log_likelihood([], np.zeros((0, 2))), "empty"),
        (lambda: brier_score([0.0], [[0.5, 0.5]]), "integer"),
        (lambda: TemperatureScaler(bounds=(0.0, 1.0)), "bounds"),
        (lambda: TemperatureScaler(bounds=(2.0, 1.0)), "bounds"),
        (lambda: TemperatureScaler().predict_proba([[1.0, 2.0]]), "not fitted"),
        (lambda: TemperatureScaler().to_dict(), "not fitted"),
        (lambda: TemperatureScaler().fit([[1.0, 2.0]], [2]), "columns"),
        (lambda: TemperatureScaler().fit([[1.0, np.inf]], [0]), "logits contain NaN"),
        (lambda: TemperatureScaler.from_dict({"temperature": -1.0}), "positive"),
        (lambda: TemperatureScaler.from_dict({"temperature": "2"}), "positive"),
        (lambda: TemperatureScaler.from_dict({"temperature": math.inf}), "finite"),
        (lambda: TemperatureScaler.from_dict({"method": "platt", "temperature": 1}), "method"),
        (lambda: TemperatureScaler.from_dict([1.0]), "mapping"),
    ],
)
def test_input_validation(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("planted", [0.4, 2.5])
def test_temperature_recovers_planted_value(planted: float) -> None:
    y, _, logits = _planted(0, 6000, 5, planted)
    scaler = TemperatureScaler().fit(logits, y)
    assert scaler.temperature_ == pytest.approx(planted, rel=0.06)

    # the fit is the NLL minimiser: a fine grid around it does no better
    def nll(t: float) -> float:
        return float(-np.mean(log_softmax(logits / t, axis=1)[np.arange(y.shape[0]), y]))

    grid = np.exp(np.linspace(np.log(planted) - 0.3, np.log(planted) + 0.3, 601))
    best = grid[np.argmin([nll(t) for t in grid])]
    assert scaler.temperature_ == pytest.approx(best, rel=2e-3)
    assert TemperatureScaler().fit(logits, y).temperature_ == scaler.temperature_  # deterministic


def test_temperature_helps_held_out_data_and_keeps_argmax() -> None:
    y, true_logits, logits = _planted(1, 6000, 6, 3.0)
    fit, test = slice(0, 2000), slice(2000, None)
    scaler = TemperatureScaler().fit(logits[fit], y[fit])
    raw = softmax(logits[test], axis=1)
    calibrated = scaler.predict_proba(logits[test])
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), logits[test].argmax(axis=1))
    assert negative_log_likelihood(y[test], calibrated) < negative_log_likelihood(y[test], raw)
    ece_raw = expected_calibration_error(y[test], raw)
    ece_cal = expected_calibration_error(y[test], calibrated)
    assert ece_cal < ece_raw / 3
    # close to the model that generated the labels
    assert negative_log_likelihood(y[test], calibrated) == pytest.approx(
        negative_log_likelihood(y[test], softmax(true_logits[test], axis=1)), rel=0.02
    )


def test_temperature_round_trip_and_torch_logits() -> None:
    y, _, logits = _planted(2, 1500, 4, 1.7)
    scaler = TemperatureScaler().fit(torch.from_numpy(logits).float(), torch.from_numpy(y))
    assert scaler.temperature_ == pytest.approx(
        TemperatureScaler().fit(logits, y).temperature_, rel=1e-4
    )
    stored = json.loads(json.dumps(scaler.to_dict()))
    assert stored == {"method": "temperature", "temperature": scaler.temperature_}
    loaded = TemperatureScaler.from_dict(stored)
    np.testing.assert_allclose(loaded.predict_proba(logits), scaler.predict_proba(logits))
    np.testing.assert_allclose(
        loaded.predict_proba(logits), softmax(logits / scaler.temperature_, axis=1), rtol=1e-12
    )


def test_separable_logits_go_towards_the_lower_bound() -> None:
    """Every arg-max right: the NLL falls as T -> 0 (to 0.0 in floating point below ~0.09)."""
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    scaler = TemperatureScaler(bounds=(0.05, 20.0)).fit(logits, [0, 1, 0])
    assert 0.05 <= scaler.temperature_ < 0.1
    np.testing.assert_allclose(scaler.predict_proba(logits), [[1, 0], [0, 1], [1, 0]], atol=1e-12)


def test_scaler_on_zero_shot_logits(oc_model, real_images) -> None:
    """The zero-shot classifier's logits go straight in; T = 1 reproduces its probabilities."""
    from dermfm.zeroshot import ZeroShotClassifier

    classifier = ZeroShotClassifier(oc_model, labels="ham7")
    vectors = oc_model.embed_images([path for path, _ in real_images]).vectors
    logits = classifier.logits(vectors)
    unit = TemperatureScaler.from_dict({"temperature": 1.0})
    np.testing.assert_allclose(
        unit.predict_proba(logits), classifier.predict_proba(vectors).numpy(), atol=1e-6
    )
    y = np.arange(len(real_images)) % 7
    scaler = TemperatureScaler().fit(logits, y)
    np.testing.assert_array_equal(
        scaler.predict_proba(logits).argmax(axis=1), logits.argmax(dim=1).numpy()
    )


# --------------------------------------------------------------------------- figure


def test_plot_reliability_writes_png(tmp_path: Path) -> None:
    y, _, logits = _planted(9, 1000, 4, 2.0)
    raw = reliability_curve(y, softmax(logits, axis=1), n_bins=10)
    calibrated = reliability_curve(y, softmax(logits / 2.0, axis=1), n_bins=10)
    out = tmp_path / "reliability.png"
    ax = plot_reliability({"raw": raw, "calibrated": calibrated}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        assert image.width > 300 and image.height > 300
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == [
        "perfect calibration",
        f"raw (ECE {raw.ece:.3f})",
        f"calibrated (ECE {calibrated.ece:.3f})",
    ]
    # each curve's points are its non-empty bins at (mean confidence, accuracy)
    line = ax.lines[1]
    np.testing.assert_allclose(line.get_xdata(), raw.confidence[~raw.empty])
    np.testing.assert_allclose(line.get_ydata(), raw.accuracy[~raw.empty])
    assert ax.get_title() == "Reliability diagram (n = 1000)"


def test_plot_reliability_into_given_axes() -> None:
    from matplotlib.figure import Figure

    figure = Figure()
    left, right = figure.subplots(1, 2)
    rng = np.random.default_rng(8)
    curve = reliability_curve(*_probs(rng, 100, 2), n_bins=5)
    assert plot_reliability(curve, ax=right, title="HAM10000 test") is right
    assert right.get_title() == "HAM10000 test"
    assert len(right.lines) == 2 and len(left.lines) == 0
    with pytest.raises(ValueError, match="at least one curve"):
        plot_reliability({})
