"""CLIP_benchmark webdataset export and import: real images round-trip byte for byte, with their
labels and class names, through dermfm's importer and CLIP_benchmark's own reader."""

from __future__ import annotations

import dataclasses
import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermfm.data import (
    ManifestError,
    Record,
    export_clip_benchmark_wds,
    read_clip_benchmark_wds,
    read_dataset,
    read_source,
)
from dermfm.knowledge import diagnosis_templates, load_label_set


@pytest.fixture(scope="module")
def records(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    """Real HAM10000 test and val records (every class), one as PNG and one as BMP."""
    source = read_source("ham10000", shared_data)
    picked: list[Record] = []
    for split, per_class in (("test", 4), ("val", 2)):
        for label in load_label_set("ham7").labels:
            of_class = [
                r for r in source if r.split == split and r.metadata["dataset_label"] == label
            ]
            picked += of_class[:per_class]
    folder = tmp_path_factory.mktemp("formats")
    for index, fmt in ((0, "png"), (1, "bmp")):
        converted = folder / f"{Path(picked[index].image).stem}.{fmt}"
        Image.open(picked[index].image).save(converted)
        picked[index] = dataclasses.replace(picked[index], image=str(converted))
    return picked


def _pixels(source: str | Path | bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    return np.asarray(image.convert("RGB"))


def _expected_classes(records: list[Record]) -> list[int]:
    labels = load_label_set("ham7").labels
    return [labels.index(r.metadata["dataset_label"]) for r in records]


def test_export_writes_the_clip_benchmark_layout(records: list[Record], tmp_path: Path) -> None:
    out = tmp_path / "wds"
    report = export_clip_benchmark_wds(records, out, label_set="ham7", max_count=8)
    names = load_label_set("ham7").names
    assert (out / "classnames.txt").read_text() == "".join(f"{n}\n" for n in names)
    templates = (out / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates == [t.replace("{}", "{c}") for t in diagnosis_templates("skin8")]
    test = [r for r in records if r.split == "test"]
    assert report.samples == {"test": len(test), "val": len(records) - len(test)}
    assert (out / "test" / "nshards.txt").read_text().strip() == str(-(-len(test) // 8))
    with tarfile.open(out / "test" / "0.tar") as tar:
        members = tar.getnames()
        first_cls = tar.extractfile("s0000000.cls").read()  # type: ignore[union-attr]
    assert members[:4] == ["s0000000.png", "s0000000.cls", "s0000001.png", "s0000001.cls"]
    assert first_cls == str(_expected_classes(test)[0]).encode()
    assert len(members) == 16 and not report.errors and not report.unlabelled


def test_round_trip_through_dermfm_and_clip_benchmark(
    records: list[Record], tmp_path: Path
) -> None:
    out = tmp_path / "wds"
    export_clip_benchmark_wds(records, out, label_set="ham7", max_count=5)
    ham7 = load_label_set("ham7")
    for split in ("test", "val"):
        originals = [r for r in records if r.split == split]
        back = read_clip_benchmark_wds(out, split, extract_to=tmp_path / "x")
        assert back.label_set.labels == ham7.names and back.templates == diagnosis_templates()
        assert back.report.records == len(originals) and back.report.skipped == {}
        for got, original in zip(back.records, originals, strict=True):
            assert (
                got.split == split and got.metadata["class_name"] == original.metadata["class_name"]
            )
            if Path(original.image).suffix == ".bmp":  # re-encoded losslessly as PNG
                assert got.image.endswith(".png")
                assert np.array_equal(_pixels(got.image), _pixels(original.image))
            else:
                assert Path(got.image).read_bytes() == Path(original.image).read_bytes()
            if original.metadata["dataset_label"] != "vasc":  # "vascular" is no ontology name
                assert got.label == original.label

    clip_benchmark = pytest.importorskip(
        "clip_benchmark.datasets.builder", reason="clip_benchmark (1.6.2) is not installed"
    )
    with warnings.catch_warnings():  # webdataset warns that CLIP_benchmark sets no shardshuffle
        warnings.simplefilter("ignore")
        dataset = clip_benchmark.build_wds_dataset("wds/ham7", None, "test", str(out))
        samples = list(dataset)
    test = [r for r in records if r.split == "test"]
    assert dataset.classes == ham7.names
    assert dataset.templates == [t.replace("{}", "{c}") for t in diagnosis_templates("skin8")]
    assert [label for _, label in samples] == _expected_classes(test)
    for (image, _), original in zip(samples, test, strict=True):
        assert np.array_equal(np.asarray(image.convert("RGB")), _pixels(original.image))


def test_import_extracts_into_the_cache_once(records: list[Record], tmp_path: Path) -> None:
    out = tmp_path / "wds"
    export_clip_benchmark_wds(records[:6], out, label_set="ham7")
    first = read_clip_benchmark_wds(out)
    assert {r.split for r in first.records} == {"test"} and len(first.records) == 6
    assert all(Path(r.image).is_file() and "clip_benchmark_wds" in r.image for r in first.records)
    stamps = [Path(r.image).stat().st_mtime_ns for r in first.records]
    again = read_clip_benchmark_wds(out)
    assert [r.image for r in again.records] == [r.image for r in first.records]
    assert [Path(r.image).stat().st_mtime_ns for r in again.records] == stamps
    # a spec with the webdataset layout reads every split, renamed by its map
    spec = {"name": "w", "layout": "clip_benchmark_wds", "split": {"method": "folder"}}
    spec["split"]["map"] = {"test": "holdout"}
    assert {r.split for r in read_dataset(spec, out).records} == {"holdout"}


def test_export_never_overwrites_unless_asked(records: list[Record], tmp_path: Path) -> None:
    out = tmp_path / "wds"
    test = [r for r in records if r.split == "test"]
    val = [r for r in records if r.split == "val"]
    export_clip_benchmark_wds(test, out, label_set="ham7", max_count=4)
    with pytest.raises(ManifestError, match=r"test.*already exists"):
        export_clip_benchmark_wds(test, out, label_set="ham7")
    export_clip_benchmark_wds(val, out, label_set="ham7")  # another split, same class names
    with pytest.raises(ManifestError, match=r"classnames\.txt: already exists"):
        export_clip_benchmark_wds(val, out, label_set="pad6", overwrite=False)
    report = export_clip_benchmark_wds(test[:3], out, label_set="ham7", overwrite=True)
    assert sorted(p.name for p in (out / "test").iterdir()) == ["0.tar", "nshards.txt"]
    assert report.samples == {"test": 3}
    assert len(read_clip_benchmark_wds(out, "val", extract_to=tmp_path / "x").records) == len(val)


def test_unreadable_and_unlabelled_records_are_reported_not_written(
    records: list[Record], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    bad = [dataclasses.replace(records[2], image=str(broken))]
    bad.append(dataclasses.replace(records[3], label="psoriasis", metadata={}))
    report = export_clip_benchmark_wds([*bad, records[4]], tmp_path / "wds", label_set="ham7")
    assert [e.path for e in report.errors] == [str(broken)]
    assert report.unlabelled == [records[3].image] and report.samples == {"test": 1}
    only = export_clip_benchmark_wds(bad[:1], tmp_path / "none", label_set="ham7")
    assert only.samples == {"test": 0} and not (tmp_path / "none" / "test").exists()


def test_malformed_shards_are_named(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    (tmp_path / "classnames.txt").write_text("melanoma\n")
    (tmp_path / "test" / "nshards.txt").write_text("1\n")
    with tarfile.open(tmp_path / "test" / "0.tar", "w") as tar:
        info = tarfile.TarInfo("s0000000.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ManifestError, match=r"0\.tar:s0000000: .*\.cls"):
        read_clip_benchmark_wds(tmp_path, "test")
    (tmp_path / "test" / "nshards.txt").write_text("2\n")
    with pytest.raises(ManifestError, match=r"1\.tar: not found"):
        read_clip_benchmark_wds(tmp_path, "test")


def test_default_classes_are_the_records_labels_sorted(
    records: list[Record], tmp_path: Path
) -> None:
    some = [r for r in records if r.metadata["dataset_label"] in ("nv", "bcc", "mel")]
    report = export_clip_benchmark_wds(some, tmp_path / "wds", templates=None)
    assert report.classnames == ["basal cell carcinoma", "melanoma", "nevus"]
    assert not (tmp_path / "wds" / "zeroshot_classification_templates.txt").exists()
    back = read_clip_benchmark_wds(tmp_path / "wds", extract_to=tmp_path / "x")
    assert [r.label for r in back.records] == [r.label for r in some]
    assert back.templates == ()
    with pytest.raises(ValueError, match="cannot be a folder name"):
        export_clip_benchmark_wds([dataclasses.replace(some[0], split="../up")], tmp_path / "w2")
