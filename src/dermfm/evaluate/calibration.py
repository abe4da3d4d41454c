"""Calibration of class probabilities: ECE, reliability diagrams, NLL, Brier, temperature scaling.

The measures follow Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017): the
*top-label* confidence of a sample is its highest class probability; the expected calibration
error (ECE) bins the confidences into equal-width bins and averages ``|accuracy - confidence|``
over the bins, weighted by their share of the samples. :class:`TemperatureScaler` fits the one
temperature ``T`` that minimises the negative log-likelihood of ``softmax(logits / T)`` on a
validation split (the zero-shot classifier's logits are ``logit_scale * cosine``).

Inputs are numpy arrays, lists or torch tensors (converted to numpy); labels are class indices
into the columns. Bad inputs raise :class:`ValueError` naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dermfm.evaluate.metrics import _class_indices, _score_matrix

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "ReliabilityCurve",
    "TemperatureScaler",
    "brier_score",
    "expected_calibration_error",
    "negative_log_likelihood",
    "plot_reliability",
    "reliability_curve",
]

_EPS = float(np.finfo(np.float64).eps)  # probabilities are clipped here before the log


def _numpy(x: Any) -> NDArray[Any]:
    """``x`` as a numpy array; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach"):  # a torch.Tensor, recognised without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _labels_and_probs(
    y_true: ArrayLike, probs: ArrayLike
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Class indices and (N, C) probabilities in [0, 1] whose rows sum to 1 (within 1e-3)."""
    y, p = _class_indices(_numpy(y_true), _numpy(probs), "probs")
    p = p.astype(np.float64)
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("probs must lie in [0, 1]; pass softmax probabilities, not logits")
    sums = p.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
    if off.size:
        raise ValueError(
            f"rows of probs must sum to 1: {off.size} do not (row {off[0]} sums to "
            f"{sums[off[0]]:.4f})"
        )
    return y, p


def _check_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")


# --------------------------------------------------------------------------- measures


@dataclass(frozen=True, eq=False)
class ReliabilityCurve:
    """Top-label reliability of probabilities in ``len(count)`` equal-width confidence bins.

    Bin ``m`` holds the samples whose confidence lies in ``(edges[m], edges[m + 1]]`` (the
    first bin also holds a confidence of exactly 0). ``confidence`` and ``accuracy`` are the
    bin's mean top-label confidence and the fraction of its samples whose arg-max is the true
    class; both are NaN in an empty bin (see :attr:`empty`).
    """

    edges: NDArray[np.float64]
    confidence: NDArray[np.float64]
    accuracy: NDArray[np.float64]
    count: NDArray[np.int64]

    @property
    def empty(self) -> NDArray[np.bool_]:
        """True for the bins that hold no sample."""
        return self.count == 0

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.count.sum())

    @property
    def ece(self) -> float:
        """Expected calibration error: ``sum_m count_m / n * |accuracy_m - confidence_m|``."""
        full = ~self.empty
        gaps = np.abs(self.accuracy[full] - self.confidence[full])
        return float(np.sum(self.count[full] * gaps) / self.n)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready lists (``None`` for the mean confidence/accuracy of an empty bin)."""

        def listed(values: NDArray[np.float64]) -> list[float | None]:
            return [None if e else float(v) for v, e in zip(values, self.empty, strict=True)]

        return {
            "edges": [float(e) for e in self.edges],
            "confidence": listed(self.confidence),
            "accuracy": listed(self.accuracy),
            "count": [int(c) for c in self.count],
            "ece": self.ece,
        }


