"""Images/second of ``dermfm embed`` with the local engine vs the Ray engine, same model, same
generated images, same machine, one run (Ray's overhead on one node).

The Ray engine runs on a local Ray cluster started here, head on 127.0.0.1 inside a
loopback-only network namespace (``unshare -n``, as root; see docs/scale.md), with ``--actors``
actors of ``--actor-cpus`` CPUs each, its workers at the local engine's priority (Ray's default
worker niceness of 15 starves them on a busy machine: 0.06x the local engine's images/s in a
2026-12-02 run beside a test suite). Each engine writes a fresh store; the vectors of the two
stores are compared (max absolute difference).

    python benchmarks/embed_engines.py [--model dermfm-bundled] [--images 256] [--actors 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, side: int) -> None:
    """``n`` generated JPEGs of ``side`` pixels in two class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"class{i % 2}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((side, side)).save(path, quality=90)


def run_engine(args: argparse.Namespace, images: Path, store: Path, engine: str) -> dict:
    """Embed ``images`` into ``store`` with ``engine``; images/s of the embedding part."""
    import dermfm
    from dermfm.store import embed_source

    model = dermfm.load_model(args.model)
    extra = {}
    if engine == "ray":
        import ray

        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, configure_logging=False)
        extra = {"actors": args.actors, "num_cpus": args.actor_cpus}
    start = time.perf_counter()
    report = embed_source(
        images, store, model, engine=engine, shard_size=args.shard_size,
        batch_size=args.batch_size, workers=args.workers, **extra,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if engine == "ray":
        import ray

        ray.shutdown()
    return {"engine": engine, "images": report.images, "seconds": round(wall, 2),
            "images_per_s": round(report.images / wall, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dermfm-bundled")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--side", type=int, default=384)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--actor-cpus", type=float, default=1.0)
    parser.add_argument("--ray-cpus", type=int, default=4)
    parser.add_argument("--inner", nargs=2, metavar=("IMAGES", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:  # inside the network namespace: the Ray run only
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        print(json.dumps(run_engine(args, Path(args.inner[0]), Path(args.inner[1]), "ray")))
        return
    from dermfm.store import EmbeddingStore

    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        make_images(images, args.images, args.side)
        local = run_engine(args, images, Path(tmp) / "local", "local")
        print(json.dumps(local), flush=True)
        # Ray starts its workers at nice 15; at 0 they compete with others as the local engine does
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
        command = ["unshare", "-n", sys.executable, __file__, *sys.argv[1:]]
        done = subprocess.run(
            [*command, "--inner", str(images), str(Path(tmp) / "ray")],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        ray_row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(ray_row), flush=True)
        a = EmbeddingStore.open(Path(tmp) / "local").table(["id", "vector"]).sort_by("id")
        b = EmbeddingStore.open(Path(tmp) / "ray").table(["id", "vector"]).sort_by("id")
        diff = float(
            np.abs(
                np.asarray(a["vector"].to_pylist(), "f4")
                - np.asarray(b["vector"].to_pylist(), "f4")
            ).max()
        )
        print(json.dumps({
            "ray_over_local_throughput": round(ray_row["images_per_s"] / local["images_per_s"], 3),
            "max_abs_vector_difference": diff,
        }))  # fmt: skip


if __name__ == "__main__":
    main()
