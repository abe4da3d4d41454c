"""Metrics per subgroup (skin type, sex, age band, body site, modality) with gaps to the best.

:func:`subgroup_values` reads a subgroup of each record from its metadata (``age_band`` is
derived from ``age`` by the bands in ``subgroups.yaml``); :func:`subgroup_table` computes every
metric in each subgroup with a bootstrap interval, and the gap of each subgroup to the best one
with an interval. Rows whose subgroup is unknown form their own ``unknown`` row, so the rows'
sizes add up to the whole; that row is never the best group.

The bootstrap is stratified: each resample draws every subgroup's rows (or, with ``groups``,
its clusters, e.g. lesions) with replacement from that subgroup alone, so subgroup sizes stay
fixed. The best group is chosen once, on the full data, and held fixed across resamples; the
gap of group ``g`` in a resample is ``metric(best) - metric(g)`` on that resample (the other
way round for metrics where lower is better), so the best group's gap is exactly 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from dermfm.errors import KnowledgeError
from dermfm.evaluate.metrics import (
    Estimate,
    _bootstrap_values,
    _cell,
    _check_bootstrap_args,
    _defined,
    _estimate,
    _resample_indices,
)
from dermfm.knowledge.files import read_document, require, string_list

if TYPE_CHECKING:
    from dermfm.data import Record

__all__ = [
    "SubgroupRow",
    "SubgroupTable",
    "age_band",
    "subgroup_keys",
    "subgroup_table",
    "subgroup_values",
]

UNKNOWN = "unknown"  # label of the row of records whose subgroup is unknown


# --------------------------------------------------------------------------- subgroups.yaml


@dataclass(frozen=True)
class _Spec:
    names: dict[str, str]
    order: dict[str, tuple[str, ...]]
    unknown: frozenset[str]
    bands: tuple[tuple[str, float], ...]  # (name, upper bound in years; inf for the last)


@functools.lru_cache(maxsize=1)
def _spec() -> _Spec:
    file = Path(str(resources.files("dermfm.evaluate") / "subgroups.yaml"))
    data = read_document(file)
    entries = data.get("subgroups")
    if not isinstance(entries, dict) or not entries:
        raise KnowledgeError(file, "expected a non-empty 'subgroups' mapping")
    names = {key: str(require(e, "name", file, f"subgroups.{key}")) for key, e in entries.items()}
    order = {
        key: string_list(e.get("order"), file, f"subgroups.{key}.order")
        for key, e in entries.items()
    }
    raw_bands = data.get("age_bands")
    if not isinstance(raw_bands, list) or not raw_bands:
        raise KnowledgeError(file, "expected a non-empty 'age_bands' list")
    bands: list[tuple[str, float]] = []
    for i, band in enumerate(raw_bands):
        name = str(require(band, "name", file, f"age_bands[{i}]"))
        last = i == len(raw_bands) - 1
        below = band.get("below")
        if last and below is not None:
            raise KnowledgeError(file, f"age_bands[{i}]: the last band takes no 'below' bound")
        if not last and (
            isinstance(below, bool)
            or not isinstance(below, int | float)
            or (bands and below <= bands[-1][1])
        ):
            raise KnowledgeError(
                file, f"age_bands[{i}]: 'below' must be a number above the previous band's"
            )
        bands.append((name, math.inf if last else float(below)))
    order["age_band"] = tuple(name for name, _ in bands)
    unknown = string_list(data.get("unknown_values"), file, "unknown_values")
    return _Spec(
        names=names,
        order=order,
        unknown=frozenset(v.casefold() for v in (*unknown, "")),
        bands=tuple(bands),
    )


def subgroup_keys() -> dict[str, str]:
    """The standard subgroup keys, in report order, with their display names."""
    return dict(_spec().names)


def _known(value: Any) -> str | None:
    """``value`` as a stripped string, or None when it is missing, NaN or an unknown marker."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if text.casefold() in _spec().unknown else text


