"""Training images/second of dermfm's training loop vs open_clip's own training step.

Same model, batch, images, threads and machine, measured in the same run:

* ``open_clip``: ``open_clip_train.train.train_one_epoch`` itself (open_clip_train ships in the
  open_clip_torch wheel), called exactly as ``open_clip_train/main.py`` sets it up: the model from
  ``create_model_and_transforms(..., output_dict=True)``, its train-mode transform, a map-style
  dataset like ``open_clip_train/data.py::CsvDataset`` (PIL opens each file, the transform and
  the tokenizer run per sample), ``DataLoader(shuffle=True, drop_last=True)``, ``ClipLoss``,
  AdamW with main.py's parameter groups, ``cosine_lr``, fp32, ``accum_freq=1``,
  ``grad_clip_norm=1.0``;
* ``dermfm``: ``Trainer.train_step`` on micro-batches from ``Trainer._micro_batches`` (what
  ``Trainer.fit`` runs), config ``model.init=<the same folder>``, both towers trained,
  ``loss.kind=clip`` without label-based false-negative removal (the same objective as
  ``ClipLoss``), ``data.views=[caption]``, fp32; with ``data.preload_side=<image size>``
  (images decoded once and kept in memory) and without it (decoded from disk per sample, like
  open_clip).

Data loading is inside the timed region on both sides (``num_workers=0``: the main process
decodes). Each loop first runs ``--warmup`` untimed steps; then ``--repeats`` rounds of
``--steps`` timed steps alternate between the loops and each loop keeps its best round, so a
change in background load hits every loop alike. The augmentations differ and are each side's
default: open_clip's train transform is a random resized crop (scale 0.9-1), dermfm's adds
flips, 90-degree rotations and colour jitter (scale 0.5-1), so dermfm does more work per image.

Two caption sets: ``label`` (``"a dermoscopy image of <diagnosis>"``, 7 distinct texts with
HAM10000; dermfm encodes each distinct caption of a batch once, open_clip encodes all of them)
and ``distinct`` (the image id appended, so every caption differs and both encode the whole
batch).

The model is a small random-init open_clip ViT (patch 16, width 192, 4 layers; text width 192,
4 layers; embed dim 128) saved as an hf-hub style folder, so a run fits in a few minutes on two
CPU cores. Images: HAM10000 from ../shared/data when present, else generated 200x150 JPEGs.

    python benchmarks/train_throughput.py [--image-size 96] [--batch-size 32] [--steps 10]
        [--repeats 2] [--threads N] [--captions label|distinct|both] [--no-disk]

``--bundled`` measures instead the bundled model's image tower (EfficientNet-Lite0, the whole
tower trainable, text features cached as when the text tower is frozen) in four settings, fp32
or bf16 autocast x contiguous or channels-last tensors, for a training step (forward, CLIP loss,
backward, AdamW) and for inference (``torch.no_grad`` forward); every rate is printed with its
ratio to fp32 contiguous measured in the same run. The same preprocessed batches feed every
setting, so only the arithmetic differs:

    python benchmarks/train_throughput.py --bundled --image-size 224 --batch-size 32
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
GENERATED_LABELS = ("nevus", "melanoma", "keratosis", "carcinoma", "dermatofibroma")


def build_model(folder: Path, image_size: int) -> Path:
    """A small random-init open_clip CLIP in the hf-hub folder layout (config + safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 128,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 4,
            "width": 192,
            "patch_size": 16,
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 192,
            "heads": 3,
            "layers": 4,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": MEAN, "std": STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    save_file(open_clip.CLIP(**model_cfg).state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


def real_images(n: int) -> list[tuple[Path, str, str]]:
    """``n`` HAM10000 images spread over the file: (path, diagnosis name, image id)."""
    with (SHARED / "ham10000" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, len(rows) // n)
    return [
        (
            SHARED / "ham10000" / r["file"],
            (r.get("diagnosis_name") or r["label"]).split(" (")[0],
            Path(r["file"]).stem,
        )
        for r in rows[::step][:n]
    ]


def generated_images(n: int, folder: Path) -> list[tuple[Path, str, str]]:
    """``n`` generated 200x150 JPEGs (smooth colour fields with noise), cycling over labels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    yy, xx = np.mgrid[0:150, 0:200]
    for i in range(n):
        centre = rng.uniform([40, 30], [160, 120])
        blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / rng.uniform(300, 1500))
        base = rng.uniform(120, 230, size=3)
        pixels = base - blob[..., None] * rng.uniform(40, 120, size=3)
        pixels += rng.normal(0, 8, pixels.shape)
        path = folder / f"gen_{i:04d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        out.append((path, GENERATED_LABELS[i % len(GENERATED_LABELS)], path.stem))
    return out


def captions(images: list[tuple[Path, str, str]], kind: str) -> list[tuple[Path, str]]:
    """(path, caption) pairs: ``label`` captions or ``distinct`` ones (image id appended)."""
    return [
        (p, f"a dermoscopy image of {name}" + (f", image {key}" if kind == "distinct" else ""))
        for p, name, key in images
    ]


# --------------------------------------------------------------------------------- open_clip
class CaptionDataset(Dataset):
    """``open_clip_train/data.py::CsvDataset`` without pandas: PIL open, transform, tokenize."""

    def __init__(self, pairs: list[tuple[Path, str]], transforms: Any, tokenizer: Any) -> None:
        self.images = [str(p) for p, _ in pairs]
        self.captions = [c for _, c in pairs]
        self.transforms = transforms
        self.tokenize = tokenizer

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.transforms(Image.open(str(self.images[idx])))
        texts = self.tokenize([str(self.captions[idx])])[0]
        return images, texts


class DataInfo:
    """``open_clip_train/data.py::DataInfo`` for a plain map-style loader (no sampler epoch)."""

    def __init__(self, dataloader: DataLoader) -> None:
        self.dataloader = dataloader

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: shuffling comes from the loader's own RandomSampler."""


def open_clip_runner(
    folder: Path, pairs: list[tuple[Path, str]], batch_size: int
) -> Callable[[int], int]:
    """``run(steps)``: one call of open_clip's ``train_one_epoch`` over ``steps`` batches."""
    import open_clip
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    spec = f"local-dir:{folder}"
    # as open_clip_train/main.py: output_dict=True, fp32 weights, first transform = train mode
    model, preprocess_train, _ = open_clip.create_model_and_transforms(
        spec, precision="fp32", device="cpu", output_dict=True
    )
    tokenizer = open_clip.get_tokenizer(spec)
    dataset = CaptionDataset(pairs, preprocess_train, tokenizer)

    def exclude(n: str, p: torch.Tensor) -> bool:
        # open_clip_train/main.py's AdamW parameter groups; its defaults for ViTs are betas
        # 0.9/0.98, eps 1e-6, wd 0.2 (dermfm: the same betas and eps, wd 0.05)
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2},
        ],
        lr=5e-4,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loss = open_clip.ClipLoss(cache_labels=True)
    args = SimpleNamespace(
        device="cpu",
        precision="fp32",
        distill=False,
        accum_freq=1,
        skip_scheduler=False,
        horovod=False,
        grad_clip_norm=1.0,
        log_every_n_steps=100,
        batch_size=batch_size,
        world_size=1,
        rank=0,
        local_rank=0,
        wandb=False,
    )
    epoch = 0

    def run(steps: int) -> int:
        nonlocal epoch
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=RandomSampler(dataset, num_samples=steps * batch_size),  # shuffle=True
            num_workers=0,
            drop_last=True,
        )
        loader.num_samples = steps * batch_size  # type: ignore[attr-defined]
        loader.num_batches = len(loader)  # type: ignore[attr-defined]
        scheduler = cosine_lr(optimizer, 5e-4, 100, 1000)
        train_one_epoch(
            model, {"train": DataInfo(loader)}, loss, epoch, optimizer, None, scheduler, None, args
        )
        epoch += 1
        return steps * batch_size

    return run


