"""Single-image ``dermfm diagnose`` latency on CPU: warm calls against the bare image-tower forward,
and the first ``dermfm diagnose`` process after install against the same call without shipped
class embeddings.

What a user waits for when they call ``dermfm.diagnose("lesion.jpg", model=model)`` with the model
already loaded: decode + preprocess + image tower + zero-shot scoring against the label set's
prompt-ensemble class embeddings + ontology roll-up and the result object. Target: at most 0.2 s
on 2 CPU cores with the bundled model (``load_model()``, no name).

* ``first diagnose after loading``: the first ``diagnose`` call in the process, with an empty
  user cache (a fresh ``DERMFM_CACHE`` folder, set after the model is loaded): the class
  embeddings come from the model folder's shipped ``class_embeddings.safetensors`` when it has
  them for the label set, else every ``class x template`` prompt is encoded and cached (the
  output says which);
* ``warm diagnose``: the following ``--repeats`` calls, each on a different image (cycling over
  ``--images`` real images), reported as median / p90 / max;
* the reference, in the same run: ``model.encode_images(pixels[None])`` on one already decoded and
  preprocessed image (the image tower alone), median over ``--repeats`` calls; the ratio of the
  two medians is the cost of the whole pipeline around the network.

A breakdown of the warm path (decode + preprocess, classifier set-up from the cached class
embeddings) is printed too. The four warm measurements are interleaved call by call, so a burst
of background load lands on all of them rather than on one. Images:
HAM10000 / Derm7pt / DermNet files from ../shared/data when present, else generated JPEGs.

``--first-calls N`` (default 3) then times what a user waits for after install: whole
``dermfm diagnose`` processes on the packaged example image (imports, model load, diagnosis,
output), each with a fresh empty ``DERMFM_CACHE`` after one untimed run that warms the OS file
cache, target 1 s. Measured in the same run, interleaved run by run:

* ``shipped``: the model as installed (the bundled model ships the class embeddings of its
  packaged label sets, so no prompt is encoded and the text tower is never built);
* ``reference``: the same process on a copy of the model folder without
  ``class_embeddings.safetensors`` (same weights, same cache keys): every prompt of the label
  set is encoded, as before the embeddings shipped (only for a model folder that ships them);
* ``floor``: ``python -c "import torch"``, the part no dermfm change can remove.

Each is reported as wall time and as the process's CPU time (user + system). On a machine busy
with other work the wall time mostly measures waiting for a core; the CPU time of the mostly
single-threaded start-up is then the better estimate of an idle machine's wall time.

Exits 2 when the model is not available on this machine (e.g. the bundled weights not shipped).

    python benchmarks/diagnose_latency.py [--model NAME_OR_FOLDER] [--repeats 30] [--threads 2]
        [--first-calls 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE = Path(__file__).resolve().parents[1] / "src/dermfm/examples/synthetic_lesion.jpg"


def real_images(n: int) -> list[Path]:
    """``n`` real images spread over the datasets found in ../shared/data."""
    names = [
        d for d in ("ham10000", "derm7pt", "dermnet_nz") if (SHARED / d / "labels.csv").is_file()
    ]
    picked: list[Path] = []
    for name in names:
        with (SHARED / name / "labels.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        share = -(-n // len(names))
        step = max(1, len(rows) // share)
        picked += [SHARED / name / r["file"] for r in rows[::step][:share]]
    return picked[:n]


def generated_images(n: int, folder: Path) -> list[Path]:
    """``n`` generated 600x450 JPEGs: a dark blob on a skin-coloured, noisy background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:450, 0:600]
    out = []
    for i in range(n):
        cx, cy = rng.uniform([150, 100], [450, 350])
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / rng.uniform(3000, 15000))
        pixels = rng.uniform(150, 230, size=3) - blob[..., None] * rng.uniform(60, 140, size=3)
        pixels += rng.normal(0, 6, pixels.shape)
        path = folder / f"generated_{i:02d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        out.append(path)
    return out