def age_band(age: float | str | None) -> str | None:
    """The age band (``subgroups.yaml``) of an age in years; None when the age is unknown.

    ``age`` is a number or a numeric string (``"45"``, ``"45.0"``); None, NaN and the unknown
    markers (``""``, ``"unknown"``...) give None. ValueError for a negative or non-numeric age.
    """
    text = _known(age)
    if text is None:
        return None
    if isinstance(age, bool):
        raise ValueError(f"age {age!r} is not a number of years")
    try:
        years = float(text)
    except ValueError as exc:
        raise ValueError(f"age {age!r} is not a number of years") from exc
    if math.isnan(years):
        return None
    if years < 0:
        raise ValueError(f"age {age!r} is negative")
    return next(name for name, below in _spec().bands if years < below)


def subgroup_values(records: Sequence[Record], key: str) -> list[str | None]:
    """The subgroup ``key`` of each record (None where unknown), from ``Record.metadata``.

    ``age_band`` is derived from the metadata ``age``; any other key is the metadata value as
    it is. ``key`` is a standard key (:func:`subgroup_keys`) or a metadata key some record
    carries (e.g. ``dx_type``); anything else raises ValueError. An unreadable age raises a
    :class:`ManifestError` naming the record's image.
    """
    if key == "age_band":
        bands: list[str | None] = []
        for record in records:
            try:
                bands.append(age_band(record.metadata.get("age")))
            except ValueError as exc:
                from dermfm.data import ManifestError  # dermfm.data imports torch

                raise ManifestError(record.image, f"metadata 'age': {exc}") from exc
        return bands
    if key not in _spec().names and not any(key in r.metadata for r in records):
        raise ValueError(
            f"unknown subgroup key {key!r}: not a standard key "
            f"({', '.join(_spec().names)}) and no record has metadata {key!r}"
        )
    return [_known(record.metadata.get(key)) for record in records]


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class SubgroupRow:
    """One subgroup's metrics and gaps to the best group.

    ``value`` is the subgroup value (None for the records whose value is unknown); ``n`` its
    number of rows; ``estimates[m]`` metric ``m`` on its rows. ``gaps[m]`` is how much worse
    than the best group it is on metric ``m`` (0 for the best group; NaN value when there is no
    best group or the metric is undefined).
    """

    value: str | None
    n: int
    estimates: dict[str, Estimate]
    gaps: dict[str, Estimate]

    @property
    def label(self) -> str:
        """The value, or ``"unknown"``."""
        return UNKNOWN if self.value is None else self.value

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: ``group`` (the label), ``value``, ``n``, the estimates and gaps as dicts."""
        return {
            "group": self.label,
            "value": self.value,
            "n": self.n,
            "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
            "gaps": {k: e.to_dict() for k, e in self.gaps.items()},
        }


@dataclass(frozen=True)
class SubgroupTable:
    """Metrics per subgroup of one key (e.g. skin type), from :func:`subgroup_table`.

    ``rows`` are the known subgroups in display order, then the ``unknown`` row when some rows'
    subgroup is unknown; their ``n`` add up to ``n``. ``overall`` holds the metrics on all rows.
    ``best[m]`` is the best group's value for metric ``m`` (None when no group qualifies);
    ``min_size`` and ``lower_is_better`` are the settings it was chosen with. ``name`` is the
    key's display name.
    """

    key: str
    name: str
    n: int
    overall: dict[str, Estimate]
    rows: tuple[SubgroupRow, ...]
    best: dict[str, str | None]
    min_size: int
    lower_is_better: frozenset[str]

    @property
    def unknown(self) -> SubgroupRow | None:
        """The row of records whose subgroup is unknown, if any."""
        return next((row for row in self.rows if row.value is None), None)

    def row(self, value: str | None) -> SubgroupRow:
        """The row of subgroup ``value`` (None: the unknown row); KeyError when absent."""
        for candidate in self.rows:
            if candidate.value == value:
                return candidate
        raise KeyError(f"no subgroup {value!r} in the {self.name} table")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict (NaN bounds apart) of the whole table."""
        return {
            "key": self.key,
            "name": self.name,
            "n": self.n,
            "min_size": self.min_size,
            "lower_is_better": sorted(self.lower_is_better),
            "metrics": list(self.overall),
            "best": dict(self.best),
            "overall": {k: e.to_dict() for k, e in self.overall.items()},
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_markdown(self) -> str:
        """A Markdown table: one row per subgroup plus ``all``; per metric its value and gap.

        Cells are ``str(Estimate)``; the best group's gap reads ``best``, an undefined value
        ``—``. A closing line explains the gap.
        """
        header = [self.name, "n"]
        for metric in self.overall:
            header += [metric, f"{metric} gap"]
        lines = [
            "| " + " | ".join(_cell(h) for h in header) + " |",
            "|" + "|".join(["---"] * len(header)) + "|",
        ]
        for row in self.rows:
            cells = [_cell(row.label), str(row.n)]
            for metric in self.overall:
                best = self.best[metric] is not None and row.value == self.best[metric]
                cells += [_text(row.estimates[metric]), "best" if best else _text(row.gaps[metric])]
            lines.append("| " + " | ".join(cells) + " |")
        overall = ["all", str(self.n)]
        for estimate in self.overall.values():
            overall += [_text(estimate), ""]
        lines.append("| " + " | ".join(overall) + " |")
        lines.append("")
        lines.append(
            f"Gap: how much worse than the best group (the best point value among known groups "
            f"of at least {self.min_size} rows), with a stratified bootstrap interval."
        )
        return "\n".join(lines) + "\n"

    def plot_bars(self, path: str | Path, metric: str) -> Path:
        """Bars of ``metric`` per subgroup with their intervals, saved as PNG at ``path``.

        The best group's bar is highlighted, the unknown group's is grey and hatched, and the
        overall value is a dashed line over its interval. Returns the path.
        """
        if metric not in self.overall:
            raise ValueError(f"no metric {metric!r} in the table; it has {', '.join(self.overall)}")
        from matplotlib.figure import Figure

        rows = self.rows
        figure = Figure(figsize=(max(4.0, 0.8 * len(rows) + 2.0), 4.0))
        ax = figure.subplots()
        values = np.array([row.estimates[metric].value for row in rows], dtype=float)
        lows = np.array([row.estimates[metric].low for row in rows], dtype=float)
        highs = np.array([row.estimates[metric].high for row in rows], dtype=float)
        errors = np.nan_to_num(np.vstack([values - lows, highs - values]), nan=0.0)
        colours = [
            "tab:grey"
            if row.value is None
            else "tab:orange"
            if row.value == self.best[metric]
            else "tab:blue"
            for row in rows
        ]
        x = np.arange(len(rows))
        bars = ax.bar(x, np.nan_to_num(values), yerr=errors, capsize=4, color=colours)
        for bar, row in zip(bars, rows, strict=True):
            if row.value is None:
                bar.set_hatch("//")
        total = self.overall[metric]
        ax.axhline(total.value, ls="--", color="black", lw=1.0, label=f"all ({total})")
        if math.isfinite(total.low) and math.isfinite(total.high):
            ax.axhspan(total.low, total.high, color="black", alpha=0.08)
        ax.set_xticks(x, [f"{row.label}\n(n={row.n})" for row in rows], fontsize=8)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by {self.name}", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        figure.tight_layout()
        out = Path(path)
        figure.savefig(out, dpi=110)
        return out


def _summary(name: str, value: float, samples: np.ndarray, n: int, alpha: float) -> Estimate:
    """An Estimate from resampled values (NaN ones dropped); no interval for an undefined value."""
    kept = np.empty(0) if math.isnan(value) else samples[~np.isnan(samples)]
    return _estimate(name, value, kept, n, alpha)


def subgroup_table(
    metrics: Mapping[str, Callable[..., float]],
    *arrays: ArrayLike,
    subgroups: Sequence[Any],
    key: str = "",
    groups: ArrayLike | Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    min_size: int = 30,
    lower_is_better: Iterable[str] = (),
) -> SubgroupTable:
    """Each metric in each subgroup, with a bootstrap interval and the gap to the best group.

    Args:
        metrics: name -> ``metric(*arrays)`` (e.g. ``{"accuracy": accuracy}`` with arrays
            ``y_true, y_pred``); each is called on the rows of one subgroup at a time.
        *arrays: arrays with one row per sample, resampled together (as in
            :func:`~dermfm.evaluate.metrics.bootstrap`).
        subgroups: one subgroup value per row (e.g. from :func:`subgroup_values`); None, NaN
            and the unknown markers of ``subgroups.yaml`` put a row in the ``unknown`` group.
        key: the subgroup key (``skin_type``...): names the table and orders its rows by
            ``subgroups.yaml`` (other values sorted; unknown last).
        groups: cluster ids (e.g. lesions) kept together in resampling, within each subgroup.
        n_boot: bootstrap resamples; ``alpha``: 1 - the intervals' coverage; ``seed``: RNG seed.
        min_size: only known groups with at least this many rows can be the best group (small
            groups have noisy values and would make every other gap look large).
        lower_is_better: metric names where lower is better (e.g. ``ece``): for those the best
            group has the lowest value and the gap is ``metric(g) - metric(best)``.

    Returns:
        A :class:`SubgroupTable`. The best group of a metric is the known group with the
        highest point value (lowest for ``lower_is_better``; ties go to the first in row order)
        among those of at least ``min_size`` rows; it is chosen on the full data and held fixed
        in the resamples, and gaps are computed per resample against it. A metric undefined in
        a group (ValueError or NaN, e.g. AUROC with one class) gives a NaN value there, while a
        ValueError on all rows propagates. ``overall`` equals :func:`bootstrap` of each metric
        on all rows with the same ``seed`` and ``groups``.
    """
    if not metrics:
        raise ValueError("subgroup_table needs at least one metric")
    arrs = _check_bootstrap_args(arrays, n_boot, alpha)
    n = arrs[0].shape[0]
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 1:
        raise ValueError(f"min_size must be an integer >= 1, got {min_size!r}")
    lower = frozenset(lower_is_better)
    if lower - set(metrics):
        raise ValueError(f"lower_is_better names unknown metrics: {sorted(lower - set(metrics))}")
    labels = [_known(v) for v in subgroups]
    if len(labels) != n:
        raise ValueError(f"subgroups has {len(labels)} entries but the arrays have {n} rows")

    names, funcs = list(metrics), list(metrics.values())
    overall_boot = _bootstrap_values(metrics, arrs, n_boot, seed, groups)
    overall = {
        m: _estimate(m, float(f(*arrs)), overall_boot[m], n, alpha) for m, f in metrics.items()
    }

    present = {v for v in labels if v is not None}
    preferred = [v for v in _spec().order.get(key, ()) if v in present]
    values: list[str | None] = [*preferred, *sorted(present - set(preferred))]
    if None in labels:
        values.append(None)
    position = {v: i for i, v in enumerate(values)}
    strata = np.fromiter((position[v] for v in labels), dtype=np.intp, count=n)
    sizes = np.bincount(strata, minlength=len(values))

    point = np.array(
        [[_defined(f, [a[strata == s] for a in arrs]) for f in funcs] for s in range(len(values))]
    )
    boot = np.full((n_boot, len(values), len(funcs)), np.nan)
    for b, parts in enumerate(_resample_indices(n, n_boot, seed, groups, strata)):
        for s, idx in enumerate(parts):
            sample = [a[idx] for a in arrs]
            boot[b, s] = [_defined(f, sample) for f in funcs]

    sign = np.array([-1.0 if m in lower else 1.0 for m in names])
    best: list[int | None] = []
    for j in range(len(names)):
        eligible = [
            s
            for s, v in enumerate(values)
            if v is not None and sizes[s] >= min_size and not math.isnan(point[s, j])
        ]
        best.append(max(eligible, key=lambda s, j=j: sign[j] * point[s, j]) if eligible else None)

    rows = []
    for s, value in enumerate(values):
        size = int(sizes[s])
        estimates, gaps = {}, {}
        for j, m in enumerate(names):
            estimates[m] = _summary(m, float(point[s, j]), boot[:, s, j], size, alpha)
            b = best[j]
            if b is None:
                gaps[m] = _summary(f"{m}_gap", math.nan, np.empty(0), size, alpha)
            else:
                gap = float(sign[j] * (point[b, j] - point[s, j]))
                samples = sign[j] * (boot[:, b, j] - boot[:, s, j])
                gaps[m] = _summary(f"{m}_gap", gap, samples, size, alpha)
        rows.append(SubgroupRow(value=value, n=size, estimates=estimates, gaps=gaps))
    return SubgroupTable(
        key=key,
        name=_spec().names.get(key, key or "subgroup"),
        n=n,
        overall=overall,
        rows=tuple(rows),
        best={m: None if b is None else values[b] for m, b in zip(names, best, strict=True)},
        min_size=int(min_size),
        lower_is_better=lower,
    )


def _text(estimate: Estimate) -> str:
    return "—" if math.isnan(estimate.value) else str(estimate)
