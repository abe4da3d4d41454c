"""The embedding store: `dermfm embed` from every kind of source, resumable after SIGKILL,
refused by an incompatible model, and read (as the embedding cache) by evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import save_open_clip_folder
from PIL import Image

from dermfm.data import Record, pack_shards, write_manifest
from dermfm.evaluate.tasks import embed_records
from dermfm.store import EmbeddingStore, StoreError, embed_source


def _images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / ("nevus" if i % 2 else "melanoma") / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (70, 80, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _rows(store: Path) -> dict[str, dict]:
    """The store's rows by image id (asserting each id appears once)."""
    table = EmbeddingStore.open(store).table()
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    return {r["id"]: r for r in table.to_pylist()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    _images(root, 7)
    (root / "nevus" / "broken.jpg").write_bytes(b"this is not a JPEG")
    return root


def test_embed_folder_rows_errors_and_resume(oc_model, folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    report = embed_source(folder, store, oc_model, shard_size=3, batch_size=2)
    assert (report.units, report.written, report.skipped, report.images) == (3, 3, 0, 8)
    assert [Path(p).name for p, _ in report.errors] == ["broken.jpg"]
    rows = _rows(store)
    assert len(rows) == 8
    bad = rows["nevus/broken.jpg"]
    assert bad["vector"] is None and "not a recognised image" in bad["error"]
    good = rows["melanoma/000.jpg"]
    assert good["label"] == "melanoma" and good["error"] is None and len(good["sha256"]) == 64
    expected = oc_model.embed_images([folder / "melanoma" / "000.jpg"]).vectors[0]
    np.testing.assert_allclose(good["vector"], expected.numpy(), atol=1e-6)
    manifest = json.loads((store / "store.json").read_text())
    assert manifest["model"]["key"] == oc_model.cache_key
    assert manifest["preprocessing"]["image_size"] == oc_model.image_size
    assert manifest["dermfm_version"]
    again = embed_source(folder, store, oc_model, shard_size=3)
    assert (again.written, again.skipped, again.images) == (0, 3, 0)
    # the source changed under a half-filled store: refused, nothing rewritten
    _images(folder / "extra", 2, seed=5)
    with pytest.raises(StoreError, match="another source or has changed"):
        embed_source(folder, store, oc_model, shard_size=3)


def test_incompatible_model_is_refused(oc_model, folder: Path, tmp_path: Path) -> None:
    import dermfm

    store = tmp_path / "store"
    embed_source(folder, store, oc_model, shard_size=100)
    other = dermfm.load_model(save_open_clip_folder(tmp_path / "other", seed=1))
    with pytest.raises(StoreError, match="embeds differently") as caught:
        EmbeddingStore.open(store, other)
    assert str(store) in str(caught.value) and other.cache_key in str(caught.value)
    with pytest.raises(StoreError, match="embeds differently"):
        embed_source(folder, store, other)
    records = [Record(image=str(p)) for p in sorted(folder.rglob("0*.jpg"))]
    with pytest.raises(StoreError, match="embeds differently"):
        embed_records(other, records, stores=[store])
    (store / "store.json").write_text(
        json.dumps({**json.loads((store / "store.json").read_text()), "format_version": 99})
    )
    with pytest.raises(StoreError, match="upgrade dermfm"):
        EmbeddingStore.open(store, oc_model)


def test_manifest_and_webdataset_sources_give_the_folder_vectors(
    oc_model, folder: Path, tmp_path: Path
) -> None:
    images = sorted(folder.rglob("0*.jpg"))
    records = [
        Record(image=str(p), texts=(f"case {i}",), label=p.parent.name, split="test")
        for i, p in enumerate(images)
    ]
    manifest = write_manifest(records, tmp_path / "cases.jsonl")
    embed_source(manifest, tmp_path / "from-manifest", oc_model, shard_size=4)
    shards = tmp_path / "wds"
    pack_shards(records, shards, shard_size=3)
    report = embed_source(shards, tmp_path / "from-wds", oc_model)
    assert report.units == 3
    embed_source(folder, tmp_path / "from-folder", oc_model)
    by_sha = {
        name: {r["sha256"]: r for r in _rows(tmp_path / name).values() if r["error"] is None}
        for name in ("from-manifest", "from-wds", "from-folder")
    }
    assert set(by_sha["from-wds"]) == set(by_sha["from-manifest"]) <= set(by_sha["from-folder"])
    for sha, row in by_sha["from-wds"].items():
        assert row["caption"].startswith("case ") and row["split"] == "test"
        np.testing.assert_allclose(row["vector"], by_sha["from-folder"][sha]["vector"], atol=1e-6)
        assert row["key"] == by_sha["from-manifest"][sha]["key"]


def test_the_store_is_the_embedding_cache(oc_model, folder: Path, tmp_path: Path) -> None:
    """Evaluation reads a store written by `embed` instead of embedding again."""
    store = tmp_path / "store"
    embed_source(folder, store, oc_model)
    records = [Record(image=str(p), label=p.parent.name) for p in sorted(folder.rglob("*.jpg"))]
    calls = []
    original = oc_model.encode_images

    def counted(pixels: torch.Tensor, tta: bool = False) -> torch.Tensor:
        calls.append(len(pixels))
        return original(pixels, tta=tta)

    oc_model.encode_images = counted
    try:
        split = embed_records(oc_model, records, stores=[store], cache=False)
        assert calls == [], "every image was in the store"
        assert len(split.records) == 7 and [Path(e.path).name for e in split.failed] == [
            "broken.jpg"
        ]
        rows = {r["path"]: r["vector"] for r in _rows(store).values()}
        for record, vector in zip(split.records, split.vectors, strict=True):
            np.testing.assert_array_equal(vector.numpy(), np.asarray(rows[record.image], "f4"))
        # without the store, the images are embedded once, then served by the cache (a store)
        fresh = embed_records(oc_model, records)
        assert sum(calls) == 7
        cached = embed_records(oc_model, records)
        assert sum(calls) == 7
        torch.testing.assert_close(fresh.vectors, split.vectors, rtol=0, atol=1e-6)
        torch.testing.assert_close(cached.vectors, fresh.vectors, rtol=0, atol=0)
    finally:
        del oc_model.encode_images


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from dermfm.cli import app; app()", *args]


def _run_killed(command: list[str], store: Path, after_shards: int) -> None:
    """Start ``command`` and SIGKILL it once ``after_shards`` shards exist (or at exit)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list((store / "shards").glob("*.parquet"))) >= after_shards:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_killed_then_resumed(
    engine_args: list[str], tiny_open_clip: Path, tmp_path: Path
) -> None:
    """SIGKILL a running `dermfm embed`, run it again: every image exactly once."""
    images = tmp_path / "many"
    _images(images, 24, seed=3)
    store = tmp_path / "store"
    args = _cli(
        "embed", str(images), str(store), "-m", str(tiny_open_clip), "--shard-size", "2",
        "--batch-size", "1", "--workers", "1", "--json", *engine_args,
    )  # fmt: skip
    _run_killed(args, store, after_shards=1)
    partial = len(list((store / "shards").glob("*.parquet")))
    assert partial < 12, "the run finished before it was killed"
    _run_killed(args, store, after_shards=partial + 2)
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["skipped"] >= partial and report["skipped"] + report["written"] == 12
    rows = _rows(store)
    assert sorted(rows) == sorted(str(p.relative_to(images)) for p in images.rglob("*.jpg"))
    assert all(r["error"] is None for r in rows.values())
    for path in (store / "shards").glob("*.parquet"):
        assert pq.ParquetFile(path).metadata.num_rows == 2


def test_sigkill_of_local_embed_then_rerun_gives_every_image_once(
    tiny_open_clip: Path, tmp_path: Path
) -> None:
    assert_killed_then_resumed([], tiny_open_clip, tmp_path)
