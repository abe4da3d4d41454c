"""Fit the adapters the bundled model ships, one per label set, and print zero-shot vs adapter.

For each label set, the training sources that label it (``dermfm.data.read_dataset(name,
root)``): the train split fits the adapter, the val split tunes and calibrates it, the test
split is only reported. The bundled model was trained on the train splits, so images held out
of them would be no honest tuning split (the model separates them perfectly): a source without
a val split (Derm7pt today) adds its train and test images only, and a label set none of whose
sources has one is skipped, with the reason printed.
Writes ``<output>/<label set>.safetensors`` (default: the bundled model's ``adapters/`` folder,
where ``adapter=True`` / the CLI's default finds them) and prints a table of val and test
metrics, zero-shot and with the adapter (also stored in each file's header).

    .venv/bin/python scripts/build_bundled_adapters.py                      # all label sets
    .venv/bin/python scripts/build_bundled_adapters.py --label-set pad6 --output /tmp/adapters

Run it after the bundled weights change: an adapter fitted for other weights is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dermfm.adapters import SHIPPED_FOLDER, SUFFIX, fit_adapter, metrics_rows
from dermfm.data import DatasetRecords, read_dataset
from dermfm.models import bundled, load_model

#: Label set -> the training sources whose labels it holds (the assistant's: all of them).
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "ham7": ("ham10000",),
    "pad6": ("pad_ufes20",),
    "f17k21": ("fitzpatrick17k_21",),
    "sd198": ("sd198_27",),
    "dermnet": ("dermnet_nz",),
    "derm7pt": ("derm7pt",),
    "assistant": (
        "ham10000",
        "derm7pt",
        "dermnet_nz",
        "fitzpatrick17k_21",
        "pad_ufes20",
        "sd198_27",
    ),
}
METRICS = ("accuracy", "balanced_accuracy", "top5_accuracy", "macro_auroc", "log_loss", "ece")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data", help="folder of the sources")
    parser.add_argument(
        "--label-set",
        action="append",
        choices=sorted(LABEL_SETS),
        help="fit only this label set (repeatable; default: all)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=bundled.weights_dir() / SHIPPED_FOLDER,
        help="folder for the adapter files (default: the bundled model's)",
    )
    parser.add_argument("--max-per-class", type=int, help="fit on at most this many per class")
    parser.add_argument("--cache-shots", type=int, default=16)
    parser.add_argument("--summary", type=Path, help="also write every adapter's summary (JSON)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args()

    chosen = args.label_set or list(LABEL_SETS)
    targets = {name: args.output / f"{name}{SUFFIX}" for name in chosen}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not args.overwrite:
        print(f"exists (pass --overwrite): {', '.join(existing)}", file=sys.stderr)
        return 2
    model = load_model("dermfm-bundled")
    read: dict[str, DatasetRecords] = {}
    table = Table(
        "label set",
        "split",
        "n",
        "scores",
        *METRICS,
        title="Bundled adapters: zero-shot vs adapter",
    )
    summaries, skipped, written = {}, {}, []
    for name in chosen:
        train, val, test, described = [], [], [], []
        for source in LABEL_SETS[name]:
            if source not in read:
                read[source] = read_dataset(source, args.root)
            splits = {k: read[source].splits.get(k, []) for k in ("train", "val", "test")}
            train, val, test = train + splits["train"], val + splits["val"], test + splits["test"]
            described.append(
                f"{source}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items() if v)
            )
        if not val:
            skipped[name] = (
                f"no validation split in {', '.join(LABEL_SETS[name])}; images held out of the "
                "training split were seen by the bundled model in training"
            )
            continue
        adapter = fit_adapter(
            model,
            train,
            val,
            name,
            test,
            cache_shots=args.cache_shots,
            max_per_class=args.max_per_class,
            fitted_on="; ".join(described) + " (train fits, val tunes, test reports)",
            show_progress=True,
        )
        args.output.mkdir(parents=True, exist_ok=True)
        written.append(adapter.save(targets[name], overwrite=args.overwrite))
        written[-1].chmod(0o644)  # package data: readable by every user of an installation
        summaries[name] = adapter.to_dict()
        for split, kind, n, found in metrics_rows(adapter):
            cells = [f"{found[k]:.3f}" if k in found else "" for k in METRICS]
            table.add_row(name, split, str(n), kind, *cells)
        table.add_section()
    Console(width=160).print(table)
    print(f"written: {', '.join(map(str, written)) or 'none'}")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    if args.summary:
        args.summary.write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
