"""Classification metrics and bootstrap confidence intervals, in plain numpy.

Every metric takes numpy arrays or lists, checks its inputs (matching lengths, non-empty,
2-D scores with enough columns) and raises :class:`ValueError` with a message naming the
problem. :func:`bootstrap` turns any such metric into an :class:`Estimate` with a percentile
confidence interval; with ``groups`` it resamples whole groups (e.g. all images of one HAM10000
lesion) instead of rows. :func:`paired_bootstrap` compares two models on the same rows (same
resamples for both) with a two-sided bootstrap p-value. :func:`classification_report` bundles the
usual multi-class metrics and :func:`estimates_table` renders several reports as a Markdown table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Estimate",
    "PairedComparison",
    "accuracy",
    "auroc",
    "balanced_accuracy",
    "bootstrap",
    "classification_report",
    "estimates_table",
    "macro_auroc",
    "macro_f1",
    "ovr_aurocs",
    "paired_bootstrap",
    "top_k_accuracy",
    "weighted_f1",
]


@dataclass(frozen=True)
class Estimate:
    """A metric's value on the full data with a bootstrap confidence interval.

    ``n`` is the number of samples (rows) the value was computed on; ``n_boot`` is how many
    bootstrap resamples gave a defined value (resamples where the metric is undefined, such as
    AUROC on a single class, are left out of the interval and of this count).
    """

    name: str
    value: float
    low: float
    high: float
    n: int
    n_boot: int

    def __str__(self) -> str:
        """``"0.812 [0.784, 0.839]"``; just the value when there is no interval."""
        if self.n_boot == 0 or not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.value:.3f}"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serialisable apart from NaN bounds)."""
        return asdict(self)


# --------------------------------------------------------------------------- input checks


def _as_1d(x: ArrayLike, what: str) -> NDArray[Any]:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    return arr


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[Any], NDArray[Any]]:
    t = _as_1d(y_true, "y_true")
    p = _as_1d(y_pred, "y_pred")
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    return t, p


def _score_matrix(scores: ArrayLike, what: str = "scores") -> NDArray[Any]:
    """``scores`` as a 2-D array of finite real numbers (rows: samples, columns: classes)."""
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"{what} must be 2-D (samples, classes), got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"{what} must be real numbers, got dtype {s.dtype}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{what} contain NaN or infinite values")
    return s


