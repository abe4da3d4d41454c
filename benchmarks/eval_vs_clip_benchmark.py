"""Zero-shot evaluation wall time: ``dermfm eval`` vs ``clip_benchmark eval``, same model, same
images, same run; and whether their predictions agree (they must be identical).

Both tools run as command-line processes on the same machine, one after the other, limited to
the same number of threads:

* the images: ``--images`` records of the HAM10000 test split in ../shared/data (a fixed,
  seeded subset), read by dermfm from their files through a generic CSV spec, and exported
  byte-for-byte to CLIP_benchmark's webdataset layout (``classnames.txt`` = the ``ham7``
  label set's published class names, the 8 ``skin8`` templates) for clip_benchmark;
* the model: an open_clip ``--arch`` (ViT-B-32 by default) with seeded random weights saved as
  an open_clip folder; dermfm loads the folder, clip_benchmark gets ``--model ARCH --pretrained
  FILE``. No published weights are needed, and the comparison is of the pipelines, not of a
  model's quality (random weights make near-ties common, so agreement is a strict test);
* ``clip_benchmark eval --task zeroshot_classification --no_amp`` (fp32, as dermfm; its default
  mixed precision would change scores) with its default ``--num_workers 4`` and with
  ``--num_workers`` equal to the threads, the faster one being the reference;
* ``dermfm eval --task zeroshot`` cold (an empty cache folder: every image and prompt is
  encoded) with its default 1,000-resample bootstrap intervals, then warm (the same images
  evaluated again with another template set: the image embeddings come from the cache, as they
  do for a re-run or an extra task).

Agreement: clip_benchmark's per-image predictions are computed in this process with its own
dataset builder, classifier and ``run_classification`` on the exported folder, and compared
with the ``predicted_class`` column of dermfm's predictions CSV; its CLI's ``acc1`` and
``mean_per_class_recall`` are compared with dermfm's accuracy and balanced accuracy.
Target: dermfm at least 2x faster on CPU.

    python benchmarks/eval_vs_clip_benchmark.py [--images 500] [--arch ViT-B-32] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


# clip_benchmark 1.6.2's accuracy() calls float() on a one-element array, which this numpy
# rejects; its command line is run with that one function restated (same definition).
CLIP_BENCHMARK_CLI = """
import sys
from clip_benchmark.metrics import zeroshot_classification as z
def accuracy(output, target, topk=(1,)):
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].sum()) / len(target) for k in topk]
z.accuracy = accuracy
from clip_benchmark.cli import main
sys.exit(main())
"""


def pick_records(n: int, seed: int = 0) -> list:
    """``n`` HAM10000 test records (a seeded subset, in table order)."""
    from dermfm.data import read_dataset

    test = [r for r in read_dataset("ham10000", SHARED).records if r.split == "test"]
    keep = sorted(random.Random(seed).sample(range(len(test)), min(n, len(test))))
    return [test[i] for i in keep]


def save_model(arch: str, folder: Path) -> Path:
    """An open_clip folder (config + safetensors) of ``arch`` with seeded random weights."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(arch)
    folder.mkdir(parents=True)
    config = {
        "model_cfg": open_clip.get_model_config(arch),
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    weights = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return weights


def write_inputs(records: list, work: Path) -> tuple[Path, Path]:
    """The dermfm spec (CSV of the chosen files) and the CLIP_benchmark export of them."""
    from dermfm.data import export_clip_benchmark_wds

    table = work / "dermfm" / "labels.csv"
    table.parent.mkdir(parents=True)
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        writer.writerows([r.image, r.metadata["dataset_label"]] for r in records)
    spec = work / "dermfm" / "spec.yaml"
    spec.write_text(
        "name: ham_subset\nlabels_file: labels.csv\nfile_column: file\nlabel_column: label\n"
        "label_set: ham7\nmodality: dermoscopy\nsplit: {method: all, name: test}\n"
    )
    wds = work / "wds"
    test_records = [r for r in records if r.split == "test"]
    # 4 shards: CLIP_benchmark's loader needs at least one shard per worker
    per_shard = -(-len(test_records) // 4)
    export_clip_benchmark_wds(
        test_records, wds, label_set="ham7", templates="skin8", max_count=per_shard
    )
    return spec, wds


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall time of a command; its output is shown only when it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}")
    return elapsed


def clip_benchmark_predictions(arch: str, weights: Path, wds: Path, batch: int) -> list[str]:
    """Per-image predicted class names from CLIP_benchmark's own pipeline (in this process)."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from clip_benchmark.models import load_clip

    model, transform, tokenizer = load_clip(
        model_type="open_clip",
        model_name=arch,
        pretrained=str(weights),
        cache_dir=None,
        device="cpu",
    )
    model.eval()
    dataset = build_dataset("wds/ham", root=str(wds), transform=transform, split="test")
    loader = torch.utils.data.DataLoader(dataset.batched(batch), batch_size=None, num_workers=0)
    classifier = zsc.zero_shot_classifier(
        model, tokenizer, dataset.classes, dataset.templates, "cpu", amp=False
    )
    logits, _ = zsc.run_classification(model, classifier, loader, "cpu", amp=False)
    return [dataset.classes[i] for i in logits.argmax(dim=1).tolist()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if not (SHARED / "ham10000" / "labels.csv").is_file():
        print(f"needs the HAM10000 folder of {SHARED}", file=sys.stderr)
        return 2
    try:
        import clip_benchmark  # noqa: F401
    except ImportError as exc:
        print(f"clip_benchmark is not installed ({exc}): pip install -e '.[dev]'", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        records = pick_records(args.images)
        weights = save_model(args.arch, work / "model")
        spec, wds = write_inputs(records, work)
        threads = str(args.threads)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "HF_HUB_OFFLINE": "1",
        }
        common = [
            "--dataset",
            "wds/ham",
            "--dataset_root",
            str(wds),
            "--model",
            args.arch,
            "--pretrained",
            str(weights),
            "--task",
            "zeroshot_classification",
            "--batch_size",
            str(args.batch_size),
            "--no_amp",
        ]
        cb_runs = {}
        for workers in sorted({4, args.threads}):
            out = work / f"cb_{workers}.json"
            cb_runs[workers] = timed(
                [
                    sys.executable,
                    "-c",
                    CLIP_BENCHMARK_CLI,
                    "eval",
                    *common,
                    "--num_workers",
                    str(workers),
                    "--output",
                    str(out),
                ],
                env,
            )
        cb_metrics = json.loads((work / "cb_4.json").read_text())["metrics"]

        env["DERMFM_CACHE"] = str(work / "cache")
        dermfm = [
            str(BIN / "dermfm"),
            "eval",
            "-m",
            str(weights.parent),
            "-d",
            str(spec),
            "--root",
            str(spec.parent),
            "--task",
            "zeroshot",
            "--set",
            f"batch_size={args.batch_size}",
        ]
        cold = timed([*dermfm, "-o", str(work / "cold")], env)
        warm = timed([*dermfm, "-o", str(work / "warm"), "--set", "templates=plain"], env)

        results = json.loads((work / "cold" / "results.json").read_text())
        (run,) = results["runs"]
        with (work / "cold" / run["files"]["predictions"]).open() as fh:
            ours = [row["predicted_class"] for row in csv.DictReader(fh)]
        theirs = clip_benchmark_predictions(args.arch, weights, wds, args.batch_size)

    n = len(ours)
    agree = sum(a == b for a, b in zip(ours, theirs, strict=True)) if n == len(theirs) else -1
    reference = min(cb_runs.values())
    found = run["zeroshot"]["metrics"]
    print(
        f"images: {n} HAM10000 test images; model: {args.arch} (random weights), "
        f"{args.threads} threads, batch {args.batch_size}, fp32"
    )
    for workers, seconds in cb_runs.items():
        print(f"clip_benchmark eval (num_workers={workers}): {seconds:7.1f} s")
    print(
        f"dermfm eval, cold cache (with 1000-resample CIs): {cold:7.1f} s  "
        f"-> {reference / cold:.2f}x the faster clip_benchmark"
    )
    print(f"dermfm eval, warm (cached image embeddings): {warm:7.1f} s  -> {reference / warm:.2f}x")
    print(
        f"predictions identical: {agree} of {n} images "
        f"({'PASS' if agree == n == len(theirs) else 'FAIL'})"
    )
    print(
        f"accuracy: dermfm {found['accuracy']['value']:.4f}, clip_benchmark "
        f"{cb_metrics['acc1']:.4f}; balanced accuracy: dermfm "
        f"{found['balanced_accuracy']['value']:.4f}, clip_benchmark mean_per_class_recall "
        f"{cb_metrics['mean_per_class_recall']:.4f}"
    )
    print(
        f"target >= 2x on CPU: cold {'PASS' if reference / cold >= 2 else 'MISS'}, "
        f"warm {'PASS' if reference / warm >= 2 else 'MISS'}"
    )
    return 0 if agree == n == len(theirs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
