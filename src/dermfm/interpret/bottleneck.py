"""Concept-bottleneck classifiers: sparse logistic regression on sparse-autoencoder activations.

A :class:`ConceptBottleneck` predicts the class from an image's SAE activations rather than from
its raw embedding, with an L1 penalty so that each class rests on a few latents; with the
latents' names (latent naming) every class gets a readable explanation (:meth:`explain`).
:func:`compare_with_probe` measures what the bottleneck costs against a linear probe on the
embeddings of the same test images, with paired bootstrap intervals.

**Model.** One-vs-rest L1-penalised logistic regression, liblinear's coordinate descent on a
sparse matrix (scikit-learn ``LogisticRegression(l1_ratio=1, solver="liblinear")`` per class).
On SAE activations (thousands of latents, a few dozen active per image) this is one to two
orders of magnitude faster than multinomial SAGA and converges reliably at every ``C``; it also
gives each class its own sparse weight vector, which is what an explanation lists. For two
classes there is one model, and class 0's weights are the negatives of class 1's.

**Scaling.** Each latent is divided by its largest absolute activation on the training rows
(scikit-learn's ``MaxAbsScaler``): activations stay in ``[0, 1]`` and zeros stay zeros, so the
matrix stays sparse and the penalty treats latents alike. Standardising would centre the
activations (dense matrix, and "not firing" no longer zero). A weight is thus the change in the
class's log-odds as its latent goes from silent to its largest training activation. A latent
never active in training keeps weight 0.

``C`` is chosen as for :class:`~dermfm.evaluate.probe.LinearProbe` (this class extends it): best
balanced accuracy on the validation split, or on a stratified hold-out of the training data
that is then refitted on all of it; ties go to the smaller ``C``, the sparser model.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dermfm.evaluate.metrics import (
    Estimate,
    PairedComparison,
    accuracy,
    balanced_accuracy,
    classification_report,
    estimates_table,
    paired_bootstrap,
)
from dermfm.evaluate.probe import LinearProbe
from dermfm.evaluate.retrieval import as_matrix
from dermfm.interpret.artifacts import zero_latents

__all__ = [
    "DEFAULT_CS",
    "INTERCEPT_SCALING",
    "BottleneckComparison",
    "ConceptBottleneck",
    "LatentWeight",
    "compare_with_probe",
]

#: Grid of inverse regularisation strengths: half-decade steps, since under an L1 penalty ``C``
#: sets how many latents a class uses (at ``0.01`` usually none, at ``100`` most active ones).
DEFAULT_CS: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)

#: liblinear penalises the intercept as a feature of this constant value; a large value keeps
#: the intercept nearly unpenalised, so a sparse model still predicts the class balance.
INTERCEPT_SCALING = 10.0


class LatentWeight(NamedTuple):
    """One latent of a class's explanation: its id, weight and names (may be empty)."""

    latent: int
    weight: float
    names: list[str]


