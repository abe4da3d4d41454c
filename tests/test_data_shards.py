"""WebDataset shards: packing, reading back with webdataset, and the ShardDataset stream."""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dermfm.data import CaptionSynthesizer, ManifestError, Record, SampleBuilder, read_manifest
from dermfm.data.shards import (
    PackReport,
    ShardDataset,
    pack_shards,
    read_shard_index,
    record_from_json,
)
from dermfm.errors import ImageError

N = 24


def _fields(record: Record) -> dict:
    return {
        "image": record.image,
        "texts": record.texts,
        "label": record.label,
        "split": record.split,
        "source": record.source,
        "group": record.group,
        "metadata": record.metadata,
        "concepts": record.concepts,
        "mask_box": record.mask_box,
    }


def _image(path: Path, seed: int, size: tuple[int, int] = (60, 45), fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        path, format=fmt
    )
    return path


def _records(folder: Path, n: int = N) -> list[Record]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        Record(
            image=str(_image(folder / f"img{i:03d}.jpg", i)),
            texts=(f"caption {i}",),
            label="melanoma" if i % 3 == 0 else "nevus",
            split="val" if i % 4 == 0 else "train",
            source="synthetic",
            group=f"lesion{i // 2}",
            metadata={"modality": "dermoscopy", "age": str(20 + i)},
            concepts={"blue_white_veil": i % 2 == 0},
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def builder() -> SampleBuilder:
    transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])
    return SampleBuilder(transform, CaptionSynthesizer(("free",)), {}, seed=0)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Record], PackReport]:
    root = tmp_path_factory.mktemp("shards")
    records = _records(root / "images")
    report = pack_shards(records, root / "out", shard_size=4)
    return root / "out", records, report


def _indices(dataset: ShardDataset) -> list[int]:
    return [sample["index"] for sample in dataset]


