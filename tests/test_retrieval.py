"""Retrieval: exact search equals brute force, persistence, incremental adds, approximate kinds."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

import dermfm
from dermfm.errors import IndexStoreError
from dermfm.retrieval import Index


def _library(root: Path, photos: list[tuple[Path, str]]) -> Path:
    """A case library folder of photos in per-label sub-folders (copied to tmp only)."""
    for path, label in photos:
        (root / label.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / label.replace(" ", "_") / path.name)
    return root


def _photos(library: Path) -> list[Path]:
    """The library's photo files (JPEG, PNG, WebP, HEIC), sorted."""
    return sorted(p for p in library.rglob("*") if p.is_file())


@pytest.fixture
def library(tmp_path: Path, generated_images) -> Path:
    """A case library of the drawn photos (four file formats, seven labels)."""
    return _library(tmp_path / "library", generated_images)


@pytest.fixture
def skin_library(tmp_path: Path, skin_images) -> Path:
    """A case library of the drawn photos, and (``real_data``) of real photos."""
    return _library(tmp_path / "library", skin_images)


def _brute_force(model, paths: list[Path], query: np.ndarray, k: int) -> list[str]:
    vectors = model.embed_images(paths).vectors.numpy()
    order = np.argsort(-(vectors @ query), kind="stable")[:k]
    return [str(paths[i]) for i in order]


def test_exact_search_returns_the_brute_force_neighbours(
    oc_model, skin_library: Path, tmp_path: Path
) -> None:
    index, report = Index.build(tmp_path / "idx", skin_library, oc_model)
    paths = _photos(skin_library)
    assert report.added == len(paths) == len(index)
    query_image = paths[3]
    q = oc_model.embed_images([query_image]).vectors[0].numpy()
    hits = index.search(str(query_image), k=5)
    assert [h.path for h in hits] == _brute_force(oc_model, paths, q, 5)
    assert hits[0].path == str(query_image) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].label == query_image.parent.name
    text_q = oc_model.encode_texts(["blue-whitish veil"])[0].numpy()
    text_hits = index.search("blue-whitish veil", k=len(paths))
    assert [h.path for h in text_hits] == _brute_force(oc_model, paths, text_q, len(paths))
    assert [h.rank for h in text_hits] == list(range(1, len(paths) + 1))


def test_index_persists_and_grows_incrementally(
    oc_model, library: Path, tmp_path: Path, image_files
) -> None:
    all_paths = _photos(library)
    first, second = all_paths[:6], all_paths[6:]
    index, _ = Index.build(tmp_path / "idx", first, oc_model)
    index.close()
    reopened = Index.open(tmp_path / "idx", oc_model)
    report = reopened.add([*first[:2], *second, image_files["empty"]])
    assert report.added == len(second)
    assert len(report.duplicates) == 2
    assert [e.reason for e in report.errors] == ["empty file (0 bytes)"]
    assert len(reopened) == len(all_paths)
    reopened.close()
    final = Index.open(tmp_path / "idx", oc_model)
    q = oc_model.encode_texts(["nodule"])[0].numpy()
    assert [h.path for h in final.search("nodule", k=4)] == _brute_force(
        oc_model, [Path(p) for p in sorted(map(str, all_paths))], q, 4
    )


def test_a_lost_or_corrupt_faiss_file_is_rebuilt_from_the_database(
    oc_model, library: Path, tmp_path: Path
) -> None:
    index, _ = Index.build(tmp_path / "idx", library, oc_model)
    expected = [h.path for h in index.search("plaque", k=5)]
    index.close()
    (tmp_path / "idx" / "vectors.faiss").write_bytes(b"garbage")
    assert [
        h.path for h in Index.open(tmp_path / "idx", oc_model).search("plaque", k=5)
    ] == expected
    (tmp_path / "idx" / "vectors.faiss").unlink()
    assert len(Index.open(tmp_path / "idx", oc_model)) == len(_photos(library))


def test_csv_with_labels_and_captions(oc_model, generated_images, tmp_path: Path) -> None:
    table = tmp_path / "cases.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "caption"])
        for path, label in generated_images[:5]:
            writer.writerow([path, label, f"case of {label}"])
    index, report = Index.build(tmp_path / "idx", table, oc_model)
    assert report.added == 5
    hit = index.search(str(generated_images[2][0]), k=1)[0]
    label = generated_images[2][1]
    assert hit.label == label and hit.caption == f"case of {label}"


def test_build_never_overwrites_silently(oc_model, library: Path, tmp_path: Path) -> None:
    Index.build(tmp_path / "idx", library, oc_model)[0].close()
    with pytest.raises(IndexStoreError, match="already exists"):
        Index.build(tmp_path / "idx", library, oc_model)
    index, _ = Index.build(tmp_path / "idx", _photos(library)[:3], oc_model, overwrite=True)
    assert len(index) == 3


def test_opening_with_another_model_is_refused(
    oc_model, library: Path, tmp_path: Path, tiny_transformers_clip: Path
) -> None:
    Index.build(tmp_path / "idx", library, oc_model)[0].close()
    with pytest.raises(IndexStoreError, match="other weights"):
        Index.open(tmp_path / "idx", dermfm.load_model(tiny_transformers_clip))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_query_itself(
    oc_model, library: Path, tmp_path: Path, kind: str
) -> None:
    index, _ = Index.build(tmp_path / kind, library, oc_model, kind=kind)
    paths = _photos(library)
    for query in paths[:5]:
        assert index.search(str(query), k=3)[0].path == str(query)
    index.add([])  # adding nothing changes nothing
    assert len(index) == len(paths)
