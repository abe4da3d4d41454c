"""Indexes built from an embedding store: the budget picks the index, the build's printed
recall@10 holds on fresh queries, and the index opens memory-mapped without the store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dermfm.ann import factory_kind, parse_memory, plan_index, recall_at
from dermfm.errors import IndexStoreError
from dermfm.retrieval import Index
from dermfm.store import EmbeddingStore
from dermfm.store.core import rows_table


def clustered(n: int, dim: int, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (embedding-like structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype("f4")


def vector_store(folder: Path, model, vectors: np.ndarray, shards: int = 3) -> Path:
    """A store of ``vectors`` as if ``model`` had written them (one error row per shard)."""
    store = EmbeddingStore.create(folder, model)
    for k, part in enumerate(np.array_split(vectors, shards)):
        n = len(part) + 1
        ids = [f"s{k}-{i}" for i in range(n)]
        errors = [None] * len(part) + ["not a recognised image format"]
        columns = {"id": ids, "path": [f"/cases/{i}.jpg" for i in ids], "error": errors}
        columns["label"] = [f"class{i % 5}" for i in range(n)]
        store.write_shard(f"part-{k:06d}", rows_table(columns, np.vstack([part, part[:1]]), 32))
    return folder


def fresh_recall(index: Index, vectors: np.ndarray, n: int, seed: int) -> float:
    """Recall@10 of ``index`` against brute force on ``n`` new queries near the vectors (never
    indexed)."""
    rng = np.random.default_rng(seed)
    base = vectors[rng.integers(0, len(vectors), n)]
    queries = base + 0.05 * rng.normal(size=base.shape).astype("f4")
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = np.array([[h.item_id for h in index.search_vector(q, 10)] for q in queries])
    return recall_at(found, exact)


def test_memory_budget_chooses_the_index() -> None:
    assert parse_memory("2GB") == 2 * 10**9 and parse_memory("512MiB") == 512 * 2**20
    with pytest.raises(ValueError, match="not a size"):
        parse_memory("lots")
    assert plan_index(50_000, 512).kind == "flat"
    assert plan_index(1_000_000, 512).factory == "IVF4096,Flat"
    assert plan_index(1_000_000, 512, "hnsw").factory == "HNSW32,Flat"
    small = plan_index(1_000_000, 512, memory=parse_memory("2GB"))
    assert small.kind == "ivfpq" and small.factory.startswith("OPQ")
    assert small.memory_bytes <= 2 * 10**9
    tiny = plan_index(100_000_000, 512, memory=parse_memory("500MB"))
    assert tiny.kind == "ivfpq" and "over the budget" in tiny.reason
    assert plan_index(10_000_000, 256, memory=parse_memory("64GB")).kind == "ivf"
    assert factory_kind("OPQ16,IVF256,PQ16") == "ivfpq" and factory_kind("IVF64,Flat") == "ivf"
    assert factory_kind("HNSW32,Flat") == "hnsw" and factory_kind("Flat") == "flat"


@pytest.mark.parametrize(
    ("kind", "factory", "floor"),
    [
        ("hnsw", None, 0.9),
        ("ivf", None, 0.9),
        ("ivfpq", "IVF32,PQ8", 0.3),
        # OPQ's 50 rotation iterations each train a PQ: about 12 CPU seconds here
        pytest.param("ivfpq", "OPQ8,IVF32,PQ8", 0.3, marks=pytest.mark.slow),
    ],
)
def test_recall_on_fresh_queries_meets_the_printed_recall(
    oc_model, tmp_path: Path, kind: str, factory: str | None, floor: float
) -> None:
    vectors = clustered(4000, 32)
    store = vector_store(tmp_path / "store", oc_model, vectors)
    index, report = Index.from_store(
        tmp_path / "index", store, oc_model, kind=kind, factory=factory, queries=400
    )
    assert report.kind == kind and report.vectors == 4000 and report.queries == 400
    assert report.recall_at_10 >= floor, report
    assert index.meta["build"]["recall_at_10"] == report.recall_at_10
    assert fresh_recall(index, vectors, 400, seed=7) >= report.recall_at_10 - 0.03
    index.close()


def mapped(path: Path) -> bool:
    """Whether this process has ``path`` memory-mapped (its pages are shared, not copied)."""
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize(
    "kind", ["flat", "ivf", "hnsw", pytest.param("ivfpq", marks=pytest.mark.slow)]
)
def test_store_index_searches_without_the_store(oc_model, tmp_path: Path, kind: str) -> None:
    vectors = clustered(3000, 32, seed=2)
    store = vector_store(tmp_path / "store", oc_model, vectors)
    index, report = Index.from_store(tmp_path / "index", store, oc_model, kind=kind)
    assert report.kind == kind and len(index) == 3000
    index.close()
    shutil.rmtree(store)  # startup maps the FAISS file and reads metadata only
    opened = Index.open(tmp_path / "index", oc_model)
    assert mapped(tmp_path / "index" / "vectors.faiss")  # vectors/codes not read into memory
    hits = {h.item_id: h for h in opened.search_vector(vectors[1234], 3)}
    assert hits[1234].path == "/cases/s1-234.jpg" and hits[1234].label == "class4"
    if kind == "flat":
        assert report.recall_at_10 == 1.0 and hits[1234].score == pytest.approx(1.0, abs=1e-5)
    assert opened.search_text("a pigmented lesion", 5)
    with pytest.raises(IndexStoreError, match="rebuild"):
        opened.add([tmp_path / "x.jpg"])
    with pytest.raises(IndexStoreError, match="already exists"):
        Index.from_store(tmp_path / "index", store, oc_model)


def test_sharded_index_searches_its_parts_as_one(oc_model, tmp_path: Path) -> None:
    vectors = clustered(3000, 32, seed=4)
    store = vector_store(tmp_path / "store", oc_model, vectors)
    flat, _ = Index.from_store(tmp_path / "flat", store, oc_model, kind="flat")
    sharded, report = Index.from_store(tmp_path / "parts", store, oc_model, kind="flat", shards=3)
    assert report.shards == 3 and report.vectors == 3000 and report.recall_at_10 == 1.0
    parts = sharded.meta["parts"]
    assert [p["rows"] for p in parts] == [1000, 1000, 1000]
    assert [p["first_row"] for p in parts] == [0, 1000, 2000]
    sharded.close()
    shutil.rmtree(store)
    opened = Index.open(tmp_path / "parts", oc_model)
    assert all(mapped(tmp_path / "parts" / p["file"]) for p in parts)
    rng = np.random.default_rng(5)
    for q in vectors[rng.integers(0, 3000, 20)] + 0.05 * rng.normal(size=(20, 32)).astype("f4"):
        q = q / np.linalg.norm(q)
        want = [(h.item_id, h.path, h.label) for h in flat.search_vector(q, 10)]
        assert [(h.item_id, h.path, h.label) for h in opened.search_vector(q, 10)] == want
    # a rebuild as one part removes the old parts
    Index.from_store(
        tmp_path / "parts", vector_store(tmp_path / "s2", oc_model, vectors), oc_model,
        kind="flat", overwrite=True,
    )  # fmt: skip
    assert sorted(f.name for f in (tmp_path / "parts").glob("*.faiss")) == ["vectors.faiss"]


def test_sharded_hnsw_recall_on_fresh_queries_meets_the_printed_recall(
    oc_model, tmp_path: Path
) -> None:
    vectors = clustered(6000, 32, seed=6)
    store = vector_store(tmp_path / "store", oc_model, vectors)
    index, report = Index.from_store(
        tmp_path / "index", store, oc_model, kind="hnsw", shards=2, queries=300
    )
    assert report.shards == 2 and report.queries == 600 and report.kind == "hnsw"
    assert fresh_recall(index, vectors, 300, seed=8) >= report.recall_at_10 - 0.03


def test_cli_index_build_from_store_prints_recall(
    oc_model, tiny_open_clip: Path, tmp_path: Path
) -> None:
    store = vector_store(tmp_path / "store", oc_model, clustered(2000, 32, seed=3))
    done = subprocess.run(
        [sys.executable, "-c", "from dermfm.cli import app; app()", "index", "build",
         str(tmp_path / "index"), "--from-store", str(store), "-m", str(tiny_open_clip),
         "--memory", "1MB", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["kind"] == "flat" and report["total"] == 2000
    assert report["recall_at_10"] == 1.0 and report["queries"] == 1000
    shards = subprocess.run(
        [sys.executable, "-c", "from dermfm.cli import app; app()", "index", "build",
         str(tmp_path / "parts"), "--from-store", str(store), "-m", str(tiny_open_clip),
         "--kind", "flat", "--shards", "4"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert shards.returncode == 0, shards.stderr
    assert "4 parts searched together" in shards.stdout
    assert len(list((tmp_path / "parts").glob("vectors-*.faiss"))) == 4
