"""Training curves from a run's ``metrics.csv`` (written next to it as a PNG)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path


def plot_metrics(metrics_csv: str | Path, out: str | Path | None = None) -> Path:
    """Plot the training loss (smoothed) and every validation metric against the step.

    Args:
        metrics_csv: a run's long-format ``metrics.csv`` (step, epoch, name, value).
        out: the PNG to write (default: ``training_curves.png`` beside the CSV).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_csv = Path(metrics_csv)
    out = Path(out) if out else metrics_csv.with_name("training_curves.png")
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with metrics_csv.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            series[row["name"]].append((int(row["step"]), float(row["value"])))
    validation = sorted(n for n in series if n.startswith("val/"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    loss = sorted(series.get("train/total", []))
    if loss:
        steps, values = zip(*loss, strict=True)
        window = max(1, len(values) // 50)
        smooth = [
            sum(values[max(0, i - window + 1) : i + 1])
            / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        left.plot(steps, values, alpha=0.25, label="loss")
        left.plot(steps, smooth, label=f"loss (mean of {window} steps)")
        left.set_xlabel("optimiser step")
        left.set_title("training loss")
        left.legend()
    for name in validation:
        steps, values = zip(*sorted(series[name]), strict=True)
        right.plot(steps, values, marker="o", label=name.removeprefix("val/"))
    right.set_xlabel("optimiser step")
    right.set_title("zero-shot validation (val split)")
    right.set_ylim(0, 1)
    if validation:
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