def test_pack_reads_back_with_webdataset(packed: tuple[Path, list[Record], PackReport]) -> None:
    import webdataset as wds

    out, records, report = packed
    assert report.samples == N and not report.errors
    assert [p.name for p in report.shards] == [f"shard-{i:06d}.tar" for i in range(6)]
    assert not list(out.glob("*.tmp"))
    shards, total = read_shard_index(out)
    assert shards == report.shards and total == N
    index = json.loads((out / "shard-index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [4] * 6 and index["samples"] == N

    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(N)]
    for sample, record in zip(samples, records, strict=True):
        row = json.loads(sample["json"])
        assert row == record.to_dict()
        assert _fields(record_from_json(row)) == _fields(record)
        # no max_side: the original JPEG bytes are stored untouched
        assert sample["jpg"] == Path(record.image).read_bytes()


def test_manifest_records_round_trip(tmp_path: Path) -> None:
    import webdataset as wds

    _image(tmp_path / "a.jpg", 1)
    _image(tmp_path / "b.png", 2, fmt="PNG")
    rows = [
        {
            "image": "a.jpg",
            "texts": ["pigmented lesion", "second caption"],
            "label": "melanoma",
            "split": "val",
            "source": "derm7pt",
            "group": "case1",
            "metadata": {"modality": "dermoscopy", "body_site": "back"},
            "concepts": {"blue_white_veil": True, "streaks": False},
            "mask_box": [0.0, 0.0, 0.25, 0.1],
        },
        {"image": "b.png", "label": "nevus"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    records = read_manifest(manifest)
    report = pack_shards(records, tmp_path / "out")
    assert report.samples == 2 and len(report.shards) == 1
    samples = list(wds.WebDataset([str(report.shards[0])], shardshuffle=False))
    back = [record_from_json(json.loads(s["json"])) for s in samples]
    assert [_fields(r) for r in back] == [_fields(r) for r in records]
    assert back[0].mask_box == (0.0, 0.0, 0.25, 0.1) and back[0].concepts["streaks"] is False
    # the PNG was re-encoded as JPEG
    assert samples[1]["jpg"][:3] == b"\xff\xd8\xff"
    assert Image.open(io.BytesIO(samples[1]["jpg"])).format == "JPEG"


def test_max_side_shrinks_images(tmp_path: Path) -> None:
    import webdataset as wds

    big = Record(image=str(_image(tmp_path / "big.jpg", 3, size=(120, 90))))
    small = Record(image=str(_image(tmp_path / "small.jpg", 4, size=(30, 20))))
    report = pack_shards([big, small], tmp_path / "out", max_side=40)
    samples = list(wds.WebDataset([str(report.shards[0])], shardshuffle=False))
    shrunk = Image.open(io.BytesIO(samples[0]["jpg"]))
    assert shrunk.format == "JPEG" and shrunk.size == (40, 30)
    # already within max_side: kept byte for byte
    assert samples[1]["jpg"] == Path(small.image).read_bytes()
    assert json.loads((tmp_path / "out" / "shard-index.json").read_text())["max_side"] == 40


def test_corrupt_images_skipped_and_reported(tmp_path: Path) -> None:
    records = _records(tmp_path / "images", 5)
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    truncated = tmp_path / "images" / "truncated.jpg"
    truncated.write_bytes(Path(records[0].image).read_bytes()[:300])
    records[1:1] = [Record(image=str(broken)), Record(image=str(truncated))]
    records.append(Record(image=str(tmp_path / "missing.jpg")))

    report = pack_shards(records, tmp_path / "out", shard_size=2)
    assert report.samples == 5
    assert all(isinstance(e, ImageError) for e in report.errors)
    assert [e.path for e in report.errors] == [str(broken), str(truncated), records[-1].image]
    shards, total = read_shard_index(tmp_path / "out")
    assert total == 5 and len(shards) == 3
    index = json.loads((tmp_path / "out" / "shard-index.json").read_text())
    assert [s["image"] for s in index["skipped"]] == [e.path for e in report.errors]


def test_refuses_to_overwrite(packed: tuple[Path, list[Record], PackReport]) -> None:
    out, records, _ = packed
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ManifestError, match=re.escape(str(out))):
        pack_shards(records[:2], out)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # another prefix in the same folder is fine
    other = pack_shards(records[:2], out, prefix="extra")
    assert [p.name for p in other.shards] == ["extra-000000.tar"]
    assert read_shard_index(out, prefix="extra") == (other.shards, 2)
    for p in [*other.shards, out / "extra-index.json"]:
        p.unlink()


def test_every_sample_once_per_epoch(packed, builder: SampleBuilder) -> None:
    out, _, _ = packed
    dataset = ShardDataset(out, builder, shuffle_buffer=8)
    samples = list(dataset)
    assert sorted(s["index"] for s in samples) == list(range(N))
    assert samples[0]["pixels"].shape == (3, 32, 32)
    assert all(isinstance(s["texts"][0], str) for s in samples)
    # every accepted form of `shards` reads the same
    pattern = str(out / "shard-{000000..000005}.tar")
    for form in (out / "shard-index.json", pattern, sorted(out.glob("shard-*.tar"))):
        assert _indices(ShardDataset(form, builder, shuffle_buffer=8)) == [
            s["index"] for s in samples
        ]


def test_ranks_are_disjoint_and_complete(packed, builder: SampleBuilder) -> None:
    out, _, _ = packed
    parts = []
    for rank in range(2):
        dataset = ShardDataset(out, builder, rank=rank, world=2)
        dataset.set_epoch(3)
        parts.append(_indices(dataset))
    assert parts[0] and parts[1]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(N))


def test_order_is_deterministic_per_epoch(packed, builder: SampleBuilder) -> None:
    out, _, _ = packed
    first = ShardDataset(out, builder, seed=7, shuffle_buffer=6)
    second = ShardDataset(out, builder, seed=7, shuffle_buffer=6)
    first.set_epoch(1)
    second.set_epoch(1)
    samples_a, samples_b = list(first), list(second)
    assert [s["index"] for s in samples_a] == [s["index"] for s in samples_b]
    assert all(
        torch.equal(a["pixels"], b["pixels"]) for a, b in zip(samples_a, samples_b, strict=True)
    )
    assert [s["index"] for s in samples_a] != list(range(N))
    first.set_epoch(2)
    assert _indices(first) != [s["index"] for s in samples_a]
    assert sorted(_indices(first)) == list(range(N))


def test_set_skip_yields_the_tail(packed, builder: SampleBuilder) -> None:
    out, _, _ = packed
    dataset = ShardDataset(out, builder, seed=3, shuffle_buffer=5)
    dataset.set_epoch(4)
    full = list(dataset)
    for k in (0, 1, 9, N):
        dataset.set_skip(k)
        tail = list(dataset)
        assert [s["index"] for s in tail] == [s["index"] for s in full[k:]]
        assert all(
            torch.equal(a["pixels"], b["pixels"]) for a, b in zip(tail, full[k:], strict=True)
        )
    dataset.set_epoch(5)
    assert dataset.skip == 0


def test_workers_split_shards_and_skip(packed, builder: SampleBuilder) -> None:
    out, _, _ = packed
    dataset = ShardDataset(out, builder, seed=1, shuffle_buffer=4)
    dataset.set_epoch(2)

    def run() -> list[int]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
        return [i for batch in loader for i in batch["index"].tolist()]

    full = run()
    assert sorted(full) == list(range(N))
    dataset.set_skip(6, batch_size=2)
    assert run() == full[6:]


def test_splits_filter(packed, builder: SampleBuilder) -> None:
    out, records, _ = packed
    val = ShardDataset(out, builder, splits=["val"])
    assert sorted(_indices(val)) == [i for i, r in enumerate(records) if r.split == "val"]


def test_bad_image_in_shard_is_skipped_with_warning(tmp_path: Path, builder) -> None:
    import tarfile

    records = _records(tmp_path / "images", 3)
    report = pack_shards(records, tmp_path / "out")
    broken = tmp_path / "broken.tar"
    with tarfile.open(report.shards[0]) as src, tarfile.open(broken, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "000000001.jpg":
                data = b"garbage"
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        indices = _indices(ShardDataset([broken], builder, shuffle_buffer=0))
    assert indices == [0, 2]
    assert any("broken.tar:000000001" in str(w.message) for w in caught)
