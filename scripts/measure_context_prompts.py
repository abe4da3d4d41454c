"""Does telling the assistant the patient's age, sex and body site help its differential?

On HAM10000 test images (``--n``, spread over the classes), each image is consulted twice with
the bundled model: from the image alone, and with the age, sex and body site recorded in
HAM10000's metadata as patient details (the context prompts of ``consult.yaml``). Reports top-1
and top-3 accuracy of both, with a paired bootstrap interval of the difference (95%, lesion-level
clusters). Writes ``docs/context_prompts.json``.

    python scripts/measure_context_prompts.py [--n 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dermfm.assistant.consult import Assistant
from dermfm.assistant.report import PatientDetails
from dermfm.data import read_dataset
from dermfm.evaluate.metrics import paired_bootstrap
from dermfm.progress import progress


def _accuracy(truth: np.ndarray, hit: np.ndarray) -> float:
    return float(np.mean(hit == truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", default="docs/context_prompts.json")
    args = parser.parse_args()
    records = [
        r
        for r in read_dataset("ham10000", args.root).splits["test"]
        if r.metadata.get("age")
        and r.metadata.get("sex") in ("female", "male")
        and r.metadata.get("body_site") not in (None, "", "unknown")
    ]
    by_label: dict[str, list] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    per_class = max(1, args.n // len(by_label))
    chosen = [r for group in by_label.values() for r in group[:per_class]]
    assistant = Assistant()
    hits = {"image": [], "context": []}
    with progress("Consulting", len(chosen), True) as advance:
        for r in chosen:
            plain = assistant.consult(r.image)
            told = assistant.consult(
                r.image,
                patient=PatientDetails(
                    age=int(float(r.metadata["age"])),
                    sex=r.metadata["sex"],
                    site=r.metadata["body_site"],
                ),
            )
            for key, report in (("image", plain), ("context", told)):
                nodes = (
                    [c.node for c in report.differential.candidates]
                    if (report.differential)
                    else []
                )
                hits[key].append((nodes[:1] == [r.label], r.label in nodes[:3]))
            advance(1)
    groups = [r.group for r in chosen]
    out = {"n": len(chosen), "per_class": per_class}
    for k, name in ((0, "top1"), (1, "top3")):
        a = np.array([h[k] for h in hits["image"]], float)
        b = np.array([h[k] for h in hits["context"]], float)
        cmp = paired_bootstrap(
            _accuracy, np.ones(len(a)), a, b, groups=groups, n_boot=1000, seed=0, name=name
        )
        out[name] = {
            "image_only": float(a.mean()),
            "with_context": float(b.mean()),
            "difference": cmp.to_dict(),
        }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
