"""Figures of an evaluation report: confusion matrix and ROC curves (matplotlib, Agg).

Reliability diagrams live with calibration (:func:`dermfm.evaluate.calibration.plot_reliability`),
per-group bars with fairness and few-shot curves with the probe, so each figure sits next to
the numbers it draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike


def _figure(width: float, height: float):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height))


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts: rows are true classes, columns predictions."""
    t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} rows but y_pred has {p.shape[0]}")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (t, p), 1)
    return matrix


def plot_confusion(
    matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str
) -> Path:
    """Row-normalised confusion matrix (recall on the diagonal) with counts, saved as PNG.

    Large label sets (more than 30 classes) are drawn without per-cell annotations.
    """
    n = len(class_names)
    plt, fig, ax = _figure(max(5.0, 0.45 * n + 2), max(4.0, 0.4 * n + 1.5))
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path, title: str
) -> Path:
    """ROC curves (``name -> (truth 0/1, score)``), each labelled with its AUROC, saved as PNG.

    Curves whose truth holds a single class are skipped.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt, fig, ax = _figure(5.5, 5.0)
    for name, (truth, score) in curves.items():
        t = np.asarray(truth)
        if len(np.unique(t)) < 2:
            continue
        fpr, tpr, _ = roc_curve(t, np.asarray(score))
        ax.plot(fpr, tpr, lw=1.4, label=f"{name} (AUROC {roc_auc_score(t, score):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