class ConceptBottleneck(LinearProbe):
    """Sparse (L1) logistic regression on SAE activations with ``C`` chosen on a validation
    split; see the module docstring for the model and the scaling.

    Attributes (after ``fit``, besides :class:`~dermfm.evaluate.probe.LinearProbe`'s
    ``classes_``, ``C_`` and ``val_scores_``):
        scale_: each latent's largest absolute training activation (1 for silent latents).
        weights_: ``(n_classes, n_latents)`` weights on the scaled activations, rows in
            ``classes_`` order.
        n_used_latents_: latents with a non-zero weight for some class.
    """

    def __init__(
        self,
        Cs: Sequence[float] = DEFAULT_CS,
        max_iter: int = 1000,
        seed: int = 0,
        class_weight: str | None = None,
        zero_latents: Iterable[int] = (),
    ) -> None:
        """Configure the classifier.

        Args:
            Cs: candidate inverse regularisation strengths (positive; smaller is sparser).
            max_iter: liblinear iteration limit per fit.
            seed: seed of the hold-out split and of liblinear's coordinate order.
            class_weight: ``None`` or ``"balanced"`` (as for ``LinearProbe``).
            zero_latents: latents whose activations are set to zero at fit and predict (e.g.
                artifact latents: the classifier can then not use them).
        """
        super().__init__(Cs=Cs, max_iter=max_iter, seed=seed, class_weight=class_weight)
        ids = sorted({int(i) for i in zero_latents})
        if ids and ids[0] < 0:
            raise ValueError(f"zero_latents must be latent ids >= 0, got {ids}")
        self.zero_latents = tuple(ids)
        self.scale_: NDArray[np.float64] | None = None

    def _train(self, x: NDArray[Any], y: NDArray[Any], c: float) -> Any:
        from scipy import sparse
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        model = LogisticRegression(
            C=c,
            l1_ratio=1.0,
            solver="liblinear",
            intercept_scaling=INTERCEPT_SCALING,
            max_iter=self.max_iter,
            class_weight=self.class_weight,
            random_state=self.seed,
        )
        return OneVsRestClassifier(model).fit(sparse.csr_matrix(x), y)

    def _prepare(self, acts: Any, what: str) -> NDArray[np.float64]:
        """Activations as the fitted model sees them: artifact latents zeroed, scaled."""
        assert self.scale_ is not None  # set at the start of fit
        x = as_matrix(acts, what, np.float64)
        if x.shape[1] != self.scale_.shape[0]:
            raise ValueError(
                f"{what} has {x.shape[1]} latents but the bottleneck was fitted on "
                f"{self.scale_.shape[0]}"
            )
        return np.asarray(zero_latents(x, self.zero_latents)) / self.scale_

    def fit(
        self,
        train_acts: Any,
        train_y: ArrayLike,
        val_acts: Any | None = None,
        val_y: ArrayLike | None = None,
    ) -> ConceptBottleneck:
        """Choose ``C`` on the validation split (or a hold-out of ``train``) and fit.

        Args:
            train_acts: ``(N, n_latents)`` SAE activations (numpy or torch).
            train_y: ``N`` labels of any sortable type (class indices, names...).
            val_acts: ``(M, n_latents)`` validation activations; pass both or neither of
                ``val_acts``/``val_y``.
            val_y: ``M`` validation labels.

        Raises:
            ValueError: fewer than two classes, mismatched lengths or latent counts, NaN values,
                a zeroed latent id out of range, or too few examples to hold any out.
        """
        x = as_matrix(train_acts, "train_acts", np.float64)
        x = np.asarray(zero_latents(x, self.zero_latents))
        scale = np.abs(x).max(axis=0)
        scale[scale == 0] = 1.0
        self.scale_ = scale
        vx = None if val_acts is None else self._prepare(val_acts, "val_acts")
        super().fit(x / scale, train_y, vx, val_y)
        return self

    def _features(self, x: Any) -> NDArray[np.float64]:
        if self._model is None:
            raise ValueError("this ConceptBottleneck is not fitted yet; call fit() first")
        return self._prepare(x, "activations")

    @property
    def weights_(self) -> NDArray[np.float64]:
        """``(n_classes, n_latents)`` weights on the scaled activations (``classes_`` order)."""
        if self._model is None:
            raise ValueError("this ConceptBottleneck is not fitted yet; call fit() first")
        coef = np.vstack([e.coef_ for e in self._model.estimators_]).astype(np.float64)
        return np.vstack([-coef, coef]) if coef.shape[0] == 1 else coef

    @property
    def n_used_latents_(self) -> int:
        """Latents with a non-zero weight for at least one class."""
        return int(np.count_nonzero(np.any(self.weights_ != 0, axis=0)))

    def _class_row(self, cls: Hashable) -> int:
        classes = self.classes_
        assert classes is not None  # fitted (weights_ checked)
        values = classes.tolist()
        if cls in values:
            return values.index(cls)
        positional = not np.issubdtype(classes.dtype, np.integer)
        if positional and isinstance(cls, int | np.integer) and 0 <= int(cls) < len(values):
            return int(cls)
        raise ValueError(f"unknown class {cls!r}; the classes are {values}")

    def explain(
        self,
        cls: Hashable,
        names: Mapping[int, Sequence[str]] | None = None,
        top: int = 10,
    ) -> list[LatentWeight]:
        """The latents a class rests on: non-zero weights, largest magnitude first.

        Args:
            cls: a class label (a value of ``classes_``), or, when the labels are not integers,
                a position in ``classes_``.
            names: latent id -> its top terms (e.g. from latent naming); latents missing from
                it get no names.
            top: latents listed at most.

        Returns:
            ``(latent, weight, names)`` tuples; a positive weight is evidence for the class.

        Raises:
            ValueError: not fitted, an unknown class, or ``top < 1``.
        """
        if top < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        weights = self.weights_[self._class_row(cls)]
        used = np.flatnonzero(weights)
        order = used[np.lexsort((used, -np.abs(weights[used])))][:top]
        table = names or {}
        return [LatentWeight(int(j), float(weights[j]), list(table.get(int(j), ()))) for j in order]


