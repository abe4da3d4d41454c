"""What masked latent modelling changes: the bundled recipe on a short schedule, with and
without the extra objective, same seed and data; prints the last validation metrics of each.

    .venv/bin/python scripts/ablate_masked_latent.py [--epochs 3] [--samples 1536]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]


def last_validation(run: Path) -> dict[str, float]:
    """The validation metrics of the last epoch in a run's ``metrics.csv``."""
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["name"].startswith("val/")]
    last = max(int(r["step"]) for r in rows)
    return {r["name"]: float(r["value"]) for r in rows if int(r["step"]) == last}


def main() -> int:
    """Run both arms and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1536, help="samples per epoch")
    parser.add_argument("--weight", type=float, default=1.0, help="masked latent loss weight")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "ablation-mlm")
    args = parser.parse_args()
    arms = {"contrastive only": 0.0, f"+ masked latent (w={args.weight})": args.weight}
    results = {}
    for i, (name, weight) in enumerate(arms.items()):
        run = args.output / f"arm{i}"
        command = [
            str(ROOT / ".venv" / "bin" / "dermfm"), "train", "bundled",
            "--set", f"run.output={run}",
            "--set", f"optim.epochs={args.epochs}",
            "--set", f"data.samples_per_epoch={args.samples}",
            "--set", f"loss.masked_latent_weight={weight}",
            "--set", "run.progress=false",
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=ROOT)
        results[name] = last_validation(run)
    table = Table("metric", *arms)
    for metric in results[next(iter(arms))]:
        table.add_row(metric, *(f"{results[a].get(metric, float('nan')):.3f}" for a in arms))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
