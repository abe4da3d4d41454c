"""Measure the assistant's safety behaviour on the test splits of ../shared/data.

For every test image of HAM10000, Derm7pt and DermNet NZ (or ``--per-dataset`` of each), one
consultation with the bundled model and the packaged calibration, rules and skin reference:

* malignant cases (melanoma, basal cell and squamous cell carcinoma and their subtypes): share
  flagged urgent (or emergency), and share flagged among those the model ranks high (true
  condition in the top 3: must be 100%);
* benign and non-neoplastic cases: share flagged urgent (the cost of the rules: over-triage);
* every skin photo: share refused as unusable (quality or not-skin);
* scikit-image's sample photos (not skin): share refused.

Writes ``docs/assistant_safety.json`` and prints a table.

    python scripts/measure_assistant_safety.py [--root ../shared/data] [--per-dataset N]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from dermfm.assistant.consult import Assistant
from dermfm.data import read_dataset
from dermfm.knowledge import load_ontology
from dermfm.progress import progress

MALIGNANT_ROOTS = ("melanoma", "basal_cell_carcinoma", "squamous_cell_carcinoma")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--per-dataset", type=int, default=None)
    parser.add_argument("--out", default="docs/assistant_safety.json")
    args = parser.parse_args()
    ontology = load_ontology()
    family = {n.id for r in MALIGNANT_ROOTS for n in [ontology[r], *ontology.descendants(r)]}
    assistant = Assistant()
    results: dict[str, Counter] = {}
    for name in ("ham10000", "derm7pt", "dermnet_nz"):
        records = read_dataset(name, args.root).splits["test"]
        if args.per_dataset:
            records = records[:: max(1, len(records) // args.per_dataset)][: args.per_dataset]
        counts: Counter = Counter()
        with progress(f"{name}", len(records), True) as advance:
            for record in records:
                report = assistant.consult(record.image)
                advance(1)
                counts["images"] += 1
                if report.differential is None:
                    counts["refused"] += 1
                    continue
                urgent = report.triage.level in ("urgent", "emergency")
                if record.label in family:
                    accepted = {record.label, *(n.id for n in ontology.descendants(record.label))}
                    high = any(c.node in accepted for c in report.differential.candidates[:3])
                    counts["malignant"] += 1
                    counts["malignant_urgent"] += urgent
                    counts["malignant_ranked_high"] += high
                    counts["ranked_high_urgent"] += high and urgent
                else:
                    kind = (
                        ontology.attribute(record.label, "malignancy")
                        if (record.label in ontology)
                        else "unknown"
                    )
                    if kind in ("benign", "not_neoplastic"):
                        counts["benign"] += 1
                        counts["benign_urgent"] += urgent
        results[name] = counts
    try:
        import skimage

        photos = sorted((Path(skimage.__file__).parent / "data").glob("*.[pj][np]g"))
        refused = [assistant.consult(p).differential is None for p in photos]
        results["non_skin_photos"] = Counter(images=len(photos), refused=sum(refused))
    except ImportError:
        pass

    def share(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    table = {}
    for name, c in results.items():
        table[name] = {
            **dict(c),
            "refused_rate": share(c["refused"], c["images"]),
            "malignant_urgent_rate": share(c["malignant_urgent"], c["malignant"]),
            "ranked_high_urgent_rate": share(c["ranked_high_urgent"], c["malignant_ranked_high"]),
            "benign_urgent_rate": share(c["benign_urgent"], c["benign"]),
        }
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    for name, row in table.items():
        print(name, json.dumps(row))


if __name__ == "__main__":
    main()
