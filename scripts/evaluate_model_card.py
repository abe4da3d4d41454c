"""Measure the figures of a model card on dermfm's held-out splits of ../shared/data.

Zero-shot through text prompts (no classifier head): HAM10000 test split (7 classes), DermNet NZ
test split (the 99 conditions with 20 or more images), Derm7pt test split (melanoma vs rest and
the 7-point criteria). 95% cluster-bootstrap intervals (clusters: lesion / photo).

    .venv/bin/python scripts/evaluate_model_card.py [--model NAME_OR_PATH] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from dermfm import load_model
from dermfm.data import read_source
from dermfm.evaluate import Estimate, estimates_table
from dermfm.evaluate.tasks import (
    EmbeddedSplit,
    concept_aurocs,
    condition_vs_rest_auroc,
    diagnosis_report,
    embed_records,
)

DERM7PT_CONCEPTS = (
    "atypical_pigment_network",
    "typical_pigment_network",
    "irregular_streaks",
    "regular_streaks",
    "irregular_pigmentation",
    "regular_pigmentation",
    "regression_structures",
    "irregular_dots_and_globules",
    "regular_dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
)


def main() -> int:
    """Evaluate and print Markdown tables; optionally write the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled model")
    parser.add_argument("--root", default="../shared/data", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    console = Console()
    model = load_model(args.model)
    splits: dict[str, EmbeddedSplit] = {}
    for source in ("ham10000", "dermnet_nz", "derm7pt"):
        records = [r for r in read_source(source, args.root) if r.split == args.split]
        console.print(f"embedding {len(records)} {source} {args.split} images")
        splits[source] = embed_records(model, records)
        for error in splits[source].failed:
            console.print(f"[red]skipped[/red] {error}")
    rows: dict[str, dict[str, Estimate]] = {
        "HAM10000 (ham7)": diagnosis_report(model, splits["ham10000"], "ham7", n_boot=args.n_boot),
        "DermNet NZ (99 conditions)": diagnosis_report(
            model, splits["dermnet_nz"], "dermnet", n_boot=args.n_boot
        ),
        "Derm7pt (15 diagnoses)": {
            "melanoma_auroc": condition_vs_rest_auroc(
                model, splits["derm7pt"], "derm7pt", "melanoma", n_boot=args.n_boot
            )
        },
    }
    concepts = concept_aurocs(model, splits["derm7pt"], DERM7PT_CONCEPTS, n_boot=args.n_boot)
    console.print(estimates_table(rows))
    console.print(estimates_table({"Derm7pt concept AUROC": concepts}))
    sizes = {k: len(v.records) for k, v in splits.items()}
    console.print(f"images per split: {sizes}")
    if args.out:
        payload = {
            "model": model.card.to_dict(),
            "split": args.split,
            "images": sizes,
            "results": {k: {m: e.to_dict() for m, e in v.items()} for k, v in rows.items()},
            "derm7pt_concepts": {k: e.to_dict() for k, e in concepts.items()},
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
