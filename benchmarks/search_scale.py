"""Search at scale: flat vs IVF-Flat vs IVF-PQ (OPQ) vs HNSW over generated clustered vectors.

For each dimension (256 and 512 by default) it generates ``--n`` unit vectors around random
cluster centres (embedding-like structure), builds each index through :func:`dermfm.ann.build`
(the code ``dermfm index build --from-store`` runs: training sample, tuned search parameter,
recall@10 on held-aside queries), and measures in the same run:

* build time (wall-clock, and CPU seconds of all threads) and size on disk (and the process's
  peak resident memory after the build);
* single-query latency p50 / p99 over ``--queries`` fresh queries (perturbed stored vectors,
  never indexed), FAISS limited to ``--threads`` threads, after one batched pass over them
  (the pages a serving process has warm): wall-clock, and the CPU time of the searching thread
  (FAISS runs a single query on one thread), which is the latency on an otherwise idle core
  and is what a busy machine's wall-clock figures cannot show;
* recall@10 of those queries against exact (brute-force) search;
* ratios against flat, and whether the automatic choice for the size (``plan_index``) meets
  p99 <= 20 ms and recall@10 >= 0.95.

    python benchmarks/search_scale.py [--n 1000000] [--dims 256 512] [--threads 2]

At 1,000,000 vectors the HNSW build is CPU-heavy (tens of minutes on 2 cores); ``--n 100000``
checks the whole path in minutes. Prints JSON lines, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype("f4")
    out = np.empty((n, dim), "f4")
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        points = centres[rng.integers(0, clusters, m)] + 0.6 * rng.normal(size=(m, dim)).astype(
            "f4"
        )
        out[start : start + m] = points / np.linalg.norm(points, axis=1, keepdims=True)
    return out


def exact_top10(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Brute-force top 10 by inner product (FAISS flat search)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(queries, 10)[1]


def measure(kind: str, vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray) -> dict:
    """Build one index kind over ``vectors`` and measure it on ``queries``."""
    import faiss

    from dermfm import ann

    n, dim = vectors.shape
    plan = ann.plan_index(n, dim, kind)
    batches = lambda: (vectors[i : i + 65536] for i in range(0, n, 65536))  # noqa: E731
    start_cpu = time.process_time()
    index, report = ann.build(batches, n, dim, plan, queries=min(1000, n // 10))
    build_cpu = time.process_time() - start_cpu
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        faiss.write_index(index, str(path))
        size = path.stat().st_size
        del index
        index = ann.read_mapped(str(path), plan.factory)
        ann.set_parameter(index, report.parameter, report.value)
        index.search(queries, 10)  # one batched pass maps the pages a server would have warm
        wall, cpu, found = [], [], []
        for q in queries:
            start, start_cpu = time.perf_counter(), time.thread_time()
            _, ids = index.search(q[None, :], 10)
            wall.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
            found.append(ids[0])
    ms, cpu_ms = np.asarray(wall) * 1000, np.asarray(cpu) * 1000
    return {
        "n": n,
        "dim": dim,
        "kind": kind,
        "factory": plan.factory,
        "parameter": f"{report.parameter}={report.value}" if report.parameter else "",
        "build_s": round(report.seconds, 2),
        "build_cpu_s": round(build_cpu, 2),
        "disk_mb": round(size / 1e6, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "cpu_p50_ms": round(float(np.percentile(cpu_ms, 50)), 3),
        "cpu_p99_ms": round(float(np.percentile(cpu_ms, 99)), 3),
        "recall_at_10": round(ann.recall_at(np.asarray(found), exact), 4),
        "build_recall_at_10": report.recall_at_10,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "ivfpq", "hnsw"])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import faiss

    from dermfm import ann

    faiss.omp_set_num_threads(args.threads)
    rows = []
    for dim in args.dims:
        vectors = clustered(args.n, dim, args.clusters, seed=0)
        rng = np.random.default_rng(1)
        base = vectors[rng.integers(0, args.n, args.queries)]
        queries = base + 0.05 * rng.normal(size=base.shape).astype("f4")
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype("f4")
        exact = exact_top10(queries, vectors)
        for kind in args.kinds:
            row = measure(kind, vectors, queries, exact)
            rows.append(row)
            print(json.dumps(row), flush=True)
        auto = ann.plan_index(args.n, dim)
        chosen = next((r for r in rows if r["dim"] == dim and r["kind"] == auto.kind), None)
        if chosen is not None:
            summary = {"dim": dim, "default_for_n": auto.factory}
            summary |= {k: chosen[k] for k in ("p99_ms", "cpu_p99_ms", "recall_at_10")}
            for clock in ("p99_ms", "cpu_p99_ms"):
                ok = chosen[clock] <= 20 and chosen["recall_at_10"] >= 0.95
                summary[f"meets_{clock}_20_recall_0.95"] = ok
            print(json.dumps(summary), flush=True)
    print("\n| n | dim | index | param | build s | disk MB | p50 / p99 ms | CPU p50 / p99 ms | "
          "recall@10 | CPU p99 vs flat |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        flat = next((f for f in rows if f["dim"] == r["dim"] and f["kind"] == "flat"), None)
        ratio = f"{r['cpu_p99_ms'] / flat['cpu_p99_ms']:.3f}" if flat and flat["cpu_p99_ms"] else ""
        print(
            f"| {r['n']} | {r['dim']} | {r['factory']} | {r['parameter']} | {r['build_s']} | "
            f"{r['disk_mb']} | {r['p50_ms']} / {r['p99_ms']} | {r['cpu_p50_ms']} / "
            f"{r['cpu_p99_ms']} | {r['recall_at_10']} | {ratio} |"
        )


if __name__ == "__main__":
    main()
