"""Compare model folders on the bundled recipe's validation splits, in one run.

Each model is scored the way training validates (zero-shot, the recipe's last stage's label sets
and templates, validation records of its sources: :func:`dermfm.train.validation_metrics`), so a
new stage is chosen against the shipped weights on validation only, never on test.

    python scripts/compare_validation.py MODEL [MODEL ...] [--root ../shared/data]
        [--out docs/model_card_stage5_validation.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dermfm import load_model
from dermfm.data import read_sources
from dermfm.train import load_stages, validation_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="model folders or registry names")
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--recipe", default="bundled")
    parser.add_argument("--out", type=Path, help="write the metrics here as JSON")
    args = parser.parse_args()
    config = load_stages(args.recipe)[-1][1]
    records = [
        r for r in read_sources(args.root, config.data.sources) if r.split == config.data.val_split
    ]
    results = {}
    for name in args.models:
        metrics = validation_metrics(load_model(name), records, config.validation)
        results[name] = {k: round(v, 4) for k, v in metrics.items()}
        print(json.dumps({name: results[name]}), flush=True)
    names = list(results)
    print("\n| metric | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for metric in results[names[0]]:
        print(f"| {metric} | " + " | ".join(f"{results[n].get(metric, '')}" for n in names) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
