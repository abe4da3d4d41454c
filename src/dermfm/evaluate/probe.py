"""Linear probes and few-shot curves on frozen image embeddings.

A :class:`LinearProbe` is a multinomial logistic regression (scikit-learn, L-BFGS) on the
embeddings as the model returns them (L2-normalised, not standardised), the protocol of the CLIP
paper and CLIP_benchmark. Its inverse regularisation ``C`` is chosen from a grid by balanced
accuracy on a validation split. :func:`few_shot_curve` repeats this on per-class subsets of the
training data (``k`` examples per class, or a fraction of each class) over several seeds and scores
each probe on the test split with :func:`~dermfm.evaluate.metrics.classification_report` (95%
bootstrap intervals). :func:`summarize_few_shot`, :func:`few_shot_table` and :func:`plot_few_shot`
aggregate, tabulate and plot the results.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dermfm.evaluate.metrics import Estimate, balanced_accuracy, classification_report
from dermfm.evaluate.retrieval import as_matrix
from dermfm.progress import progress

__all__ = [
    "DEFAULT_CS",
    "FewShotResult",
    "FewShotSummary",
    "LinearProbe",
    "few_shot_curve",
    "few_shot_table",
    "plot_few_shot",
    "subsample",
    "summarize_few_shot",
]

#: Grid of inverse regularisation strengths (L2-normalised features have small per-dimension
#: scale, so useful values reach far above scikit-learn's default ``C=1``).
DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)

#: Share of each class held out to choose ``C`` when no validation split is given.
HOLDOUT = 0.2


def _labels(y: Any, n: int, what: str) -> NDArray[Any]:
    arr = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} labels for {n} feature rows")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite labels")
    return arr


def _holdout(y: NDArray[Any], share: float, seed: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Stratified split of row indices: ``round(share * n_c)`` of each class held out, but
    always at least one row of a class kept for fitting (a single-example class is never held
    out). Returns ``(fit_rows, held_out_rows)``, both sorted."""
    rng = np.random.default_rng(seed)
    held: list[NDArray[np.intp]] = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        held.append(rows[: min(rows.shape[0] - 1, round(share * rows.shape[0]))])
    out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(y.shape[0]), out), out


