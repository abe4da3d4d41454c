"""What the fast (reduced-scale JPEG) decode costs in accuracy, paired against the default decode.

dermfm decodes images at full resolution by default (the reference: a plain PIL decode), and
decodes camera-size JPEGs at a reduced DCT scale only when asked (``fast_decode=True``,
``dermfm diagnose --fast-decode``). The fast path only changes JPEGs whose shorter side is at
least four times the model input (896 px for the bundled model).

For each source's test split (a seeded sample of ``--per-source`` images) this script:

* counts the stored images the fast path would change (the stored files are 150-384 px, so
  none: on them both decodes give the same embedding, which it checks);
* re-encodes each image at camera size (shorter side ``--side`` px, JPEG quality 92: an upscale
  standing in for phone photos, which the shared data does not hold), embeds it with both
  decodes and compares zero-shot top-1 accuracy on the source's label set with a paired
  cluster bootstrap (:func:`dermfm.evaluate.metrics.paired_bootstrap`), plus the largest and
  mean change of a class probability and how often the top-1 class changes.

Writes ``--out`` (JSON) and prints a Markdown table (the one in docs/benchmarks.md).

    .venv/bin/python scripts/measure_fast_decode.py [--per-source 120] [--side 3000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from dermfm import load_model
from dermfm.data import read_dataset
from dermfm.evaluate.metrics import accuracy, paired_bootstrap
from dermfm.evaluate.tasks import targets
from dermfm.knowledge import load_label_set
from dermfm.zeroshot import ZeroShotClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_model_card import SOURCES


def top1(y: np.ndarray, p: np.ndarray) -> float:
    return accuracy(y, p.argmax(1))


def camera_copy(image: Path, side: int, folder: Path) -> Path:
    """``image`` re-encoded as a JPEG whose shorter side is ``side`` pixels."""
    with Image.open(image) as img:
        rgb = img.convert("RGB")
    scale = side / min(rgb.size)
    big = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.BICUBIC)
    out = folder / f"{len(list(folder.iterdir())):06d}.jpg"
    big.save(out, quality=92)
    return out


def main() -> int:
    """Measure every source and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled model")
    parser.add_argument("--root", default="../shared/data", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-source", type=int, default=120)
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("docs/fast_decode_results.json"))
    args = parser.parse_args()
    console = Console(stderr=True)
    model = load_model(args.model)
    threshold = 4 * model.image_size
    results = {}
    for name, label_set in SOURCES.items():
        records = [r for r in read_dataset(name, args.root).records if r.split == args.split]
        records = random.Random(0).sample(records, min(args.per_source, len(records)))
        labels = load_label_set(label_set)
        y = targets(records, labels)
        keep = y >= 0
        records = [r for r, k in zip(records, keep, strict=True) if k]
        y = y[keep]
        stored = [Path(r.image) for r in records]
        affected = 0
        for path in stored:
            with Image.open(path) as img:
                affected += img.format == "JPEG" and min(img.size) >= threshold
        clf = ZeroShotClassifier(model, labels=labels, adapter=False)
        same = model.embed_images(stored).vectors
        same_fast = model.embed_images(stored, fast_decode=True).vectors
        with tempfile.TemporaryDirectory() as tmp:
            console.print(f"{name}: {len(records)} images, re-encoding at {args.side} px")
            big = [camera_copy(p, args.side, Path(tmp)) for p in stored]
            exact = clf.predict_proba(model.embed_images(big, show_progress=True).vectors)
            fast = clf.predict_proba(
                model.embed_images(big, fast_decode=True, show_progress=True).vectors
            )
        exact, fast = exact.numpy(), fast.numpy()
        compared = paired_bootstrap(
            top1,
            y,
            exact,
            fast,
            groups=[r.key for r in records],
            n_boot=args.n_boot,
            name="top1_accuracy",
        )
        change = np.abs(fast - exact)
        results[name] = {
            "images": len(records),
            "stored_images_changed_by_fast_decode": int(affected),
            "stored_max_embedding_difference": float((same - same_fast).abs().max()),
            "camera_size": compared.to_dict(),
            "camera_max_probability_change": float(change.max()),
            "camera_mean_probability_change": float(change.mean()),
            "camera_top1_changed": float(np.mean(exact.argmax(1) != fast.argmax(1))),
        }
        console.print(f"  {compared}")
    lines = [
        "| source | images | stored images changed | camera-size top-1, full decode | "
        "fast decode | fast - full [95% CI] | p | top-1 class changed | max / mean prob. change |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c = r["camera_size"]
        d = c["difference"]
        lines.append(
            f"| {name} | {r['images']} | {r['stored_images_changed_by_fast_decode']} | "
            f"{c['value_a']:.3f} | {c['value_b']:.3f} | {d['value']:+.3f} "
            f"[{d['low']:+.3f}, {d['high']:+.3f}] | {c['p_value']:.2f} | "
            f"{r['camera_top1_changed']:.1%} | {r['camera_max_probability_change']:.3f} / "
            f"{r['camera_mean_probability_change']:.4f} |"
        )
    print("\n".join(lines))
    payload = {
        "model": model.card.to_dict(),
        "split": args.split,
        "camera_side": args.side,
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
