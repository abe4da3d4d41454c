"""Classification metrics and bootstrap confidence intervals, in plain numpy.

Every metric takes numpy arrays or lists, checks its inputs (matching lengths, non-empty,
2-D scores with enough columns) and raises :class:`ValueError` with a message naming the
problem. :func:`bootstrap` turns any such metric into an :class:`Estimate` with a percentile
confidence interval; with ``groups`` it resamples whole groups (e.g. all images of one HAM10000
lesion) instead of rows. :func:`classification_report` bundles the usual multi-class metrics and
:func:`estimates_table` renders several reports as a Markdown table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Estimate",
    "accuracy",
    "auroc",
    "balanced_accuracy",
    "bootstrap",
    "classification_report",
    "estimates_table",
    "macro_auroc",
    "macro_f1",
    "top_k_accuracy",
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


def _class_indices(y_true: ArrayLike, scores: ArrayLike) -> tuple[NDArray[Any], NDArray[Any]]:
    """Integer labels in ``[0, C)`` and finite (N, C) scores, checked against each other."""
    y = _as_1d(y_true, "y_true")
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (samples, classes), got shape {s.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"y_true and scores differ in length: {y.shape[0]} != {s.shape[0]}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    n_classes = s.shape[1]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"y_true holds class indices in [{lo}, {hi}] but scores has only {n_classes} "
            f"columns (classes 0..{n_classes - 1})"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
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


def macro_f1(
    y_true: ArrayLike, y_pred: ArrayLike, labels: Iterable[Hashable] | None = None
) -> float:
    """Unweighted mean of per-class F1.

    The classes are ``labels`` when given (a label absent from both ``y_true`` and ``y_pred``
    scores 0, samples with other labels only count as errors of the listed classes), else the
    classes present in ``y_true`` or ``y_pred``. F1 of a class is ``2 TP / (2 TP + FP + FN)``.
    """
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
    denom = np.bincount(ct, minlength=k) + np.bincount(cp, minlength=k)
    f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)
    return float(np.mean(f1[selected]))


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


def macro_auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """One-vs-rest AUROC of each column of ``scores`` (N, C), averaged over the classes.

    ``y_true`` holds class indices into the columns. Only classes with both positives and
    negatives in ``y_true`` are averaged; ValueError when there is none (a single class).
    """
    y, s = _class_indices(y_true, scores)
    n, n_classes = s.shape
    n_pos = np.bincount(y, minlength=n_classes).astype(np.float64)
    defined = (n_pos > 0) & (n_pos < n)
    if not defined.any():
        raise ValueError("macro AUROC is undefined: y_true holds only one class")
    ranks = _average_ranks(s)
    rank_sum = np.bincount(y, weights=ranks[np.arange(n), y], minlength=n_classes)
    u = rank_sum[defined] - n_pos[defined] * (n_pos[defined] + 1) / 2.0
    return float(np.mean(u / (n_pos[defined] * (n - n_pos[defined]))))


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
    n = arrays[0].shape[0]
    rng = np.random.default_rng(seed)
    if groups is not None:
        codes = _group_codes(groups, n)
        n_groups = int(codes.max()) + 1
        rows_by_group = np.argsort(codes, kind="stable")
        group_sizes = np.bincount(codes, minlength=n_groups)
    values: dict[str, list[float]] = {name: [] for name in metrics}
    for _ in range(n_boot):
        if groups is None:
            idx = rng.integers(0, n, size=n)
        else:
            times = np.bincount(rng.integers(0, n_groups, size=n_groups), minlength=n_groups)
            idx = np.repeat(rows_by_group, np.repeat(times, group_sizes))
        sample = [a[idx] for a in arrays]
        for name, metric in metrics.items():
            try:
                v = float(metric(*sample))
            except ValueError:
                continue
            if math.isfinite(v):
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


def classification_report(
    y_true: ArrayLike,
    scores: ArrayLike,
    class_names: Sequence[str],
    *,
    groups: ArrayLike | Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    top_k: Iterable[int] = (1, 5),
) -> dict[str, Estimate]:
    """The standard multi-class metrics of ``scores`` (N, C) against class indices ``y_true``.

    Returns Estimates (95% bootstrap CIs, same resamples for every metric; cluster bootstrap
    with ``groups``) for ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (over the classes
    present in the labels or predictions), ``macro_auroc`` and ``top{k}_accuracy`` for each
    ``k`` in ``top_k`` with ``1 < k < C``. The prediction is the arg-max of ``scores``.
    ``macro_auroc`` is left out when it is undefined on the full data (a single class).
    """
    y, s = _class_indices(y_true, scores)
    names = list(class_names)
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} class names for {s.shape[1]} score columns")
    ks = sorted({int(k) for k in top_k})
    if any(k < 1 for k in ks):
        raise ValueError(f"top_k values must be >= 1, got {ks}")
    y_pred = np.argmax(s, axis=1)

    metrics: dict[str, Callable[..., float]] = {
        "accuracy": lambda t, p, _s: accuracy(t, p),
        "balanced_accuracy": lambda t, p, _s: balanced_accuracy(t, p),
        "macro_f1": lambda t, p, _s: macro_f1(t, p),
        "macro_auroc": lambda t, _p, sc: macro_auroc(t, sc),
    }
    for k in ks:
        if 1 < k < s.shape[1]:
            metrics[f"top{k}_accuracy"] = lambda t, _p, sc, k=k: top_k_accuracy(t, sc, k)

    points: dict[str, float] = {}
    for key, metric in list(metrics.items()):
        try:
            points[key] = float(metric(y, y_pred, s))
        except ValueError:
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