def reliability_curve(y_true: ArrayLike, probs: ArrayLike, n_bins: int = 15) -> ReliabilityCurve:
    """The :class:`ReliabilityCurve` of probabilities ``probs`` (N, C) against class indices."""
    _check_bins(n_bins)
    y, p = _labels_and_probs(y_true, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    full = count > 0
    mean_conf = np.full(n_bins, np.nan)
    mean_acc = np.full(n_bins, np.nan)
    mean_conf[full] = np.bincount(bins, weights=confidence, minlength=n_bins)[full] / count[full]
    mean_acc[full] = np.bincount(bins, weights=correct, minlength=n_bins)[full] / count[full]
    return ReliabilityCurve(edges=edges, confidence=mean_conf, accuracy=mean_acc, count=count)


def expected_calibration_error(y_true: ArrayLike, probs: ArrayLike, n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins (Guo et al. 2017).

    ``sum_m |B_m| / n * |acc(B_m) - conf(B_m)|`` over the bins ``B_m`` of
    :func:`reliability_curve`; 0 for perfectly calibrated confidences, at most 1.
    """
    return reliability_curve(y_true, probs, n_bins).ece


def negative_log_likelihood(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Mean ``-log p(true class)``; probabilities are clipped to machine epsilon first (as
    scikit-learn's ``log_loss`` does), so a zero probability costs about 36 rather than inf."""
    y, p = _labels_and_probs(y_true, probs)
    return float(-np.mean(np.log(np.clip(p[np.arange(y.shape[0]), y], _EPS, 1.0))))


def brier_score(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Multi-class Brier score: mean over samples of ``sum_c (p_c - [c == y])^2``, in [0, 2].

    This is Brier's original definition (scikit-learn's ``brier_score_loss`` with more than two
    classes); lower is better.
    """
    y, p = _labels_and_probs(y_true, probs)
    onehot = np.zeros_like(p)
    onehot[np.arange(y.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


# --------------------------------------------------------------------------- temperature scaling


def _log_softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: ArrayLike, temperature: float = 1.0) -> NDArray[np.float64]:
    """Row-wise softmax of ``logits / temperature`` (numerically stable); raw scores when the
    temperature was not fitted."""
    return np.exp(_log_softmax(np.asarray(_numpy(logits), dtype=np.float64) / temperature))


class TemperatureScaler:
    """One temperature ``T`` for logits, fitted by maximum likelihood (scikit-learn style).

    ``fit(logits, y_true)`` finds the ``T`` within ``bounds`` that minimises the mean negative
    log-likelihood of ``softmax(logits / T)``, by bounded Brent search on ``log T``
    (:func:`scipy.optimize.minimize_scalar`; deterministic, and the problem is unimodal in
    ``log T`` because the NLL is convex in ``1 / T``). Dividing by one positive ``T`` never
    changes the arg-max, so accuracy is unchanged; only the confidences move. Fit on a
    validation split, then apply :meth:`predict_proba` to test logits.

    Args:
        bounds: the lowest and highest temperature searched (``0 < low < high``). A fit that
            ends at a bound (e.g. perfectly separable logits drive ``T`` towards 0) stops there.

    Attributes:
        temperature_: the fitted temperature (set by :meth:`fit` or :meth:`from_dict`).
    """

    temperature_: float

    def __init__(self, bounds: tuple[float, float] = (1e-2, 1e2)) -> None:
        low, high = (float(b) for b in bounds)
        if not (0.0 < low < high < math.inf):
            raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}")
        self.bounds = (low, high)

    def fit(self, logits: ArrayLike, y_true: ArrayLike) -> TemperatureScaler:
        """Fit the temperature on ``logits`` (N, C) with true class indices ``y_true``."""
        from scipy.optimize import minimize_scalar

        y, z = _class_indices(_numpy(y_true), _numpy(logits), "logits")
        z = z.astype(np.float64)
        rows = np.arange(y.shape[0])

        def nll(log_t: float) -> float:
            return float(-np.mean(_log_softmax(z / math.exp(log_t))[rows, y]))

        low, high = (math.log(b) for b in self.bounds)
        result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
        self.temperature_ = float(math.exp(result.x))
        return self

    def predict_proba(self, logits: ArrayLike) -> NDArray[np.float64]:
        """``softmax(logits / temperature_)`` for (N, C) logits; ValueError before fitting."""
        temperature = getattr(self, "temperature_", None)
        if temperature is None:
            raise ValueError("TemperatureScaler is not fitted: call fit(logits, y_true) first")
        z = _score_matrix(_numpy(logits), "logits").astype(np.float64)
        return softmax(z, temperature)

    def to_dict(self) -> dict[str, Any]:
        """``{"method": "temperature", "temperature": T}``, to store next to a model."""
        if getattr(self, "temperature_", None) is None:
            raise ValueError("TemperatureScaler is not fitted: nothing to store")
        return {"method": "temperature", "temperature": self.temperature_}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TemperatureScaler:
        """A fitted scaler from :meth:`to_dict`'s output; ValueError naming a bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping, got {type(data).__name__}")
        if data.get("method", "temperature") != "temperature":
            raise ValueError(f"method {data['method']!r} is not 'temperature'")
        value = data.get("temperature")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"temperature must be a positive number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"temperature must be finite, got {value!r}")
        scaler = cls()
        scaler.temperature_ = float(value)
        return scaler


# --------------------------------------------------------------------------- figure


def plot_reliability(
    curves: ReliabilityCurve | Mapping[str, ReliabilityCurve],
    path: str | Path | None = None,
    *,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """Draw a reliability diagram; save it as PNG when ``path`` is given.

    ``curves`` is one :class:`ReliabilityCurve` or several by name (e.g. ``{"raw": ...,
    "calibrated": ...}``), drawn into the same axes: each non-empty bin is a marker at (mean
    confidence, accuracy), its area proportional to the bin's share of the samples, joined by a
    line and labelled with the curve's ECE; the diagonal is perfect calibration (points below
    it are overconfident). Draws into ``ax`` when given, else into a new figure (matplotlib's
    Agg renderer, no pyplot state). Returns the axes.
    """
    named = {"": curves} if isinstance(curves, ReliabilityCurve) else dict(curves)
    if not named:
        raise ValueError("plot_reliability needs at least one curve")
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(4.8, 4.5)).subplots()
    ax.plot([0.0, 1.0], [0.0, 1.0], ls="--", color="grey", lw=1.0, label="perfect calibration")
    for name, curve in named.items():
        full = ~curve.empty
        label = f"{name} (ECE {curve.ece:.3f})" if name else f"ECE {curve.ece:.3f}"
        ax.plot(curve.confidence[full], curve.accuracy[full], lw=1.2, label=label)
        share = curve.count[full] / curve.n
        ax.scatter(
            curve.confidence[full],
            curve.accuracy[full],
            s=10 + 300 * share,
            color=ax.lines[-1].get_color(),
            alpha=0.7,
            edgecolors="none",
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    n = next(iter(named.values())).n
    ax.set_title(title or f"Reliability diagram (n = {n})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    if path is not None:
        figure = ax.get_figure()
        figure.tight_layout()
        figure.savefig(Path(path), dpi=110)
    return ax
