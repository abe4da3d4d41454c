"""Evaluation of dermfm models: the benchmark harness (``dermfm eval``).

* :mod:`~dermfm.evaluate.metrics`: classification metrics, bootstrap intervals (row or
  cluster), paired bootstrap test between two models.
* :mod:`~dermfm.evaluate.calibration`: ECE, reliability curves, temperature scaling.
* :mod:`~dermfm.evaluate.fairness`: every metric per subgroup with the gap to the best group.
* :mod:`~dermfm.evaluate.probe`: linear probes and few-shot curves on frozen embeddings.
* :mod:`~dermfm.evaluate.retrieval`: image<->text recall@k and median rank.
* :mod:`~dermfm.evaluate.leakage`: near-duplicates between evaluation and training images.
* :mod:`~dermfm.evaluate.tasks`: embed a split once (content-keyed cache) and score tasks.
* :mod:`~dermfm.evaluate.config`, :mod:`~dermfm.evaluate.runner`,
  :mod:`~dermfm.evaluate.report`: run files of models x datasets x tasks, their execution and
  the JSON / Markdown / HTML report.

Datasets are read by :func:`dermfm.data.read_dataset` from YAML specs (dataset and task kept
apart, as in CLIP_benchmark).
"""

from __future__ import annotations

from typing import Any

from dermfm.evaluate.calibration import (
    ReliabilityCurve,
    TemperatureScaler,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    plot_reliability,
    reliability_curve,
    softmax,
)
from dermfm.evaluate.config import (
    DatasetRef,
    RunConfig,
    RunConfigError,
    RunOptions,
    load_run_config,
    run_config_from_dict,
)
from dermfm.evaluate.fairness import SubgroupTable, age_band, subgroup_table, subgroup_values
from dermfm.evaluate.leakage import (
    DuplicatePair,
    LeakageReport,
    audit_leakage,
    hamming,
    perceptual_hash,
)
from dermfm.evaluate.metrics import (
    Estimate,
    PairedComparison,
    accuracy,
    auroc,
    balanced_accuracy,
    bootstrap,
    classification_report,
    estimates_table,
    macro_auroc,
    macro_f1,
    ovr_aurocs,
    paired_bootstrap,
    top_k_accuracy,
    weighted_f1,
)
from dermfm.evaluate.probe import (
    FewShotResult,
    LinearProbe,
    few_shot_curve,
    plot_few_shot,
    subsample,
    summarize_few_shot,
)
from dermfm.evaluate.retrieval import pairs_from_texts, retrieval_metrics

__all__ = [
    "DatasetRef",
    "DuplicatePair",
    "Estimate",
    "FewShotResult",
    "LeakageReport",
    "LinearProbe",
    "PairedComparison",
    "ReliabilityCurve",
    "RunConfig",
    "RunConfigError",
    "RunOptions",
    "SubgroupTable",
    "TemperatureScaler",
    "accuracy",
    "age_band",
    "audit_leakage",
    "auroc",
    "balanced_accuracy",
    "bootstrap",
    "brier_score",
    "classification_report",
    "estimates_table",
    "expected_calibration_error",
    "few_shot_curve",
    "hamming",
    "load_run_config",
    "macro_auroc",
    "macro_f1",
    "negative_log_likelihood",
    "ovr_aurocs",
    "paired_bootstrap",
    "pairs_from_texts",
    "perceptual_hash",
    "plot_few_shot",
    "plot_reliability",
    "reliability_curve",
    "retrieval_metrics",
    "run_benchmark",
    "run_config_from_dict",
    "softmax",
    "subgroup_table",
    "subgroup_values",
    "subsample",
    "summarize_few_shot",
    "top_k_accuracy",
    "weighted_f1",
]


def __getattr__(name: str) -> Any:
    """``run_benchmark`` on first use: the runner pulls in the data pipeline (torchvision),
    which scoring code such as adapters and probes must not pay for at import."""
    if name == "run_benchmark":
        from dermfm.evaluate.runner import run_benchmark

        return run_benchmark
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