# ------------------------------------------------------------------------------------ dermfm
def dermfm_runner(
    folder: Path,
    pairs: list[tuple[Path, str]],
    manifest: Path,
    output: Path,
    batch_size: int,
    image_size: int,
    preload: bool,
    threads: int,
) -> Callable[[int], int]:
    """``run(steps)``: ``steps`` calls of ``Trainer.train_step`` on the trainer's own loader."""
    from dermfm.data.manifest import Record, write_manifest
    from dermfm.train.config import TrainConfig
    from dermfm.train.engine import Trainer

    if not manifest.exists():
        write_manifest(
            (Record(image=str(p), texts=(c,), split="train") for p, c in pairs), manifest
        )
    config = TrainConfig.from_dict(
        {
            "model": {"init": str(folder), "freeze_text": False},
            "data": {
                "manifest": str(manifest),
                "views": ["caption"],
                "preload_side": image_size if preload else None,
            },
            "loss": {"kind": "clip", "false_negatives": "none"},
            "optim": {"batch_size": batch_size, "epochs": 1},
            "run": {
                "output": str(output),
                "device": "cpu",
                "precision": "fp32",
                "threads": threads,
                "progress": False,
            },
            "validation": {"label_sets": {}},
        },
        "benchmark",
    )
    trainer = Trainer(config)
    trainer.step_module.train()
    batches: Iterator[Any] = iter(())
    epoch = -1

    def run(steps: int) -> int:
        nonlocal batches, epoch
        images = 0
        for _ in range(steps):
            batch = next(batches, None)
            if batch is None:  # a new pass over the data (the first call starts one)
                epoch += 1
                batches = trainer._micro_batches(epoch, 0)
                batch = next(batches)
            trainer.train_step([batch], epoch)
            images += len(batch.labels)
        return images

    return run