class LinearProbe:
    """Multinomial logistic regression on embeddings with ``C`` chosen on a validation split.

    Features are used as given (no standardisation): CLIP-style embeddings are L2-normalised,
    and the probe protocol of the CLIP paper and CLIP_benchmark fits plain logistic regression on
    them. ``fit`` trains one model per ``C`` in ``Cs`` on the training rows and keeps the one
    with the best balanced accuracy on the validation rows (ties go to the smaller ``C``, the
    stronger regularisation).

    * With ``val_x``/``val_y``: the kept model is the one trained on the training data alone
      (no refit on train + validation, so a k-shot probe sees exactly its k examples per class).
    * Without: a stratified :data:`HOLDOUT` share of each class (at least one example of every
      class stays in training) is the validation split; the probe is then refitted on all the
      training data with the chosen ``C``.
    * With a single ``C`` and no validation split nothing is held out.

    Attributes (after ``fit``):
        classes_: the sorted distinct training labels (columns of ``predict_proba``).
        C_: the chosen inverse regularisation strength.
        val_scores_: ``C`` -> balanced accuracy on the validation split (empty when no choice
            was made).
    """

    def __init__(
        self,
        Cs: Sequence[float] = DEFAULT_CS,
        max_iter: int = 1000,
        seed: int = 0,
        class_weight: str | None = None,
    ) -> None:
        """Configure the probe.

        Args:
            Cs: candidate inverse regularisation strengths (positive).
            max_iter: L-BFGS iteration limit per fit.
            seed: seed of the hold-out split (the L-BFGS fit itself is deterministic).
            class_weight: ``None`` (the CLIP_benchmark protocol: every example weighs the same)
                or ``"balanced"`` (classes weigh inversely to their frequency, so a dominant
                class such as HAM10000's nevus does not swamp the rare ones).
        """
        if class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
        self.class_weight = class_weight
        cs = sorted(float(c) for c in Cs)
        if not cs or cs[0] <= 0 or not np.all(np.isfinite(cs)):
            raise ValueError(f"Cs must be positive finite numbers, got {list(Cs)}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.Cs = tuple(cs)
        self.max_iter = max_iter
        self.seed = seed
        self.classes_: NDArray[Any] | None = None
        self.C_: float | None = None
        self.val_scores_: dict[float, float] = {}
        self._model: Any = None

    def _train(self, x: NDArray[Any], y: NDArray[Any], c: float) -> Any:
        import warnings

        from sklearn.linear_model import LogisticRegression

        with warnings.catch_warnings():
            # k-shot subsets have as many classes as samples, which is intended here
            warnings.filterwarnings("ignore", message="The number of unique classes")
            return LogisticRegression(
                C=c, max_iter=self.max_iter, solver="lbfgs", class_weight=self.class_weight
            ).fit(x, y)

    def fit(
        self,
        train_x: Any,
        train_y: ArrayLike,
        val_x: Any | None = None,
        val_y: ArrayLike | None = None,
    ) -> LinearProbe:
        """Choose ``C`` on the validation split (or a hold-out of ``train``) and fit the probe.

        Args:
            train_x: ``(N, D)`` training embeddings (numpy or torch).
            train_y: ``N`` labels of any sortable type (class indices, names...).
            val_x: ``(M, D)`` validation embeddings; pass both or neither of ``val_x``/``val_y``.
            val_y: ``M`` validation labels (a label unseen in training counts as an error).

        Raises:
            ValueError: fewer than two classes, mismatched lengths or dimensions, NaN values, or
                too few training examples to hold any out for choosing ``C``.
        """
        x = as_matrix(train_x, "train_x", np.float64)
        y = _labels(train_y, x.shape[0], "train_y")
        classes = np.unique(y)
        if classes.shape[0] < 2:
            raise ValueError(f"train_y holds {classes.shape[0]} class(es); a probe needs 2 or more")
        if (val_x is None) != (val_y is None):
            raise ValueError("pass both val_x and val_y, or neither")
        vx = vy = None
        refit = False
        if val_x is not None:
            vx = as_matrix(val_x, "val_x", np.float64)
            vy = _labels(val_y, vx.shape[0], "val_y")
            if vx.shape[1] != x.shape[1]:
                raise ValueError(f"val_x has {vx.shape[1]} features but train_x has {x.shape[1]}")
            fx, fy = x, y
        elif len(self.Cs) > 1:
            fit_rows, held = _holdout(y, HOLDOUT, self.seed)
            if held.shape[0] == 0:
                raise ValueError(
                    f"{x.shape[0]} training examples are too few to hold out a validation "
                    "split for choosing C; pass val_x/val_y or a single C"
                )
            fx, fy, vx, vy, refit = x[fit_rows], y[fit_rows], x[held], y[held], True

        self.val_scores_ = {}
        if vx is None:
            self.C_ = self.Cs[0]
            self._model = self._train(x, y, self.C_)
        else:
            best: tuple[float, float, Any] | None = None
            for c in self.Cs:
                model = self._train(fx, fy, c)
                score = balanced_accuracy(vy, model.predict(vx))
                self.val_scores_[c] = score
                if best is None or score > best[0]:
                    best = (score, c, model)
            assert best is not None  # Cs is never empty
            self.C_ = best[1]
            self._model = self._train(x, y, self.C_) if refit else best[2]
        self.classes_ = classes
        return self

    def to_arrays(self) -> dict[str, NDArray[Any]]:
        """The fitted probe as arrays (``coef``, ``intercept``, ``classes``, ``C``), e.g. to
        store in a safetensors file; :meth:`from_arrays` restores it."""
        if self._model is None or self.classes_ is None or self.C_ is None:
            raise ValueError("this LinearProbe is not fitted yet; call fit() first")
        return {
            "coef": np.asarray(self._model.coef_, dtype=np.float32),
            "intercept": np.asarray(self._model.intercept_, dtype=np.float32),
            "classes": np.asarray(self.classes_),
            "C": np.asarray([self.C_], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, ArrayLike]) -> LinearProbe:
        """A fitted probe from :meth:`to_arrays`' output (predictions equal the original's to
        float32 precision).

        Raises:
            ValueError: a missing array or shapes that do not fit together.
        """
        from sklearn.linear_model import LogisticRegression

        missing = sorted({"coef", "intercept", "classes", "C"} - set(arrays))
        if missing:
            raise ValueError(f"probe arrays lack {missing}")
        coef = np.asarray(arrays["coef"], dtype=np.float64)
        intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        classes = np.asarray(arrays["classes"])
        rows = 1 if classes.shape[0] == 2 else classes.shape[0]
        if coef.ndim != 2 or coef.shape[0] != rows or intercept.shape != (rows,):
            raise ValueError(
                f"probe arrays do not fit together: coef {coef.shape}, intercept "
                f"{intercept.shape}, {classes.shape[0]} classes"
            )
        c = float(np.asarray(arrays["C"]).reshape(-1)[0])
        model = LogisticRegression(C=c)
        model.coef_, model.intercept_, model.classes_ = coef, intercept, classes
        model.n_features_in_ = coef.shape[1]
        probe = cls(Cs=(c,))
        probe._model, probe.classes_, probe.C_ = model, classes, c
        return probe

    def _features(self, x: Any) -> NDArray[np.float64]:
        if self._model is None:
            raise ValueError("this LinearProbe is not fitted yet; call fit() first")
        arr = as_matrix(x, "x", np.float64)
        expected = self._model.coef_.shape[1]
        if arr.shape[1] != expected:
            raise ValueError(
                f"x has {arr.shape[1]} features but the probe was fitted on {expected}"
            )
        return arr

    def predict_proba(self, x: Any) -> NDArray[np.float64]:
        """``(N, len(classes_))`` class probabilities, columns in ``classes_`` order."""
        features = self._features(x)  # raises first when the probe is not fitted
        return np.asarray(self._model.predict_proba(features), dtype=np.float64)

    def predict_proba_full(self, x: Any, n_classes: int) -> NDArray[np.float64]:
        """Probabilities over class indices ``0..n_classes-1`` (a class absent from the
        training labels gets probability 0), for labels that are class indices.

        Raises:
            ValueError: the training labels are not integers in ``[0, n_classes)``.
        """
        proba = self.predict_proba(x)
        classes = self.classes_
        assert classes is not None  # set together with the model
        if (
            not np.issubdtype(classes.dtype, np.integer)
            or classes[0] < 0
            or classes[-1] >= n_classes
        ):
            raise ValueError(
                f"predict_proba_full needs class indices in [0, {n_classes}); the probe was "
                f"fitted on labels {classes.tolist()}"
            )
        full = np.zeros((proba.shape[0], n_classes), dtype=np.float64)
        full[:, classes] = proba
        return full

    def predict(self, x: Any) -> NDArray[Any]:
        """The most probable class of each row (a value of ``classes_``)."""
        proba = self.predict_proba(x)
        assert self.classes_ is not None
        return self.classes_[np.argmax(proba, axis=1)]


def subsample(
    y: ArrayLike, *, shots: int | None = None, fraction: float | None = None, seed: int = 0
) -> NDArray[np.intp]:
    """Sorted row indices of a per-class subset of labels ``y``: exactly one of

    * ``shots=k``: ``k`` random examples of each class; a class with fewer keeps all of them
      (:class:`FewShotResult.short_classes` records which);
    * ``fraction=f`` (``0 < f <= 1``): ``round(f * n_c)`` random examples of each class, at
      least one.

    Each class is shuffled once per ``seed``, independently of ``k`` and ``f``, so for one seed
    smaller subsets are contained in larger ones.
    """
    if (shots is None) == (fraction is None):
        raise ValueError("pass exactly one of shots= and fraction=")
    if shots is not None and (
        isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1
    ):
        raise ValueError(f"shots must be an integer >= 1, got {shots!r}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise ValueError(f"y must be a non-empty 1-D array of labels, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        size = shots if shots is not None else max(1, round((fraction or 0.0) * rows.shape[0]))
        picked.append(rows[:size])
    return np.sort(np.concatenate(picked))


@dataclass(frozen=True)
class FewShotResult:
    """One probe of a few-shot curve: a training subset, a seed, and its test metrics.

    Attributes:
        setting: ``"shots=k"`` or ``"fraction=f"``.
        shots: ``k`` for a k-shot setting, else ``None``.
        fraction: ``f`` for a fraction setting, else ``None``.
        seed: seed of the subset.
        n_train: training examples the probe was fitted on.
        C: the inverse regularisation chosen on the validation split.
        report: test metrics (:func:`~dermfm.evaluate.metrics.classification_report`).
        short_classes: classes with fewer than ``k`` training examples (all of them used).
    """

    setting: str
    shots: int | None
    fraction: float | None
    seed: int
    n_train: int
    C: float
    report: dict[str, Estimate]
    short_classes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping; ``metrics`` holds each Estimate as a dict."""
        return {
            "setting": self.setting,
            "shots": self.shots,
            "fraction": self.fraction,
            "seed": self.seed,
            "n_train": self.n_train,
            "C": self.C,
            "short_classes": list(self.short_classes),
            "metrics": {k: v.to_dict() for k, v in self.report.items()},
        }


def few_shot_curve(
    train_x: Any,
    train_y: ArrayLike,
    val_x: Any | None,
    val_y: ArrayLike | None,
    test_x: Any,
    test_y: ArrayLike,
    class_names: Sequence[str],
    *,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    groups: Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    Cs: Sequence[float] = DEFAULT_CS,
    class_weight: str | None = None,
    show_progress: bool | None = None,
) -> list[FewShotResult]:
    """Linear probes on k-shot and per-class-fraction subsets of the training data.

    For every setting and seed, a :class:`LinearProbe` is fitted on :func:`subsample` of the
    training data, ``C`` chosen on the validation split, and scored on the test split with a
    (cluster, with ``groups``) bootstrap :func:`~dermfm.evaluate.metrics.classification_report`.
    Without a validation split, a stratified :data:`HOLDOUT` share of the training data (drawn
    with the first seed) becomes the validation split for all settings and the subsets are
    drawn from the rest (so ``fraction=1.0`` is all of the rest). A setting whose subset is the
    whole training pool (``fraction=1.0``, or ``k`` above every class size) is fitted once, with
    the first seed.

    Args:
        train_x, val_x, test_x: embeddings (numpy or torch), rows aligned with the labels.
        train_y, val_y, test_y: class indices into ``class_names``.
        class_names: the class names (columns of the scores).
        shots: the ``k`` of the k-shot settings.
        fractions: the per-class fractions.
        seeds: subset seeds (each also seeds the probe's hold-out).
        groups: one id per test row for the cluster bootstrap (e.g. lesion ids).
        n_boot: bootstrap resamples per report.
        Cs: the probe's ``C`` grid.
        show_progress: progress bar (``None``: only on a terminal).

    Returns:
        One :class:`FewShotResult` per fitted probe: k-shot settings first, then fractions.

    Raises:
        ValueError: labels outside ``0..len(class_names)-1``, mismatched lengths, or an invalid
            setting.
    """
    names = list(class_names)
    x = as_matrix(train_x, "train_x", np.float64)
    y = _class_indices(train_y, x.shape[0], len(names), "train_y")
    tx = as_matrix(test_x, "test_x", np.float64)
    ty = _class_indices(test_y, tx.shape[0], len(names), "test_y")
    if not seeds:
        raise ValueError("seeds is empty")
    if (val_x is None) != (val_y is None):
        raise ValueError("pass both val_x and val_y, or neither")
    if val_x is None:
        pool, held = _holdout(y, HOLDOUT, seeds[0])
        vx, vy = x[held], y[held]
    else:
        pool = np.arange(x.shape[0])
        vx = as_matrix(val_x, "val_x", np.float64)
        vy = _class_indices(val_y, vx.shape[0], len(names), "val_y")
    settings: list[tuple[str, dict[str, Any]]] = [(f"shots={k}", {"shots": k}) for k in shots]
    settings += [(f"fraction={f:g}", {"fraction": f}) for f in fractions]
    counts = np.bincount(y[pool], minlength=len(names))

    results: list[FewShotResult] = []
    with progress("few-shot probes", len(settings) * len(seeds), show_progress) as advance:
        for setting, kwargs in settings:
            for i, seed in enumerate(seeds):
                rows = pool[subsample(y[pool], seed=seed, **kwargs)]
                probe = LinearProbe(Cs=Cs, seed=seed, class_weight=class_weight).fit(
                    x[rows], y[rows], vx, vy
                )
                report = classification_report(
                    ty,
                    probe.predict_proba_full(tx, len(names)),
                    names,
                    groups=groups,
                    n_boot=n_boot,
                    seed=seed,
                )
                k = kwargs.get("shots")
                short = tuple(names[c] for c in np.flatnonzero((counts > 0) & (counts < (k or 0))))
                results.append(
                    FewShotResult(
                        setting=setting,
                        shots=k,
                        fraction=kwargs.get("fraction"),
                        seed=seed,
                        n_train=int(rows.shape[0]),
                        C=float(probe.C_),  # type: ignore[arg-type]
                        report=report,
                        short_classes=short,
                    )
                )
                advance(1)
                if rows.shape[0] == pool.shape[0]:
                    advance(len(seeds) - i - 1)
                    break
    return results


def _class_indices(y: Any, n: int, n_classes: int, what: str) -> NDArray[np.intp]:
    arr = _labels(y, n, what)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class indices, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n_classes:
        raise ValueError(
            f"{what} holds class indices in [{arr.min()}, {arr.max()}] but there are "
            f"{n_classes} class names (drop unlabelled rows, e.g. index -1, first)"
        )
    return arr.astype(np.intp)


@dataclass(frozen=True)
class FewShotSummary:
    """The results of one setting aggregated over its seeds.

    Attributes:
        setting: ``"shots=k"`` or ``"fraction=f"``.
        n_seeds: how many probes (seeds) were aggregated.
        n_train: mean number of training examples.
        mean, std, low, high: per metric, the mean, population standard deviation, minimum and
            maximum of the point values over the seeds.
    """

    setting: str
    n_seeds: int
    n_train: float
    mean: dict[str, float]
    std: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping: ``metrics`` maps each name to ``mean``/``std``/``min``/``max``."""
        return {
            "setting": self.setting,
            "n_seeds": self.n_seeds,
            "n_train": self.n_train,
            "metrics": {
                k: {
                    "mean": self.mean[k],
                    "std": self.std[k],
                    "min": self.low[k],
                    "max": self.high[k],
                }
                for k in self.mean
            },
        }


def _by_setting(results: Sequence[FewShotResult]) -> dict[str, list[FewShotResult]]:
    groups: dict[str, list[FewShotResult]] = {}
    for r in results:
        groups.setdefault(r.setting, []).append(r)
    return groups


def summarize_few_shot(results: Sequence[FewShotResult]) -> list[FewShotSummary]:
    """Mean and spread over seeds of every metric, one summary per setting (first-seen order).

    A metric missing from some seed's report (e.g. AUROC undefined) is averaged over the seeds
    that have it.
    """
    out = []
    for setting, runs in _by_setting(results).items():
        values: dict[str, list[float]] = {}
        for r in runs:
            for name, est in r.report.items():
                values.setdefault(name, []).append(est.value)
        arrays = {k: np.asarray(v) for k, v in values.items()}
        out.append(
            FewShotSummary(
                setting=setting,
                n_seeds=len(runs),
                n_train=float(np.mean([r.n_train for r in runs])),
                mean={k: float(v.mean()) for k, v in arrays.items()},
                std={k: float(v.std()) for k, v in arrays.items()},
                low={k: float(v.min()) for k, v in arrays.items()},
                high={k: float(v.max()) for k, v in arrays.items()},
            )
        )
    return out


def few_shot_table(
    results: Sequence[FewShotResult],
    metrics: Sequence[str] = ("balanced_accuracy", "macro_f1", "accuracy"),
) -> str:
    """A Markdown table: one row per setting with ``n_train``, seeds, the chosen ``C`` values and
    each metric, shown as ``value [95% CI]`` for a single seed and ``mean ± std`` over seeds."""
    lines = [
        "| " + " | ".join(["setting", "n_train", "seeds", "C", *metrics]) + " |",
        "|" + "|".join(["---"] * (4 + len(metrics))) + "|",
    ]
    summaries = {s.setting: s for s in summarize_few_shot(results)}
    for setting, runs in _by_setting(results).items():
        summary = summaries[setting]
        cs = ", ".join(f"{c:g}" for c in sorted({r.C for r in runs}))
        cells = []
        for m in metrics:
            if m not in summary.mean:
                cells.append("—")
            elif len(runs) == 1:
                cells.append(str(runs[0].report[m]))
            else:
                cells.append(f"{summary.mean[m]:.3f} ± {summary.std[m]:.3f}")
        row = [setting, f"{summary.n_train:g}", str(len(runs)), cs, *cells]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_few_shot(
    results: Sequence[FewShotResult], path: str | Path, metric: str = "balanced_accuracy"
) -> Path:
    """Plot ``metric`` against k (log scale) and against the class fraction, one panel each.

    The line is the mean over seeds with error bars of one standard deviation across seeds; the
    band spans the mean of the seeds' 95% bootstrap bounds. Written with matplotlib's Agg
    backend; returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("k (examples per class)", [r for r in results if r.shots is not None], "shots"),
        ("fraction of each class", [r for r in results if r.fraction is not None], "fraction"),
    ]
    panels = [p for p in panels if p[1]]
    if not panels:
        raise ValueError("no few-shot results to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (xlabel, runs, attr) in zip(axes[0], panels, strict=True):
        xs, mean, std, low, high = [], [], [], [], []
        for setting_runs in _by_setting(runs).values():
            ests = [r.report[metric] for r in setting_runs if metric in r.report]
            if not ests:
                continue
            xs.append(getattr(setting_runs[0], attr))
            values = np.array([e.value for e in ests])
            mean.append(values.mean())
            std.append(values.std())
            low.append(np.nanmean([e.low for e in ests]))
            high.append(np.nanmean([e.high for e in ests]))
        ax.fill_between(xs, low, high, alpha=0.2, label="mean 95% bootstrap CI")
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label="mean ± sd over seeds")
        if attr == "shots":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
