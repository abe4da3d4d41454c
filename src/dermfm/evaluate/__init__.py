"""Evaluation of dermfm models: classification metrics with bootstrap confidence intervals.

:mod:`dermfm.evaluate.metrics` holds numpy implementations of accuracy, balanced accuracy,
macro F1, top-k accuracy and (macro) AUROC, a row or cluster (grouped) percentile bootstrap
that turns any of them into an :class:`Estimate`, a bundled :func:`classification_report` and a
Markdown :func:`estimates_table`.
"""

from __future__ import annotations

from dermfm.evaluate.metrics import (
    Estimate,
    accuracy,
    auroc,
    balanced_accuracy,
    bootstrap,
    classification_report,
    estimates_table,
    macro_auroc,
    macro_f1,
    top_k_accuracy,
)

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