def best_rates(
    runners: dict[str, Callable[[int], int]], warmup: int, steps: int, repeats: int
) -> dict[str, float]:
    """Best images/second of each runner over ``repeats`` rounds of ``steps`` steps.

    Every runner first runs ``warmup`` untimed steps; the rounds then alternate between the
    runners, so a change in background load hits all of them alike.
    """
    for run in runners.values():
        run(warmup)
    rates: dict[str, float] = dict.fromkeys(runners, 0.0)
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            images = run(steps)
            rates[name] = max(rates[name], images / (time.perf_counter() - start))
    return rates


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def bundled_runners(
    pixels: torch.Tensor, texts: list[str], batch_size: int, image_size: int
) -> tuple[dict[str, Callable[[int], int]], dict[str, Callable[[int], int]]]:
    """Training and inference runners of the bundled image tower, one per precision x layout."""
    from contextlib import nullcontext

    from dermfm.train.config import ModelSection
    from dermfm.train.losses import clip_loss
    from dermfm.train.model import build_trainable

    section = ModelSection(init="dermfm-bundled", image_size=image_size, freeze_text=True)
    model = build_trainable(section, "cpu")
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.text_head(model.text_tower(texts)), dim=-1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    batches = pixels.split(batch_size)
    train_runs: dict[str, Callable[[int], int]] = {}
    infer_runs: dict[str, Callable[[int], int]] = {}
    for precision in ("fp32", "bf16"):
        for layout in ("contiguous", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

            def autocast(precision: str = precision) -> Any:
                if precision == "bf16":
                    return torch.autocast("cpu", dtype=torch.bfloat16)
                return nullcontext()

            def train_steps(
                steps: int, fmt: torch.memory_format = fmt, cast: Any = autocast
            ) -> int:
                model.train()
                for i in range(steps):
                    x = batches[i % len(batches)].contiguous(memory_format=fmt)
                    with cast():
                        image = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
                        loss = clip_loss(image.float(), text[: len(x)], model.logit_scale)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                return steps * batch_size

            @torch.no_grad()
            def infer_steps(
                steps: int, fmt: torch.memory_format = fmt, cast: Any = autocast
            ) -> int:
                model.eval()
                for i in range(steps):
                    with cast():
                        model.encode_image(batches[i % len(batches)].contiguous(memory_format=fmt))
                return steps * batch_size

            train_runs[f"{precision} {layout}"] = train_steps
            infer_runs[f"{precision} {layout}"] = infer_steps
    return train_runs, infer_runs


def bundled_main(args: argparse.Namespace) -> None:
    """The ``--bundled`` mode: precision and memory layout of the bundled image tower."""
    from dermfm.data.transforms import train_transform
    from dermfm.io import load_image
    from dermfm.models.bundled import IMAGENET_MEAN, IMAGENET_STD

    n = 2 * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        if SHARED.is_dir():
            images, source = real_images(n), f"{n} HAM10000 images"
        else:
            images, source = generated_images(n, Path(tmp)), f"{n} generated JPEGs"
        transform = train_transform(args.image_size, IMAGENET_MEAN, IMAGENET_STD)
        torch.manual_seed(0)
        pixels = torch.stack([transform(load_image(p)) for p, _, _ in images])
    texts = [c for _, c in captions(images, "label")][: args.batch_size]
    train_runs, infer_runs = bundled_runners(pixels, texts, args.batch_size, args.image_size)
    print(
        f"bundled image tower (EfficientNet-Lite0, whole tower trainable), {args.image_size}px, "
        f"batch {args.batch_size}, {source}; {args.warmup} warm-up steps then best of "
        f"{args.repeats} x {args.steps} timed steps; torch {torch.__version__} threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} cores ({platform.machine()})"
    )
    print("setting | train img/s | vs fp32 contiguous | inference img/s | vs fp32 contiguous")
    train = best_rates(train_runs, args.warmup, args.steps, args.repeats)
    infer = best_rates(infer_runs, args.warmup, args.steps, args.repeats)
    ref_t, ref_i = train["fp32 contiguous"], infer["fp32 contiguous"]
    for name in train_runs:
        print(
            f"{name} | {train[name]:.1f} | {train[name] / ref_t:.2f}x | "
            f"{infer[name]:.1f} | {infer[name] / ref_i:.2f}x"
        )
    print(f"peak RSS of the process: {peak_rss_mib():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; best one kept")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for both loops (on a busy machine, 1 avoids oversubscription)",
    )
    parser.add_argument(
        "--captions",
        choices=("label", "distinct", "both"),
        default="both",
        help="caption set(s) to measure (see the module docstring)",
    )
    parser.add_argument(
        "--no-disk", action="store_true", help="skip dermfm without preloading (saves time)"
    )
    parser.add_argument(
        "--bundled",
        action="store_true",
        help="measure the bundled image tower: fp32 / bf16 x contiguous / channels-last",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bundled:
        bundled_main(args)
        return
    n = (args.warmup + args.steps) * args.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = build_model(tmp_path / "model", args.image_size)
        if SHARED.is_dir():
            images, source = real_images(n), f"{n} HAM10000 images (200x150 JPEG)"
        else:
            images = generated_images(n, tmp_path / "images")
            source = f"{n} generated 200x150 JPEGs ({SHARED} not found)"
        kinds = ("label", "distinct") if args.captions == "both" else (args.captions,)
        print(
            f"model: open_clip ViT {args.image_size}px/16, width 192 x 4 layers, text 192 x 4, "
            f"embed 128, random init; {source}"
        )
        print(
            f"batch {args.batch_size}, {args.warmup} warm-up steps then best of {args.repeats} x "
            f"{args.steps} timed steps, fp32, "
            f"torch {torch.__version__} threads {torch.get_num_threads()}, "
            f"{os.cpu_count()} cores ({platform.machine()}), python {platform.python_version()}"
        )
        rows: list[tuple[str, float, float, float | None]] = []
        for kind in kinds:
            pairs = captions(images, kind)
            manifest = tmp_path / f"manifest-{kind}.jsonl"
            runners = {"open_clip": open_clip_runner(folder, pairs, args.batch_size)}
            for preload in (True,) if args.no_disk else (True, False):
                runners[f"dermfm {preload}"] = dermfm_runner(
                    folder,
                    pairs,
                    manifest,
                    tmp_path / f"run-{kind}-{preload}",
                    args.batch_size,
                    args.image_size,
                    preload,
                    args.threads,
                )
            rates = best_rates(runners, args.warmup, args.steps, args.repeats)
            rows.append((kind, rates["open_clip"], rates["dermfm True"], rates.get("dermfm False")))
            del runners

        header = (
            "captions | open_clip train_one_epoch | dermfm preload | dermfm from disk | "
            "preload vs open_clip | from disk vs open_clip"
        )
        print(header)
        for kind, ref, pre, disk in rows:
            disk_rate = f"{disk:.1f}/s" if disk is not None else "-"
            disk_ratio = f"{disk / ref:.2f}x" if disk is not None else "-"
            print(
                f"{kind} | {ref:.1f}/s | {pre:.1f}/s | {disk_rate} | {pre / ref:.2f}x | "
                f"{disk_ratio}"
            )
        print(f"peak RSS of the process (both loops, all rows): {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