def _class_indices(
    y_true: ArrayLike, scores: ArrayLike, what: str = "scores"
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Integer labels in ``[0, C)`` and finite (N, C) ``scores``, checked against each other;
    ``what`` names the scores in error messages."""
    y = _as_1d(y_true, "y_true")
    s = _score_matrix(scores, what)
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"y_true and {what} differ in length: {y.shape[0]} != {s.shape[0]}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    n_classes = s.shape[1]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"y_true holds class indices in [{lo}, {hi}] but {what} has only {n_classes} "
            f"columns (classes 0..{n_classes - 1})"
        )
    return y, s


def _average_ranks(x: NDArray[Any]) -> NDArray[np.float64]:
    """1-based ranks along axis 0 with ties given their average rank (x is 1-D or 2-D)."""
    n = x.shape[0]
    order = np.argsort(x, axis=0)  # order within ties is irrelevant: they share a rank
    xs = np.take_along_axis(x, order, axis=0)
    idx = np.arange(n).reshape((n,) + (1,) * (x.ndim - 1))
    starts = np.ones(x.shape, dtype=bool)
    starts[1:] = xs[1:] != xs[:-1]
    ends = np.ones(x.shape, dtype=bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, idx, 0), axis=0)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, idx, n - 1), 0), axis=0), 0)
    ranks = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
    return ranks


# --------------------------------------------------------------------------- metrics


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of samples whose predicted label equals the true label."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean recall over the classes present in ``y_true`` (labels of any comparable type)."""
    t, p = _pair(y_true, y_pred)
    classes, codes = np.unique(t, return_inverse=True)
    codes = codes.reshape(-1)
    support = np.bincount(codes, minlength=classes.shape[0])
    correct = np.bincount(codes[t == p], minlength=classes.shape[0])
    return float(np.mean(correct / support))


def _f1_per_class(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Iterable[Hashable] | None
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """F1 and support (true count) of each class: ``labels`` in order, else the sorted union of
    the labels in ``y_true`` and ``y_pred``."""
    t, p = _pair(y_true, y_pred)
    n = t.shape[0]
    if labels is None:
        uniq, codes = np.unique(np.concatenate([t, p]), return_inverse=True)
        codes = codes.reshape(-1)
        selected = np.arange(uniq.shape[0])
    else:
        lab = np.asarray(list(labels))
        if lab.ndim != 1 or lab.shape[0] == 0:
            raise ValueError("labels must be a non-empty sequence of class labels")
        if np.unique(lab).shape[0] != lab.shape[0]:
            raise ValueError("labels contain duplicates")
        uniq, codes = np.unique(np.concatenate([lab, t, p]), return_inverse=True)
        codes = codes.reshape(-1)
        selected, codes = codes[: lab.shape[0]], codes[lab.shape[0] :]
    k = uniq.shape[0]
    ct, cp = codes[:n], codes[n:]
    tp = np.bincount(ct[ct == cp], minlength=k)
    support = np.bincount(ct, minlength=k)
    denom = support + np.bincount(cp, minlength=k)
    f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)
    return f1[selected], support[selected]


def macro_f1(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Iterable[Hashable] | None = None
) -> float:
    """Unweighted mean of per-class F1.

    The classes are ``labels`` when given (a label absent from both ``y_true`` and ``y_pred``
    scores 0, samples with other labels only count as errors of the listed classes), else the
    classes present in ``y_true`` or ``y_pred``. F1 of a class is ``2 TP / (2 TP + FP + FN)``.
    """
    f1, _ = _f1_per_class(y_true, y_pred, labels)
    return float(np.mean(f1))


def weighted_f1(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Iterable[Hashable] | None = None
) -> float:
    """Mean of per-class F1 weighted by each class's support (its count in ``y_true``).

    The classes are chosen as in :func:`macro_f1`; a class only ever predicted has weight 0.
    When no listed class occurs in ``y_true`` the result is 0.0 (scikit-learn's
    ``f1_score(average="weighted", zero_division=0)`` does the same).
    """
    f1, support = _f1_per_class(y_true, y_pred, labels)
    total = int(support.sum())
    return float(np.dot(f1, support) / total) if total else 0.0


def top_k_accuracy(y_true: ArrayLike, scores: ArrayLike, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest-scoring classes.

    ``y_true`` holds class indices into the columns of ``scores`` (N, C). Ties are broken in
    favour of the lower class index, as :func:`numpy.argmax` does, so ``k=1`` equals
    ``accuracy(y_true, scores.argmax(1))``. ``k >= C`` gives 1.0.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    y, s = _class_indices(y_true, scores)
    rows = np.arange(y.shape[0])
    true_score = s[rows, y][:, None]
    ahead = (s > true_score).sum(axis=1)
    tied_before = ((s == true_score) & (np.arange(s.shape[1])[None, :] < y[:, None])).sum(axis=1)
    return float(np.mean(ahead + tied_before < k))


def auroc(y_binary: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve for binary labels (0/1 or bool) and a real-valued score.

    Computed as the Mann-Whitney U statistic with average ranks for tied scores, so a tie
    between a positive and a negative counts one half. Raises ValueError when ``y_binary``
    holds only one class.
    """
    y, s = _pair(y_binary, score)
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number) or not np.all((y == 0) | (y == 1)):
            raise ValueError("y_binary must hold only 0/1 (or bool) values")
        y = y == 1
    if not np.issubdtype(s.dtype, np.number) or not np.all(np.isfinite(s)):
        raise ValueError("score must hold finite real numbers")
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC is undefined: y_binary holds only one class")
    ranks = _average_ranks(s)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def ovr_aurocs(y_true: ArrayLike, scores: ArrayLike) -> NDArray[np.float64]:
    """One-vs-rest AUROC of each column of ``scores`` (N, C) against class indices ``y_true``.

    Entry ``c`` is the AUROC of ``scores[:, c]`` for "class c vs the rest" (ties count one
    half, as in :func:`auroc`); it is NaN where class ``c`` is absent from ``y_true`` or is the
    only class in it.
    """
    y, s = _class_indices(y_true, scores)
    n, n_classes = s.shape
    n_pos = np.bincount(y, minlength=n_classes).astype(np.float64)
    defined = (n_pos > 0) & (n_pos < n)
    out = np.full(n_classes, np.nan)
    if defined.any():
        ranks = _average_ranks(s)
        rank_sum = np.bincount(y, weights=ranks[np.arange(n), y], minlength=n_classes)
        pos = n_pos[defined]
        out[defined] = (rank_sum[defined] - pos * (pos + 1) / 2.0) / (pos * (n - pos))
    return out


def _mean_defined(per_class: NDArray[np.float64]) -> float:
    if np.isnan(per_class).all():
        raise ValueError("macro AUROC is undefined: y_true holds only one class")
    return float(np.nanmean(per_class))


def macro_auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """One-vs-rest AUROC of each column of ``scores`` (N, C), averaged over the classes.

    ``y_true`` holds class indices into the columns. Only classes with both positives and
    negatives in ``y_true`` are averaged (the non-NaN entries of :func:`ovr_aurocs`);
    ValueError when there is none (a single class).
    """
    return _mean_defined(ovr_aurocs(y_true, scores))


# --------------------------------------------------------------------------- bootstrap


def _group_codes(groups: ArrayLike | Sequence[Hashable], n: int) -> NDArray[np.intp]:
    g = groups if isinstance(groups, np.ndarray) else list(groups)  # type: ignore[arg-type]
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries but the arrays have {n} rows")
    ids: dict[Hashable, int] = {}
    try:
        return np.fromiter((ids.setdefault(v, len(ids)) for v in g), dtype=np.intp, count=n)
    except TypeError as exc:
        raise ValueError(f"groups must hold hashable ids: {exc}") from exc


def _resample_indices(
    n: int,
    n_boot: int,
    seed: int,
    groups: ArrayLike | Sequence[Hashable] | None = None,
    strata: NDArray[np.intp] | None = None,
) -> Iterator[list[NDArray[np.intp]]]:
    """``n_boot`` bootstrap resamples of the row indices ``[0, n)``, one index array per stratum.

    ``strata`` holds a stratum code in ``[0, S)`` per row, every code used; without it all rows
    form one stratum. Each stratum is resampled on its own, with replacement, to its own size:
    rows, or with ``groups`` (one hashable id per row) whole clusters, as many as the stratum
    holds (a cluster with rows in several strata is split by stratum). Deterministic for
    ``seed``.
    """
    rng = np.random.default_rng(seed)
    codes = None if groups is None else _group_codes(groups, n)
    if strata is None:
        blocks = [np.arange(n)]
    else:
        blocks = [np.flatnonzero(strata == s) for s in range(int(strata.max()) + 1)]
    plans: list[tuple[NDArray[np.intp], NDArray[np.intp] | None]] = []
    for rows in blocks:
        if codes is None:
            plans.append((rows, None))
        else:
            local = np.unique(codes[rows], return_inverse=True)[1].reshape(-1)
            plans.append((rows[np.argsort(local, kind="stable")], np.bincount(local)))
    for _ in range(n_boot):
        parts = []
        for rows, sizes in plans:
            if sizes is None:
                parts.append(rows[rng.integers(0, rows.shape[0], size=rows.shape[0])])
            else:
                k = sizes.shape[0]
                times = np.bincount(rng.integers(0, k, size=k), minlength=k)
                parts.append(np.repeat(rows, np.repeat(times, sizes)))
        yield parts


def _defined(metric: Callable[..., float], arrays: Sequence[NDArray[Any]]) -> float:
    """``metric(*arrays)``, or NaN where the metric raises ValueError or is not finite."""
    try:
        value = float(metric(*arrays))
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _bootstrap_values(
    metrics: Mapping[str, Callable[..., float]],
    arrays: Sequence[NDArray[Any]],
    n_boot: int,
    seed: int,
    groups: ArrayLike | Sequence[Hashable] | None,
) -> dict[str, NDArray[np.float64]]:
    """Metric values over ``n_boot`` resamples (all metrics see the same resamples).

    A resample where a metric raises ValueError or returns a non-finite value is left out of
    that metric's values.
    """
    values: dict[str, list[float]] = {name: [] for name in metrics}
    for (idx,) in _resample_indices(arrays[0].shape[0], n_boot, seed, groups):
        sample = [a[idx] for a in arrays]
        for name, metric in metrics.items():
            v = _defined(metric, sample)
            if not math.isnan(v):
                values[name].append(v)
    return {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}


def _check_bootstrap_args(arrays: Sequence[ArrayLike], n_boot: int, alpha: float) -> list[Any]:
    if not arrays:
        raise ValueError("bootstrap needs at least one array")
    arrs = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrs):
        if a.ndim == 0:
            raise ValueError(f"array {i} is a scalar; bootstrap resamples rows of arrays")
    lengths = {a.shape[0] for a in arrs}
    if len(lengths) != 1:
        raise ValueError(f"arrays differ in length: {[a.shape[0] for a in arrs]}")
    if arrs[0].shape[0] == 0:
        raise ValueError("arrays are empty")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return arrs


def _estimate(name: str, value: float, boot: NDArray[np.float64], n: int, alpha: float) -> Estimate:
    if boot.shape[0] == 0:
        low = high = math.nan
    else:
        low, high = (float(q) for q in np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0]))
    return Estimate(name=name, value=value, low=low, high=high, n=n, n_boot=int(boot.shape[0]))


def bootstrap(
    metric: Callable[..., float],
    *arrays: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: ArrayLike | Sequence[Hashable] | None = None,
    name: str = "",
) -> Estimate:
    """``metric(*arrays)`` with a percentile bootstrap ``1 - alpha`` confidence interval.

    The arrays are resampled together along their first axis, with replacement, ``n_boot``
    times. With ``groups`` (one hashable id per row, e.g. lesion ids) whole groups are
    resampled instead (cluster bootstrap), so rows of one group stay together. Resamples where
    the metric raises ValueError (or returns NaN) are skipped; ``Estimate.n_boot`` counts the
    ones kept, and the bounds are NaN when none is. A ValueError of the metric on the full data
    propagates. The result is deterministic for a given ``seed``. ``name`` defaults to the
    metric's ``__name__``.
    """
    arrs = _check_bootstrap_args(arrays, n_boot, alpha)
    label = name or getattr(metric, "__name__", "metric")
    value = float(metric(*arrs))
    boot = _bootstrap_values({label: metric}, arrs, n_boot, seed, groups)[label]
    return _estimate(label, value, boot, arrs[0].shape[0], alpha)


@dataclass(frozen=True)
class PairedComparison:
    """Two models' values of one metric on the same rows, and their bootstrap difference.

    ``difference`` is ``value_b - value_a`` (positive: model b scores higher) with a percentile
    interval over paired resamples; ``p_value`` is the two-sided bootstrap p-value of "no
    difference" (see :func:`paired_bootstrap`), NaN when no resample gave a defined difference.
    """

    name: str
    value_a: float
    value_b: float
    difference: Estimate
    p_value: float
    n: int

    def __str__(self) -> str:
        """``"accuracy: a 0.700, b 0.750, b - a 0.050 [0.020, 0.080], p = 0.002"``."""
        return (
            f"{self.name}: a {self.value_a:.3f}, b {self.value_b:.3f}, "
            f"b - a {self.difference}, p = {self.p_value:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, ``difference`` as a nested dict."""
        return asdict(self)


def paired_bootstrap(
    metric: Callable[..., float],
    y_true: ArrayLike,
    a: ArrayLike,
    b: ArrayLike,
    *,
    groups: ArrayLike | Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    name: str = "",
) -> PairedComparison:
    """Compare ``metric(y_true, a)`` with ``metric(y_true, b)`` for two models on the same rows.

    ``a`` and ``b`` are the two models' predictions (or score matrices) for the same rows as
    ``y_true``. Each of the ``n_boot`` resamples draws one set of rows (or, with ``groups``,
    whole clusters, as in :func:`bootstrap`) and scores both models on it, so the difference
    ``d = metric(b) - metric(a)`` keeps the pairing; resamples where either value is undefined
    are skipped. The interval is the percentile interval of ``d``. The two-sided p-value is
    ``min(1, 2 * min(1 + #{d <= 0}, 1 + #{d >= 0}) / (B + 1))`` over the ``B`` kept resamples:
    about the smallest ``alpha`` at which the percentile interval excludes 0, with the ``+1``
    correction that keeps it above zero (at least ``2 / (B + 1)``). Identical predictions give
    a difference of 0 and p = 1. Deterministic for ``seed``; ``name`` defaults to the metric's
    ``__name__``.
    """
    truth, pa, pb = _check_bootstrap_args([y_true, a, b], n_boot, alpha)
    if pa.shape != pb.shape:
        raise ValueError(f"a and b differ in shape: {pa.shape} != {pb.shape}")
    label = name or getattr(metric, "__name__", "metric")
    value_a, value_b = float(metric(truth, pa)), float(metric(truth, pb))

    def difference(t: NDArray[Any], x: NDArray[Any], z: NDArray[Any]) -> float:
        return float(metric(t, z)) - float(metric(t, x))

    diffs = _bootstrap_values({label: difference}, [truth, pa, pb], n_boot, seed, groups)[label]
    kept = diffs.shape[0]
    if kept:
        tail = min(int(np.sum(diffs <= 0.0)), int(np.sum(diffs >= 0.0))) + 1
        p_value = min(1.0, 2.0 * tail / (kept + 1))
    else:
        p_value = math.nan
    n = truth.shape[0]
    return PairedComparison(
        name=label,
        value_a=value_a,
        value_b=value_b,
        difference=_estimate(label, value_b - value_a, diffs, n, alpha),
        p_value=p_value,
        n=n,
    )


def classification_report(
    y_true: ArrayLike,
    scores: ArrayLike,
    class_names: Sequence[str],
    *,
    groups: ArrayLike | Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    top_k: Iterable[int] = (1, 5),
    per_class_auroc: bool = False,
) -> dict[str, Estimate]:
    """The standard multi-class metrics of ``scores`` (N, C) against class indices ``y_true``.

    Returns Estimates (95% bootstrap CIs, same resamples for every metric; cluster bootstrap
    with ``groups``), in this order: ``accuracy``, ``balanced_accuracy``, ``macro_f1`` and
    ``weighted_f1`` (over the classes present in the labels or predictions), ``macro_auroc``,
    ``top{k}_accuracy`` for each ``k`` in ``top_k`` with ``1 < k < C``, then with
    ``per_class_auroc`` one ``auroc[<class name>]`` per class in column order (one-vs-rest, see
    :func:`ovr_aurocs`). The prediction is the arg-max of ``scores``. AUROC entries undefined on
    the full data (a class absent, or a single class) are left out.
    """
    y, s = _class_indices(y_true, scores)
    names = list(class_names)
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} class names for {s.shape[1]} score columns")
    if per_class_auroc and len(set(names)) != len(names):
        raise ValueError("class names contain duplicates: per-class AUROC keys would collide")
    ks = sorted({int(k) for k in top_k})
    if any(k < 1 for k in ks):
        raise ValueError(f"top_k values must be >= 1, got {ks}")
    y_pred = np.argmax(s, axis=1)

    # one ranking per resample serves the macro and the per-class AUROCs: every metric of a
    # resample receives the same score array, which keys this one-entry memo
    memo: dict[str, Any] = {}

    def per_class(t: NDArray[Any], sc: NDArray[Any]) -> NDArray[np.float64]:
        if memo.get("scores") is not sc:
            memo["scores"], memo["aurocs"] = sc, ovr_aurocs(t, sc)
        return memo["aurocs"]

    metrics: dict[str, Callable[..., float]] = {
        "accuracy": lambda t, p, _s: accuracy(t, p),
        "balanced_accuracy": lambda t, p, _s: balanced_accuracy(t, p),
        "macro_f1": lambda t, p, _s: macro_f1(t, p),
        "weighted_f1": lambda t, p, _s: weighted_f1(t, p),
        "macro_auroc": lambda t, _p, sc: _mean_defined(per_class(t, sc)),
    }
    for k in ks:
        if 1 < k < s.shape[1]:
            metrics[f"top{k}_accuracy"] = lambda t, _p, sc, k=k: top_k_accuracy(t, sc, k)
    if per_class_auroc:
        for c, class_name in enumerate(names):
            metrics[f"auroc[{class_name}]"] = lambda t, _p, sc, c=c: per_class(t, sc)[c]

    points: dict[str, float] = {}
    for key, metric in list(metrics.items()):
        points[key] = _defined(metric, [y, y_pred, s])
        if math.isnan(points[key]):
            del metrics[key]
    if groups is not None:
        _group_codes(groups, y.shape[0])  # fail early on a length mismatch
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    boots = _bootstrap_values(metrics, [y, y_pred, s], n_boot, seed, groups)
    return {key: _estimate(key, points[key], boots[key], y.shape[0], 0.05) for key in metrics}


# --------------------------------------------------------------------------- rendering


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def estimates_table(rows: Mapping[str, Mapping[str, Estimate]]) -> str:
    """A Markdown table: one row per key of ``rows`` (e.g. a dataset), one column per metric.

    Columns are the union of the metric names in first-seen order; a missing metric shows
    ``—``. Cells are ``str(Estimate)``, e.g. ``0.812 [0.784, 0.839]``.
    """
    columns: list[str] = []
    for metrics in rows.values():
        for key in metrics:
            if key not in columns:
                columns.append(key)
    lines = [
        "| " + " | ".join(["", *(_cell(c) for c in columns)]) + " |",
        "|" + "|".join(["---"] * (len(columns) + 1)) + "|",
    ]
    for row_name, metrics in rows.items():
        cells = [str(metrics[c]) if c in metrics else "—" for c in columns]
        lines.append("| " + " | ".join([_cell(str(row_name)), *cells]) + " |")
    return "\n".join(lines) + "\n"