def seconds(call: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, linear interpolation."""
    return float(np.quantile(np.array(values), q))


def process_seconds(command: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one process run with a fresh, empty
    ``DERMFM_CACHE`` folder."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "DERMFM_CACHE": cache}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def first_calls(model_arg: str | None, loaded_from: str, runs: int, target: float) -> None:
    """Time first ``dermfm diagnose`` processes after install, with and without the model
    folder's shipped class embeddings, and ``import torch`` alone (see the module docstring)."""
    from dermfm.models.bundled import EMBEDDINGS_FILE

    dermfm_cli = str(Path(sys.executable).with_name("dermfm"))
    diagnose = [dermfm_cli, "diagnose", str(EXAMPLE)]
    commands = {"shipped": diagnose + (["--model", model_arg] if model_arg else [])}
    folder = Path(loaded_from)
    with tempfile.TemporaryDirectory() as tmp:
        if (folder / EMBEDDINGS_FILE).is_file():
            copy = shutil.copytree(
                folder, Path(tmp) / "model", ignore=shutil.ignore_patterns(EMBEDDINGS_FILE)
            )
            commands["reference"] = [*diagnose, "--model", str(copy)]
        commands["floor"] = [sys.executable, "-c", "import torch"]
        process_seconds(commands["shipped"])  # warms the OS file cache
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(runs):  # interleaved: background load hits all alike
            for name, command in commands.items():
                times[name].append(process_seconds(command))
    labels = {
        "shipped": "first `dermfm diagnose`, fresh cache, as installed",
        "reference": "  same, folder without class_embeddings.safetensors (reference)",
        "floor": "  `python -c 'import torch'` (floor)",
    }
    print(f"first `dermfm diagnose {EXAMPLE.name}` processes, {runs} runs each, interleaved")
    print("measure | wall median | wall min | wall max | CPU (user + sys) median")
    medians: dict[str, float] = {}
    for name, pairs in times.items():
        wall, cpu = [w for w, _ in pairs], [c for _, c in pairs]
        medians[name] = statistics.median(wall)
        print(
            f"{labels[name]} | {medians[name]:.2f} s | {min(wall):.2f} s | {max(wall):.2f} s | "
            f"{statistics.median(cpu):.2f} s"
        )
    if "reference" in medians:
        print(f"reference vs as installed (wall): {medians['reference'] / medians['shipped']:.1f}x")
    else:
        print(f"(no reference: {folder} ships no {EMBEDDINGS_FILE})")
    verdict = "PASS" if medians["shipped"] <= target else "MISS"
    print(f"{verdict}: first-call wall median {medians['shipped']:.2f} s vs target {target:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default=None,
        help="anything dermfm.load_model accepts (default: the bundled model)",
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed warm calls")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--images", type=int, default=10, help="distinct images cycled over")
    parser.add_argument("--target", type=float, default=0.2, help="seconds (warm median)")
    parser.add_argument(
        "--first-calls", type=int, default=3, help="first-call processes per variant (0: none)"
    )
    parser.add_argument(
        "--first-target", type=float, default=1.0, help="seconds (first-call median)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import dermfm
    from dermfm import cache
    from dermfm.errors import ModelNotAvailableError
    from dermfm.io import load_image
    from dermfm.zeroshot import ZeroShotClassifier

    start = time.perf_counter()
    try:
        model = dermfm.load_model(args.model)
    except ModelNotAvailableError as exc:
        print(f"model not available: {exc}")
        sys.exit(2)
    load_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        # the classifier cache goes to an empty folder, so the first call is really cold
        os.environ["DERMFM_CACHE"] = str(Path(tmp) / "cache")
        if SHARED.is_dir():
            images, source = real_images(args.images), f"real images from {SHARED}"
        else:
            images = generated_images(args.images, Path(tmp))
            source = f"generated 600x450 JPEGs ({SHARED} not found)"
        sizes = sorted({Image.open(p).size for p in images})

        cold = seconds(lambda: dermfm.diagnose(images[0], model=model))
        shipped = not cache.stored_tensors("classifiers")
        pixels = model.preprocess(load_image(images[0]))[None]
        model.encode_images(pixels)  # warm-up of the reference
        warm: list[float] = []
        tower: list[float] = []
        decode: list[float] = []
        setup: list[float] = []
        for i in range(args.repeats):  # interleaved: background load hits all four alike
            path = images[(i + 1) % len(images)]
            warm.append(seconds(lambda p=path: dermfm.diagnose(p, model=model)))
            tower.append(seconds(lambda: model.encode_images(pixels)))
            decode.append(seconds(lambda p=path: model.preprocess(load_image(p))))
            setup.append(seconds(lambda: ZeroShotClassifier(model).weights))
        n_classes = len(ZeroShotClassifier(model).label_set)

    median = statistics.median(warm)
    reference = statistics.median(tower)
    print(
        f"model {model.name} ({model.card.backend}, {model.image_size}px), loaded in "
        f"{load_s:.1f} s; label set 'all' ({n_classes} classes), templates skin8"
    )
    print(
        f"{len(images)} {source}, sizes {sizes[0][0]}x{sizes[0][1]} to "
        f"{sizes[-1][0]}x{sizes[-1][1]}; torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} cores; {args.repeats} warm calls"
    )
    print("measure | median | p90 | max")
    how = "class embeddings shipped" if shipped else "prompts encoded"
    print(f"first diagnose after loading, empty cache ({how}) | {cold:.3f} s | - | -")
    for label, values in (
        ("warm diagnose, one image", warm),
        ("  decode + preprocess (part of it)", decode),
        ("  classifier set-up, cached class embeddings (part of it)", setup),
        ("image tower alone (reference)", tower),
    ):
        print(
            f"{label} | {statistics.median(values):.3f} s | {percentile(values, 0.9):.3f} s | "
            f"{max(values):.3f} s"
        )
    print(f"warm diagnose vs image tower alone: {median / reference:.2f}x the time")
    verdict = "PASS" if median <= args.target else "MISS"
    print(f"{verdict}: warm median {median:.3f} s vs target {args.target:.2f} s")
    if args.first_calls:
        first_calls(args.model, model.card.loaded_from, args.first_calls, args.first_target)


if __name__ == "__main__":
    main()
