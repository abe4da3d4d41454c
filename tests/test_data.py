"""Training data: manifests, source readers and splits, caption synthesis, transforms."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dermfm.data import (
    CaptionSynthesizer,
    ManifestDataset,
    ManifestError,
    Record,
    SampleBuilder,
    mask_region,
    read_manifest,
    read_source,
    train_transform,
    write_manifest,
)


def _image(path: Path, colour: tuple[int, int, int] = (150, 90, 70)) -> Path:
    Image.new("RGB", (60, 40), colour).save(path)
    return path


def test_csv_manifest_reads_texts_concepts_metadata_and_relative_paths(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text(
        "image,text,label,split,age,concept:scale,mask_box\n"
        'a.jpg,red plaque || scaly plaque,psoriasis,val,54,present,"0,0.5,0.3,1"\n'
    )
    [r] = read_manifest(tmp_path / "m.csv")
    assert r.image == str((tmp_path / "a.jpg").resolve())
    assert r.texts == ("red plaque", "scaly plaque")
    assert (r.label, r.split, r.metadata, r.concepts) == (
        "psoriasis",
        "val",
        {"age": "54"},
        {"scale": True},
    )
    assert r.mask_box == (0.0, 0.5, 0.3, 1.0)


def test_jsonl_round_trip_and_no_overwrite(tmp_path: Path) -> None:
    record = Record(
        image=str(tmp_path / "x.jpg"),
        texts=("a",),
        label="melanoma",
        source="s",
        group="g1",
        metadata={"sex": "female"},
        concepts={"streaks": False},
        mask_box=(0.0, 0.6, 0.34, 1.0),
    )
    path = write_manifest([record], tmp_path / "m.jsonl")
    [back] = read_manifest(path)
    assert back.to_dict() == record.to_dict()
    with pytest.raises(ManifestError, match="already exists"):
        write_manifest([record], path)
    assert read_manifest(path, splits=["val"]) == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("text,label\nx,y\n", "needs an 'image' column"),
        ('image,mask_box\na.jpg,"1,2"\n', "mask_box"),
        ("image,concept:scale\na.jpg,maybe\n", "not true/false"),
    ],
)
def test_bad_csv_rows_name_the_file_and_line(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(ManifestError, match=problem) as info:
        read_manifest(tmp_path / "m.csv")
    assert "m.csv" in str(info.value)


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"image": "a.jpg"}\n{oops\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2"):
        read_manifest(tmp_path / "m.jsonl")


def test_ham10000_split_keeps_every_lesion_in_one_split(shared_data: Path) -> None:
    records = read_source("ham10000", shared_data)
    splits_of = defaultdict(set)
    for r in records:
        splits_of[r.group].add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    counts = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    assert 0.6 < counts["train"] / len(records) < 0.8 and counts["test"] > 1000
    with (shared_data / "ham10000" / "labels.csv").open() as f:
        assert len(records) == sum(1 for _ in csv.DictReader(f))
    r = records[0]
    assert r.metadata["modality"] == "dermoscopy" and r.mask_box is None


def test_derm7pt_reader_maps_criteria_and_drops_excluded_rows(shared_data: Path) -> None:
    records = read_source("derm7pt", shared_data)
    with (shared_data / "derm7pt" / "labels.csv").open() as f:
        rows = {str((shared_data / "derm7pt" / r["file"]).resolve()): r for r in csv.DictReader(f)}
    assert all(rows[r.image]["split_symmetric"] != "excluded" for r in records)
    assert {r.split for r in records} == {"train", "test"}
    for r in records[:50]:
        row = rows[r.image]
        assert r.concepts["atypical_pigment_network"] == (row["pigment_network"] == "atypical")
        assert r.concepts["blue_whitish_veil"] == (row["blue_whitish_veil"] == "present")


def test_dermnet_records_carry_the_watermark_mask_and_share_splits_by_photo(
    shared_data: Path,
) -> None:
    records = read_source("dermnet_nz", shared_data)
    assert all(r.mask_box == (0.0, 0.6, 0.34, 1.0) for r in records)
    splits_of = defaultdict(set)
    for r in records:
        splits_of[r.group].add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    assert len({r.metadata["dataset_label"] for r in records}) == 99


def test_captions_cover_each_view_from_the_data() -> None:
    captions = CaptionSynthesizer()
    ham = Record(
        image="x",
        label="melanoma",
        metadata={
            "modality": "dermoscopy",
            "class_name": "melanoma",
            "age": "45.0",
            "sex": "male",
            "body_site": "lower extremity",
        },
    )
    views = dict(zip(captions.views, captions(ham, random.Random(0)), strict=True))
    assert "melanoma" in views["ontology"].lower() or "malignant" in views["ontology"].lower()
    assert views["concept"] is None and views["caption"] is None
    assert any(k in views["metadata"] for k in ("45", "lower extremity", "male", "man"))
    assert views["free"]
    d7 = Record(
        image="x",
        label="melanoma",
        metadata={"modality": "dermoscopy"},
        concepts={"streaks": True, "irregular_streaks": True, "blue_whitish_veil": False},
    )
    concept = CaptionSynthesizer(("concept",)).view("concept", d7, random.Random(1))
    assert "streak" in concept.lower() or "pseudopod" in concept.lower()
    assert "veil" not in concept.lower()
    own = Record(image="x", texts=("my caption",), label=None)
    assert CaptionSynthesizer(("caption", "ontology"))(own, random.Random(0)) == [
        "my caption",
        None,
    ]


def test_captions_are_deterministic_for_a_seed() -> None:
    c = CaptionSynthesizer()
    r = Record(image="x", label="psoriasis", metadata={"modality": "clinical"})
    assert c(r, random.Random(5)) == c(r, random.Random(5))
    assert len({tuple(map(str, c(r, random.Random(s)))) for s in range(20)}) > 3


def test_user_caption_templates_replace_the_packaged_ones(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "schema_version: 1\nmodality: {default: [pic]}\nviews: {free: ['{modality} of {name}!']}\n"
    )
    c = CaptionSynthesizer(("free",), path=tmp_path / "c.yaml")
    node = c.ontology["psoriasis"]
    expected = {f"pic of {n}!" for n in (node.name, *node.synonyms)}
    texts = {c(Record(image="x", label="psoriasis"), random.Random(s))[0] for s in range(30)}
    assert texts <= expected and "pic of psoriasis!" in texts
    with pytest.raises(ValueError, match="unknown caption views"):
        CaptionSynthesizer(("smell",))


def test_mask_region_blanks_the_box_only() -> None:
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    masked = np.asarray(mask_region(image, (0.0, 0.6, 0.34, 1.0)))
    assert (masked[30:, :34] == (124, 116, 104)).all()
    assert (masked[:30] == (255, 0, 0)).all() and (masked[:, 34:] == (255, 0, 0)).all()
    assert np.asarray(image)[40, 10].tolist() == [255, 0, 0]  # the input is untouched


def test_samples_are_reproducible_per_epoch_and_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "n.png"
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(path)
    record = Record(image=str(path), label="psoriasis", metadata={"modality": "clinical"})
    transform = train_transform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    builder = SampleBuilder(transform, CaptionSynthesizer(("free",)), {"psoriasis": 0}, seed=1)
    data = ManifestDataset([record, Record(image=str(tmp_path / "missing.png"))], builder, 64)
    assert len(data) == 1 and "missing.png" in str(data.skipped[0])
    torch.manual_seed(0)
    a = data[0]
    torch.manual_seed(123)  # the global RNG does not matter
    b = data[0]
    assert torch.equal(a["pixels"], b["pixels"]) and a["texts"] == b["texts"]
    twice = data[(0, 5)], data[(0, 6)]  # one record drawn twice in an epoch: two views
    assert not torch.equal(twice[0]["pixels"], twice[1]["pixels"])
    assert torch.equal(data[(0, 5)]["pixels"], twice[0]["pixels"])
    data.set_epoch(1)
    assert not torch.equal(data[0]["pixels"], a["pixels"])
    assert a["label"] == 0 and a["pixels"].shape == (3, 32, 32)


def test_eval_samples_apply_the_mask(tmp_path: Path) -> None:
    path = _image(tmp_path / "w.png", (250, 250, 250))
    record = Record(image=str(path), mask_box=(0.0, 0.5, 0.5, 1.0))
    builder = SampleBuilder(transforms.PILToTensor(), CaptionSynthesizer(("free",)), {})
    pixels = ManifestDataset([record], builder)[0]["pixels"]
    assert pixels[:, 30, 5].tolist() == [124, 116, 104] and pixels[:, 5, 50].tolist() == [250] * 3
