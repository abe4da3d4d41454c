"""Images/second of dermfm's embedding pipeline vs plain open_clip loops, same model and images.

dermfm's pipeline (``DermModel.embed_images``) decodes in a thread pool one batch ahead of the
model and batches under ``torch.inference_mode``. Like is compared with like: ``dermfm fp32``
decodes at full resolution exactly as the references do; ``dermfm fast decode`` (the opt-in
``fast_decode=True``: large JPEGs decoded at a reduced DCT scale, not bit-identical to the
reference) is a separate column with its own ratio. The references, measured in the same run on
the same weights and files:

* ``open_clip per-image``: the open_clip README loop, ``preprocess(Image.open(p)).unsqueeze(0)``
  then ``model.encode_image`` under ``torch.no_grad``, one image at a time;
* ``open_clip batched``: the same, but batches of ``--batch-size`` decoded sequentially.

``dermfm bf16`` is the same pipeline with ``precision="bf16"`` weights (opt-in; embeddings within
about 1e-2 of fp32), for CPUs with bf16 units.

Two image sets: real images from ../shared/data at their stored size (200-384 px), and the same
images re-encoded at camera size (3000 x 2250 JPEG, an upscale standing in for phone photos).
Every figure is the best of ``--repeats`` runs after an untimed one, so the files are in the
operating system's page cache: cache-warm throughput, not disk throughput.

    python benchmarks/embed_throughput.py [--arch ViT-B-32] [--images 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_images(n: int) -> list[Path]:
    """``n`` real images spread over HAM10000, Derm7pt and DermNet."""
    picked: list[Path] = []
    for name in ("ham10000", "derm7pt", "dermnet_nz"):
        with (SHARED / name / "labels.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        step = max(1, len(rows) // (n // 3 + 1))
        picked += [SHARED / name / r["file"] for r in rows[::step][: n // 3 + 1]]
    return picked[:n]


def camera_copies(paths: list[Path], folder: Path) -> list[Path]:
    """The images upscaled to 3000 x 2250 and saved as JPEG (quality 90)."""
    out = []
    for i, p in enumerate(paths):
        target = folder / f"camera_{i:03d}.jpg"
        Image.open(p).convert("RGB").resize((3000, 2250), Image.BICUBIC).save(target, quality=90)
        out.append(target)
    return out


def build_model(arch: str, folder: Path) -> Path:
    """An open_clip folder for ``arch`` with random weights (throughput needs no training)."""
    import open_clip
    from safetensors.torch import save_file

    model_cfg = open_clip.get_model_config(arch)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.manual_seed(0)
    save_file(
        open_clip.create_model(arch).state_dict(), str(folder / "open_clip_model.safetensors")
    )
    return folder


def best_rate(run: Callable[[], int], repeats: int) -> float:
    """Best images/second over ``repeats`` timed runs (after one untimed warm-up)."""
    run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - start))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the real images at {SHARED}")

    import open_clip

    import dermfm

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = build_model(args.arch, tmp_path)
        spec = f"local-dir:{folder}"
        ref_model, _, ref_preprocess = open_clip.create_model_and_transforms(spec)
        ref_model.eval()
        ours = dermfm.load_model(folder)
        ours_bf16 = dermfm.load_model(folder, precision="bf16")
        small = real_images(args.images)
        (tmp_path / "camera").mkdir()
        camera = camera_copies(small, tmp_path / "camera")

        def per_image(paths: list[Path]) -> int:
            with torch.no_grad():
                for p in paths:
                    ref_model.encode_image(ref_preprocess(Image.open(p)).unsqueeze(0))
            return len(paths)

        def batched(paths: list[Path]) -> int:
            with torch.no_grad():
                for i in range(0, len(paths), args.batch_size):
                    chunk = paths[i : i + args.batch_size]
                    ref_model.encode_image(
                        torch.stack([ref_preprocess(Image.open(p).convert("RGB")) for p in chunk])
                    )
            return len(paths)

        def pipeline(model: dermfm.DermModel, paths: list[Path], fast: bool = False) -> int:
            result = model.embed_images(paths, batch_size=args.batch_size, fast_decode=fast)
            assert not result.errors
            return len(result.ok)

        print(
            f"model {args.arch} (random weights), {len(small)} images, batch "
            f"{args.batch_size}, torch threads {torch.get_num_threads()}, best of "
            f"{args.repeats}, page cache warm"
        )
        header = (
            "image set",
            "open_clip per-image",
            "open_clip batched",
            "dermfm fp32",
            "dermfm bf16",
            "dermfm fp32 fast decode",
        )
        rows = []
        for label, paths in (
            ("stored size (200-384 px)", small),
            ("camera size (3000x2250)", camera),
        ):
            rates = [
                best_rate(lambda p=paths, f=f: f(p), args.repeats)
                for f in (
                    per_image,
                    batched,
                    lambda p: pipeline(ours, p),
                    lambda p: pipeline(ours_bf16, p),
                    lambda p: pipeline(ours, p, fast=True),
                )
            ]
            rows.append((label, rates))
        print(
            " | ".join(header)
            + " | fp32 vs per-image | fp32 vs batched | bf16 vs batched | fast vs fp32"
        )
        for label, (a, b, c, d, e) in rows:
            print(
                f"{label} | {a:.1f}/s | {b:.1f}/s | {c:.1f}/s | {d:.1f}/s | {e:.1f}/s | "
                f"{c / a:.2f}x | {c / b:.2f}x | {d / b:.2f}x | {e / c:.2f}x"
            )


if __name__ == "__main__":
    main()