@dataclass(frozen=True)
class BottleneckComparison:
    """A concept bottleneck and a linear probe scored on the same test images.

    Attributes:
        probe: the probe's :func:`~dermfm.evaluate.metrics.classification_report`.
        bottleneck: the bottleneck's report (same bootstrap resamples).
        paired: ``accuracy`` and ``balanced_accuracy`` as
            :class:`~dermfm.evaluate.metrics.PairedComparison` with ``a`` the probe and ``b``
            the bottleneck: ``difference`` is bottleneck minus probe.
        n_used_latents: latents the bottleneck uses.
    """

    probe: dict[str, Estimate]
    bottleneck: dict[str, Estimate]
    paired: dict[str, PairedComparison]
    n_used_latents: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (Estimates and comparisons as dicts)."""
        return {
            "probe": {k: v.to_dict() for k, v in self.probe.items()},
            "bottleneck": {k: v.to_dict() for k, v in self.bottleneck.items()},
            "paired": {k: v.to_dict() for k, v in self.paired.items()},
            "n_used_latents": self.n_used_latents,
        }

    def to_markdown(self) -> str:
        """Both reports as a table, then the paired differences (bottleneck minus probe)."""
        table = estimates_table(
            {
                "linear probe (embeddings)": self.probe,
                f"concept bottleneck ({self.n_used_latents} latents)": self.bottleneck,
            }
        )
        lines = [
            f"- {c.name}: bottleneck - probe {c.difference}, p = {c.p_value:.3g}"
            for c in self.paired.values()
        ]
        return table + "\n" + "\n".join(lines) + "\n"


def compare_with_probe(
    bottleneck: ConceptBottleneck,
    probe: LinearProbe,
    test_acts: Any,
    test_emb: Any,
    test_y: ArrayLike,
    class_names: Sequence[str],
    *,
    groups: ArrayLike | Sequence[Hashable] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> BottleneckComparison:
    """Score a fitted bottleneck and a fitted linear probe on the same test images.

    Both models must be fitted on class indices ``0..len(class_names)-1`` (a class missing from
    a model's training labels gets probability 0). Each gets a
    :func:`~dermfm.evaluate.metrics.classification_report`; accuracy and balanced accuracy are
    also compared by :func:`~dermfm.evaluate.metrics.paired_bootstrap` on the arg-max
    predictions (the reports' predictions), so their differences equal the differences of the
    reports' values.

    Args:
        bottleneck: fitted on SAE activations.
        probe: fitted on the embeddings.
        test_acts: ``(N, n_latents)`` SAE activations of the test images.
        test_emb: ``(N, d)`` embeddings of the same images, in the same order.
        test_y: ``N`` class indices.
        class_names: the names of the classes, in index order.
        groups: one id per row (e.g. HAM10000 lesion ids) for a cluster bootstrap.
        n_boot: bootstrap resamples.
        seed: bootstrap seed (shared by all the intervals).

    Raises:
        ValueError: the activations and embeddings differ in rows, or bad labels.
    """
    n_classes = len(class_names)
    bottleneck_scores = bottleneck.predict_proba_full(test_acts, n_classes)
    probe_scores = probe.predict_proba_full(test_emb, n_classes)
    if bottleneck_scores.shape[0] != probe_scores.shape[0]:
        raise ValueError(
            f"test_acts has {bottleneck_scores.shape[0]} rows but test_emb "
            f"{probe_scores.shape[0]}: they must be the same images"
        )
    y = np.asarray(test_y)

    def report(scores: NDArray[np.float64]) -> dict[str, Estimate]:
        return classification_report(
            y, scores, class_names, groups=groups, n_boot=n_boot, seed=seed
        )

    probe_pred, bottleneck_pred = probe_scores.argmax(axis=1), bottleneck_scores.argmax(axis=1)
    paired = {
        name: paired_bootstrap(
            metric,
            y,
            probe_pred,
            bottleneck_pred,
            groups=groups,
            n_boot=n_boot,
            seed=seed,
            name=name,
        )
        for name, metric in (("accuracy", accuracy), ("balanced_accuracy", balanced_accuracy))
    }
    return BottleneckComparison(
        probe=report(probe_scores),
        bottleneck=report(bottleneck_scores),
        paired=paired,
        n_used_latents=bottleneck.n_used_latents_,
    )
