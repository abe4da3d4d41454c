"""Dataset specs: every published layout read from a miniature copy built here (real images from
../shared/data, tables with the published column names), the training sources unchanged, and
clear errors for bad specs."""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from dermfm.data import (
    ManifestError,
    dataset_names,
    load_dataset_spec,
    read_dataset,
    read_source,
    source_specs,
)
from dermfm.knowledge import load_label_set

HAM_NODES = {
    "akiec": "actinic_keratosis",
    "bcc": "basal_cell_carcinoma",
    "bkl": "benign_keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic_nevus",
    "vasc": "benign_vascular_lesion",
}
PUBLISHED_SPECS = Path(__file__).resolve().parents[1] / "src" / "dermfm" / "data" / "specs"
ROMAN = {"1": "I", "2": "II", "3": "III", "4": "IV", "5": "V", "6": "VI"}
PUBLISHED = {
    "ham10000_official",
    "pad_ufes_20",
    "fitzpatrick17k",
    "ddi",
    "derm7pt_official",
    "isic2019",
    "isic2020",
    "isic2020_binary",
    "scin",
    "sd198",
    "dermnet_folders",
    "generic_csv",
    "generic_image_folder",
}


def reference_split(group: str, salt: str = "dermfm-2026") -> str:
    """The hash rule written out: SHA-1 of ``salt:group``, first 8 bytes as a fraction of 2**64,
    cut at 0.7 (train) and 0.8 (val)."""
    u = int(hashlib.sha1(f"{salt}:{group}".encode()).hexdigest()[:16], 16) / 2**64
    return "train" if u < 0.7 else "val" if u < 0.8 else "test"


def _table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _copy(source: Path, target: Path, png: bool = False) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if png:
        Image.open(source).save(target, format="PNG")
    else:
        shutil.copyfile(source, target)
    return target


@pytest.fixture(scope="module")
def ham(shared_data: Path) -> list[dict[str, str]]:
    return _table(shared_data / "ham10000" / "labels.csv")


@pytest.fixture(scope="module")
def clinical(shared_data: Path) -> list[Path]:
    """Real clinical photographs (DermNet NZ), one per topic, for the clinical layouts."""
    rows = _table(shared_data / "dermnet_nz" / "labels.csv")
    firsts = {r["label"]: r["file"] for r in reversed(rows)}
    return [shared_data / "dermnet_nz" / f for f in sorted(firsts.values())[:12]]


def test_every_published_spec_is_packaged_and_valid() -> None:
    names = set(dataset_names())
    assert PUBLISHED | {"ham10000", "derm7pt", "dermnet_nz"} <= names
    assert {"fitzpatrick17k_21", "pad_ufes20", "sd198_27"} <= set(source_specs())
    for name in names:
        spec = load_dataset_spec(name)
        assert spec["name"] == name and Path(spec["spec_file"]).is_file()


@pytest.mark.parametrize("name", ["ham10000", "derm7pt", "dermnet_nz"])
def test_training_sources_give_the_records_computed_straight_from_labels_csv(
    shared_data: Path, name: str
) -> None:
    folder = shared_data / name
    rows = _table(folder / "labels.csv")
    label_set = {"ham10000": "ham7", "dermnet_nz": "dermnet"}.get(name, name)
    labels = set(load_label_set(label_set).labels)
    expected: list[tuple[str, str, str]] = []
    for r in rows:
        if r["label"] not in labels:
            continue
        if name == "derm7pt":
            split = {"train": "train", "valid": "test"}.get(r["split_symmetric"])
        else:
            split = reference_split(r["lesion_id" if name == "ham10000" else "sha1_original"])
        if split:
            expected.append((str((folder / r["file"]).resolve()), split, r["label"]))
    read = read_dataset(name, shared_data)
    got = [(r.image, r.split, r.metadata["dataset_label"]) for r in read.records]
    used = len(got)
    if name == "dermnet_nz":  # near-duplicate photos join a group named by its smallest SHA-1
        own = {str((folder / r["file"]).resolve()): r["sha1_original"] for r in rows}
        merged = {r.image for r in read.records if r.group != f"dermnet_nz:{own[r.image]}"}
        assert 0 < len(merged) < 0.05 * len(got)
        expected = [e for e in expected if e[0] not in merged]
        got = [g for g in got if g[0] not in merged]
    assert got == expected
    assert read_source(name, shared_data) == read.records
    assert read.report.rows == len(rows) and read.report.rows_skipped == len(rows) - used
    assert not read.report.missing_images


def test_ham10000_official_layout(
    shared_data: Path, ham: list[dict[str, str]], tmp_path: Path
) -> None:
    by_lesion: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in ham:
        by_lesion[r["lesion_id"]].append(r)
    multi = [rs for rs in by_lesion.values() if len(rs) >= 2][:3]
    singles = {r["label"]: r for rs in by_lesion.values() if len(rs) == 1 for r in rs}
    picked = [r for rs in multi for r in rs] + list(singles.values())
    folder = tmp_path / "HAM10000"
    header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    table = []
    for i, r in enumerate(picked):
        image_id = Path(r["file"]).stem
        part = f"HAM10000_images_part_{i % 2 + 1}"
        _copy(shared_data / "ham10000" / r["file"], folder / part / f"{image_id}.jpg")
        age = f"{float(r['age'])}" if r["age"] else ""  # the release writes ages as 45.0
        table.append([r["lesion_id"], image_id, r["label"], r["dx_type"], age, r["sex"], "back"])
    table[0][5] = "unknown"
    table.append(["HAM_9999999", "ISIC_9999999", "nv", "histo", "50.0", "male", "back"])
    table.append(["HAM_9999998", Path(picked[0]["file"]).stem, "xyz", "histo", "", "", ""])
    _write(folder / "HAM10000_metadata.csv", header, table)

    read = read_dataset("ham10000_official", tmp_path)
    records = read.records
    assert len(records) == len(picked)
    for r, row in zip(records, picked, strict=True):
        assert Path(r.image).name == Path(row["file"]).name and Path(r.image).is_file()
        assert r.label == HAM_NODES[row["label"]] and r.metadata["dataset_label"] == row["label"]
        assert r.group == f"ham10000_official:{row['lesion_id']}"
        assert r.split == reference_split(row["lesion_id"])
        assert r.metadata["modality"] == "dermoscopy" and r.metadata["body_site"] == "back"
        if row["age"]:
            assert r.metadata["age"] == str(int(float(row["age"])))
    assert "sex" not in records[0].metadata
    assert {r.metadata.get("sex") for r in records[1:]} <= {"female", "male"}
    report = read.report
    assert report.rows == len(picked) + 2
    assert report.skipped == {"unknown label": {"xyz": 1}, "missing image": {"": 1}}
    assert report.missing_images == (
        str((folder / "HAM10000_images_part_1" / "ISIC_9999999.jpg").resolve()),
    )
    assert "2 rows skipped" in report.summary() and "unknown label 'xyz' (1)" in report.summary()
    # the root may also be the dataset folder itself
    assert read_dataset("ham10000_official", folder).records == records
    # lesions keep the split they have in the training source
    shared = {Path(r.image).name: r.split for r in read_source("ham10000", shared_data)}
    assert all(shared[Path(r.image).name] == r.split for r in records)


def test_pad_ufes_20_layout(clinical: list[Path], tmp_path: Path) -> None:
    header = [
        *("patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother"),
        *("age", "pesticide", "gender", "skin_cancer_history", "cancer_history"),
        *("has_piped_water", "has_sewage_system", "fitspatrick", "region", "diameter_1"),
        *("diameter_2", "diagnostic", "itch", "grew", "hurt", "changed", "bleed", "elevation"),
        *("img_id", "biopsed"),
    ]
    cases = [  # patient, lesion, age, gender, fitspatrick, region, diagnostic
        ("PAT_1", "10", "55", "FEMALE", "3.0", "FACE", "BCC"),
        ("PAT_1", "11", "55", "FEMALE", "3.0", "ARM", "ACK"),
        ("PAT_2", "20", "71", "MALE", "", "NECK", "MEL"),
        ("PAT_3", "30", "34", "", "6.0", "BACK", "NEV"),
        ("PAT_4", "40", "80", "MALE", "2.0", "CHEST", "SEK"),
        ("PAT_5", "50", "66", "FEMALE", "1.0", "NOSE", "SCC"),
        ("PAT_6", "60", "40", "MALE", "2.0", "HAND", "XYZ"),
    ]
    folder = tmp_path / "PAD-UFES-20"
    rows = []
    for i, (patient, lesion, age, sex, fitz, region, dx) in enumerate(cases):
        img_id = f"{patient}_{lesion}_{100 + i}.png"
        _copy(clinical[i], folder / "images" / f"imgs_part_{i % 2 + 1}" / img_id, png=True)
        values = dict.fromkeys(header, "")
        values.update(patient_id=patient, lesion_id=lesion, age=age, gender=sex)
        values.update(fitspatrick=fitz, region=region, diagnostic=dx, img_id=img_id)
        values["biopsed"] = "True"
        rows.append([values[h] for h in header])
    _write(folder / "metadata.csv", header, rows)

    read = read_dataset("pad_ufes_20", tmp_path)
    nodes = {c.label: c.node for c in load_label_set("pad6").classes}
    assert [r.label for r in read.records] == [nodes[c[6]] for c in cases[:6]]
    assert [r.metadata.get("skin_type") for r in read.records] == [
        "III",
        "III",
        None,
        "VI",
        "II",
        "I",
    ]
    assert [r.metadata.get("sex") for r in read.records] == [
        "female", "female", "male", None, "male", "female"
    ]  # fmt: skip
    assert all(r.split == reference_split(c[0]) for r, c in zip(read.records, cases, strict=False))
    assert read.records[0].group == read.records[1].group == "pad_ufes_20:PAT_1"
    assert (
        read.records[0].metadata["age"] == "55" and read.records[0].metadata["biopsied"] == "True"
    )
    assert read.report.skipped == {"unknown label": {"XYZ": 1}}


def test_fitzpatrick17k_layout(shared_data: Path, clinical: list[Path], tmp_path: Path) -> None:
    published = _table(shared_data / "vocab" / "fitzpatrick17k_labels.csv")
    rows = [r for r in published if r["fitzpatrick_scale"] == "-1"][:1]
    rows += [r for r in published if r["qc"] == "3 Wrongly labelled"][:1]
    rows += [next(r for r in published if r["fitzpatrick_scale"] == s) for s in ROMAN]
    folder = tmp_path / "fitzpatrick17k"
    for row, image in zip(rows, clinical, strict=False):
        _copy(image, folder / "images" / f"{row['md5hash']}.jpg")
    _write(folder / "fitzpatrick17k.csv", list(published[0]), [list(r.values()) for r in rows])

    # by name: the published layout's spec (the development data's source is fitzpatrick17k_21)
    read = read_dataset("fitzpatrick17k", tmp_path)
    kept = [rows[0], *rows[2:]]
    nodes = {c.label: c.node for c in load_label_set("f17k114").classes}
    assert [r.metadata["dataset_label"] for r in read.records] == [r["label"] for r in kept]
    assert [r.label for r in read.records] == [nodes[r["label"]] for r in kept]
    assert [r.metadata.get("skin_type") for r in read.records] == [None, *ROMAN.values()]
    for record, row in zip(read.records, kept, strict=True):
        assert record.split == reference_split(row["md5hash"])
    assert read.records[1].metadata["category"] == kept[1]["three_partition_label"]
    assert read.report.skipped == {"excluded": {"qc=3 Wrongly labelled": 1}}


def test_ddi_layout_reads_malignancy_skin_tone_groups_and_slug_labels(
    clinical: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "ddi"
    cases = [
        (1, 12, "True", "melanoma-in-situ"),
        (2, 56, "False", "verruca-vulgaris"),
        (3, 34, "False", "an-unlisted-disease"),
        (4, 34, "True", "melanoma-in-situ"),
    ]
    rows = []
    for i, (ddi_id, tone, malignant, disease) in enumerate(cases):
        _copy(clinical[i], folder / f"{ddi_id:06d}.png", png=True)
        rows.append([i, ddi_id, f"{ddi_id:06d}.png", tone, malignant, disease])
    header = ["", "DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"]
    _write(folder / "ddi_metadata.csv", header, rows)

    read = read_dataset("ddi", tmp_path)
    assert [r.metadata["skin_type"] for r in read.records] == ["I-II", "V-VI", "III-IV", "III-IV"]
    assert [r.metadata["malignant"] for r in read.records] == ["1", "0", "0", "1"]
    assert [r.label for r in read.records] == [
        "melanoma_in_situ", "viral_wart", "an unlisted disease", "melanoma_in_situ"
    ]  # fmt: skip
    assert {r.split for r in read.records} == {"test"}
    assert read.label_set.labels == ["an-unlisted-disease", "melanoma-in-situ", "verruca-vulgaris"]
    assert read.label_set.names == ["an unlisted disease", "melanoma in situ", "verruca vulgaris"]
    assert read.records[0].group == "ddi:1" and read.report.skipped == {}


def test_derm7pt_official_layout(shared_data: Path, clinical: list[Path], tmp_path: Path) -> None:
    rows = _table(shared_data / "derm7pt" / "labels.csv")
    wanted = [
        "melanoma (in situ)",
        "clark nevus",
        "basal cell carcinoma",
        "melanoma (more than 1.5 mm)",
        "seborrheic keratosis",
        "blue nevus",
    ]
    picked = [next(r for r in rows if r["diagnosis_fine"] == d) for d in wanted]
    criteria = [
        "pigment_network",
        "streaks",
        "pigmentation",
        "regression_structures",
        "dots_and_globules",
        "blue_whitish_veil",
        "vascular_structures",
    ]
    header = ["case_num", "diagnosis", "seven_point_score", *criteria]
    header += ["level_of_diagnostic_difficulty", "elevation", "location", "sex"]
    header += ["clinic", "derm", "notes", "management"]
    folder = tmp_path / "release_v0"
    table = []
    for i, r in enumerate(picked):
        group, stem = Path(r["file"]).stem.split("__", 1)
        derm = f"{group}/{stem}.jpg"
        clinic = f"{group}/{stem}_clinic.jpg" if i != 2 else ""
        _copy(shared_data / "derm7pt" / r["file"], folder / "images" / derm)
        if clinic:
            _copy(clinical[i], folder / "images" / clinic)
        sex = "female" if i % 2 else "male"
        extra = ["low", "flat", "back", sex, clinic, derm, "", "excision"]
        table.append([i + 1, r["diagnosis_fine"], 3, *(r[c] for c in criteria), *extra])
    _write(folder / "meta" / "meta.csv", header, table)
    for split, positions in {"train": [0, 1], "valid": [2], "test": [3, 4]}.items():
        _write(folder / "meta" / f"{split}_indexes.csv", ["indexes"], [[p] for p in positions])

    read = read_dataset("derm7pt_official", tmp_path)
    assert read.report.skipped == {"no split": {"": 1}}
    records = read.records
    expected_cases = [1, 1, 2, 2, 3, 4, 4, 5, 5]
    assert [int(r.group.split(":")[1]) for r in records] == expected_cases
    assert [r.metadata["modality"] for r in records[:2]] == ["dermoscopy", "clinical"]
    assert [r.split for r in records] == ["train"] * 4 + ["val"] + ["test"] * 4
    assert (
        records[0].label == "melanoma" and records[0].metadata["raw_label"] == "melanoma (in situ)"
    )
    assert records[5].metadata["dataset_label"] == "melanoma"
    assert records[2].label == "atypical_nevus" and "raw_label" not in records[2].metadata
    for r in records:
        row = picked[int(r.group.split(":")[1]) - 1]
        assert r.concepts["atypical_pigment_network"] == (row["pigment_network"] == "atypical")
        assert r.concepts["blue_whitish_veil"] == (row["blue_whitish_veil"] == "present")
    assert records[0].metadata["sex"] == "male" and records[0].metadata["body_site"] == "back"


def test_isic2019_layout_reads_one_hot_labels_and_joined_metadata(
    shared_data: Path, ham: list[dict[str, str]], clinical: list[Path], tmp_path: Path
) -> None:
    columns = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    to_column = {"akiec": "AK", "bcc": "BCC", "bkl": "BKL", "df": "DF", "mel": "MEL"}
    to_column |= {"nv": "NV", "vasc": "VASC"}
    picked = list({r["label"]: r for r in ham}.values())
    folder = tmp_path / "ISIC_2019"
    inputs = folder / "ISIC_2019_Training_Input"
    truth, meta, expected = [], [], []
    for r in picked:
        image = Path(r["file"]).stem
        _copy(shared_data / "ham10000" / r["file"], inputs / f"{image}.jpg")
        truth.append([image, *("1.0" if c == to_column[r["label"]] else "0.0" for c in columns)])
        age = f"{float(r['age'])}" if r["age"] else ""
        meta.append([image, age, "anterior torso", r["lesion_id"], r["sex"]])
        expected.append((image, HAM_NODES[r["label"]], r["lesion_id"]))
    extra = [("ISIC_0000001", "SCC"), ("ISIC_0000002", "UNK"), ("ISIC_0000003", None)]
    for i, (image, column) in enumerate(extra):
        _copy(clinical[i], inputs / f"{image}.jpg")
        truth.append([image, *("1.0" if c == column else "0.0" for c in columns)])
        meta.append([image, "", "", "", ""])
    expected.append(("ISIC_0000001", "squamous_cell_carcinoma", "ISIC_0000001"))
    _write(folder / "ISIC_2019_Training_GroundTruth.csv", ["image", *columns], truth)
    _write(
        folder / "ISIC_2019_Training_Metadata.csv",
        ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"],
        meta,
    )

    read = read_dataset("isic2019", tmp_path)
    got = [(Path(r.image).stem, r.label, r.group.split(":", 1)[1]) for r in read.records]
    assert got == expected
    assert read.report.skipped == {"unknown label": {"UNK": 1}, "no label": {"": 1}}
    assert [r.split for r in read.records] == [reference_split(g) for _, _, g in expected]
    first = read.records[0].metadata
    assert first["body_site"] == "anterior torso" and first["dataset_label"] in columns
    assert first.get("age") == (str(int(float(picked[0]["age"]))) if picked[0]["age"] else None)
    assert "age" not in read.records[-1].metadata


def test_isic2020_layout_keeps_malignancy_and_counts_unknown_diagnoses(
    shared_data: Path, ham: list[dict[str, str]], tmp_path: Path
) -> None:
    header = ["image_name", "patient_id", "lesion_id", "sex", "age_approx"]
    header += ["anatom_site_general_challenge", "diagnosis", "benign_malignant", "target"]
    cases = [
        ("IP_1", "nevus", "0"),
        ("IP_1", "melanoma", "1"),
        ("IP_2", "unknown", "0"),
        ("IP_2", "lentigo NOS", "0"),
        ("IP_3", "unknown", "0"),
        ("IP_4", "seborrheic keratosis", "0"),
    ]
    folder = tmp_path / "ISIC_2020"
    rows = []
    for i, (patient, diagnosis, target) in enumerate(cases):
        image = f"ISIC_{2000000 + i}"
        _copy(shared_data / "ham10000" / ham[i]["file"], folder / "train" / f"{image}.jpg")
        benign = "malignant" if target == "1" else "benign"
        rows.append([image, patient, f"L{i}", "female", "45.0", "torso", diagnosis, benign, target])
    _write(folder / "ISIC_2020_Training_GroundTruth.csv", header, rows)

    read = read_dataset("isic2020", tmp_path)
    assert [r.label for r in read.records] == [
        "melanocytic_nevus", "melanoma", "lentigo", "seborrheic_keratosis"
    ]  # fmt: skip
    assert [r.metadata["malignant"] for r in read.records] == ["0", "1", "0", "0"]
    assert read.records[0].split == read.records[1].split == reference_split("IP_1")
    assert read.report.skipped == {"unknown label": {"unknown": 2}}
    assert read.records[0].metadata["age"] == "45" and read.records[0].metadata["sex"] == "female"

    binary = read_dataset("isic2020_binary", tmp_path)  # the challenge's task: every image
    assert [r.metadata["class_name"] for r in binary.records] == [
        "melanoma" if target == "1" else "benign skin lesion" for _, _, target in cases
    ]
    assert [r.split for r in binary.records[:2]] == [read.records[0].split] * 2
    assert binary.report.rows_skipped == 0


def test_scin_layout_reads_several_images_per_case_and_list_labels(
    clinical: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "scin"
    cases_header = ["case_id", "source", "release", "year", "age_group", "sex_at_birth"]
    cases_header += ["fitzpatrick_skin_type", "image_1_path", "image_2_path", "image_3_path"]
    labels_header = ["case_id", "dermatologist_skin_condition_on_label_name"]
    labels_header += ["dermatologist_skin_condition_confidence", "weighted_skin_condition_label"]
    labels_header += ["dermatologist_fitzpatrick_skin_type_label_1"]
    paths = [f"dataset/images/-{1000 + i}.png" for i in range(5)]
    for path, image in zip(paths[:4], clinical, strict=False):
        _copy(image, folder / path, png=True)
    base = ["USER_CLICK", "v1", "2023"]
    cases = [
        ["101", *base, "AGE_30_TO_39", "FEMALE", "FST2", paths[0], paths[1], ""],
        ["102", *base, "AGE_18_TO_29", "MALE", "NONE_SELECTED", paths[2], "", ""],
        ["103", *base, "AGE_UNKNOWN", "OTHER_OR_UNSPECIFIED", "", paths[3], "", ""],
        ["104", *base, "AGE_40_TO_49", "FEMALE", "FST4", paths[3], "", ""],
        ["105", *base, "AGE_40_TO_49", "FEMALE", "FST4", paths[4], "", ""],
    ]
    labels = [
        ["101", "['Eczema', 'Allergic Contact Dermatitis']", "[4, 2]", "{'Eczema': 0.67}", "FST3"],
        ["102", "['Psoriasis']", "[5]", "{'Psoriasis': 1.0}", "FST5"],
        ["103", "[]", "[]", "{}", ""],
        ["105", "['Psoriasis']", "[5]", "{'Psoriasis': 1.0}", "FST4"],
    ]
    _write(folder / "dataset_scin_cases.csv", cases_header, cases)
    _write(folder / "dataset_scin_labels.csv", labels_header, labels)

    read = read_dataset("scin", tmp_path)
    records = read.records
    assert [Path(r.image).name for r in records] == [Path(p).name for p in paths[:3]]
    assert [r.metadata["dataset_label"] for r in records] == ["Eczema", "Eczema", "Psoriasis"]
    assert [r.label for r in records] == ["eczematous", "eczematous", "psoriasis"]
    assert records[0].group == records[1].group == "scin:101"
    assert records[0].split == records[1].split == reference_split("101")
    assert [r.metadata.get("skin_type") for r in records] == ["III", "III", "V"]
    assert [r.metadata.get("skin_type_self") for r in records] == ["II", "II", None]
    assert (
        records[2].metadata["sex"] == "male" and records[0].metadata["age_group"] == "AGE_30_TO_39"
    )
    assert read.report.skipped == {"no label": {"": 2}, "missing image": {"": 1}}
    assert read.report.missing_images == (str((folder / paths[4]).resolve()),)
    listed = read.report.to_dict(max_listed=0)
    assert listed["missing_image_count"] == 1 and listed["missing_images"] == []
    assert listed["rows_skipped"] == 3 and listed["skipped"] == read.report.skipped
    assert read.label_set.labels == ["Eczema", "Psoriasis"]


def test_sd198_class_folders_form_an_automatic_label_set(
    clinical: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "SD-198" / "images"
    files = ["Acute_Eczema/a.jpg", "Acute_Eczema/b.jpg", "Basal_Cell_Carcinoma/c.jpg"]
    files += ["Psoriasis/d.jpg"]
    for file, image in zip(files, clinical, strict=False):
        _copy(image, folder / file)
    (folder / "Psoriasis" / "notes.txt").write_text("not an image")
    read = read_dataset("sd198", tmp_path)  # by name: the published spec, not sd198_27
    assert read.label_set.names == ["Acute Eczema", "Basal Cell Carcinoma", "Psoriasis"]
    assert [c.node for c in read.label_set.classes] == [None, "basal_cell_carcinoma", "psoriasis"]
    expected = ["Acute Eczema", "Acute Eczema", "basal_cell_carcinoma", "psoriasis"]
    assert [r.label for r in read.records] == expected
    assert [r.split for r in read.records] == [reference_split(f"images/{f}") for f in files]
    assert read.report.rows == 4 and read.report.skipped == {}


def test_dermnet_folders_take_the_split_from_the_top_folder(
    clinical: list[Path], tmp_path: Path
) -> None:
    layout = {
        "train/Eczema Photos/1.jpg": ("train", "Eczema Photos"),
        "train/Urticaria Hives/2.jpg": ("train", "Urticaria Hives"),
        "test/Eczema Photos/3.jpg": ("test", "Eczema Photos"),
        "extra/Eczema Photos/4.jpg": (None, "Eczema Photos"),
    }
    for file, image in zip(layout, clinical, strict=False):
        _copy(image, tmp_path / "dermnet" / file)
    read = read_dataset("dermnet_folders", tmp_path)
    assert [(r.split, r.metadata["dataset_label"]) for r in read.records] == [
        ("test", "Eczema Photos"), ("train", "Eczema Photos"), ("train", "Urticaria Hives")
    ]  # fmt: skip
    assert read.report.skipped == {"no split": {"extra": 1}}
    assert read.label_set.labels == ["Eczema Photos", "Urticaria Hives"]


def test_generic_csv_and_image_folder(clinical: list[Path], tmp_path: Path) -> None:
    table = tmp_path / "table"
    for name, image in zip("abc", clinical, strict=False):
        _copy(image, table / "img" / f"{name}.jpg")
    rows = [["img/a.jpg", "melanoma", "train"], ["img/b.jpg", "nevus", ""]]
    rows += [["img/c.jpg", "psoriasis", "test"], ["img/d.jpg", "psoriasis", "test"]]
    _write(table / "labels.csv", ["file", "label", "split"], rows)
    read = read_dataset("generic_csv", table)
    assert [(r.label, r.split) for r in read.records] == [
        ("melanoma", "train"), ("melanocytic_nevus", "test"), ("psoriasis", "test")
    ]  # fmt: skip
    assert read.report.skipped == {"missing image": {"": 1}}

    folders = tmp_path / "folders"
    for file, image in zip(["melanoma/1.jpg", "nevus/x/2.jpg"], clinical, strict=False):
        _copy(image, folders / file)
    read = read_dataset("generic_image_folder", folders)
    assert [(r.label, r.split) for r in read.records] == [
        ("melanoma", "test"), ("melanocytic_nevus", "test")
    ]  # fmt: skip


def test_user_spec_file_with_label_set_file_label_map_value_maps_and_malignancy(
    clinical: list[Path], tmp_path: Path
) -> None:
    for name, image in zip("abcd", clinical, strict=False):
        _copy(image, tmp_path / "data" / f"{name}.jpg")
    _write(
        tmp_path / "data" / "table.tsv",
        ["id", "dx", "tone", "cancer", "who"],
        [
            ["a", "MM", "dark", "yes", "p1"],
            ["b", "naevus", "light", "no", "p1"],
            ["c", "drop me", "light", "no", "p2"],
            ["d", "odd", "purple", "", "p3"],
        ],
    )
    (tmp_path / "data" / "table.tsv").write_text(
        (tmp_path / "data" / "table.tsv").read_text().replace(",", "\t")
    )
    (tmp_path / "classes.txt").write_text("melanoma\nnevus\nodd\n")
    spec = tmp_path / "mine.yaml"
    spec.write_text(
        'folder: data\nlabels_file: table.tsv\ndelimiter: "\\t"\nfile_column: id\n'
        "file_template: '{}.jpg'\nlabel_column: dx\nlabel_set: classes.txt\n"
        "label_map: {MM: melanoma, naevus: nevus, drop me: null}\ngroup_column: who\n"
        "malignant: {column: cancer, positive: ['yes']}\nmetadata_columns: {skin_type: tone}\n"
        "value_maps: {skin_type: {dark: V-VI, light: I-II}}\nsplit: {method: all, name: eval}\n"
    )
    read = read_dataset(spec, tmp_path)
    assert read.name == "mine" and read.label_set.labels == ["melanoma", "nevus", "odd"]
    assert [(r.label, r.split, r.group) for r in read.records] == [
        ("melanoma", "eval", "mine:p1"), ("melanocytic_nevus", "eval", "mine:p1"),
        ("odd", "eval", "mine:p3"),
    ]  # fmt: skip
    assert [r.metadata.get("malignant") for r in read.records] == ["1", "0", None]
    assert [r.metadata.get("skin_type") for r in read.records] == ["V-VI", "I-II", None]
    assert read.records[0].metadata["raw_label"] == "MM"
    assert read.report.skipped == {"excluded label": {"drop me": 1}}
    assert read.report.dropped_values == {"skin_type": {"purple": 1}}
    assert "skin_type='purple' (1)" in read.report.summary()


def test_user_sources_file_still_works_with_read_source(
    tmp_path: Path, clinical: list[Path]
) -> None:
    _copy(clinical[0], tmp_path / "mine" / "x.jpg")
    _write(tmp_path / "mine" / "labels.csv", ["file", "label"], [["x.jpg", "nv"]])
    (tmp_path / "sources.yaml").write_text(
        "sources:\n  mine: {folder: mine, label_set: ham7, label_column: label, modality: x}\n"
    )
    specs = source_specs(tmp_path / "sources.yaml")
    [record] = read_source("mine", tmp_path, specs=specs)
    assert (record.label, record.split, record.source) == ("melanocytic_nevus", "test", "mine")
    assert read_dataset(tmp_path / "sources.yaml", tmp_path).records == [record]


def _twins(image: Image.Image, folder: Path, name: str) -> tuple[Path, Path]:
    """The image saved as a JPEG and as a slightly cropped, re-encoded copy."""
    first, second = folder / f"{name}_a.jpg", folder / f"{name}_b.jpg"
    image.save(first, quality=95)
    w, h = image.size
    image.crop((2, 2, w - 2, h - 2)).resize((w // 2, h // 2)).save(second, quality=70)
    return first, second


def test_copies_within_and_across_sources_never_straddle_a_split(tmp_path: Path) -> None:
    """Rows sharing any group column, near-duplicate photos (pHash) and copies of another
    source's photos (group_link) land in one split; without the options they would not."""
    import numpy as np

    rng = np.random.default_rng(0)
    base, other = tmp_path / "base", tmp_path / "other"
    base.mkdir()
    other.mkdir()
    base_rows, other_rows = [], []
    for i in range(24):
        pixels = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((160, 120), Image.Resampling.BICUBIC)
        first, second = _twins(image, base, f"p{i}")
        base_rows += [[first.name, "nv", ""], [second.name, "nv", f"patient{i % 3}" * (i < 6)]]
        copy = other / f"copy{i}.jpg"
        image.resize((128, 96)).save(copy, quality=80)
        other_rows.append([copy.name, "mel", first.name])
    _write(base / "labels.csv", ["file", "label", "patient"], base_rows)
    _write(other / "labels.csv", ["file", "label", "twin"], other_rows)
    split = "split: {method: hash, salt: s, fractions: {train: 0.5, val: 0.25, test: 0.25}}"
    common = f"label_set: ham7, label_column: label, {split}"
    (tmp_path / "sources.yaml").write_text(
        "sources:\n"
        f"  base: {{folder: base, {common}, group_column: [patient, file],"
        " near_duplicates: {max_distance: 12}}\n"
        f"  other: {{folder: other, {common}, group_column: file,"
        " group_link: {column: twin, source: base}}\n"
        f"  plain: {{folder: base, {common}}}\n"
    )
    specs = source_specs(tmp_path / "sources.yaml")

    def splits(name: str) -> dict[str, str]:
        return {Path(r.image).name: r.split for r in read_source(name, tmp_path, specs=specs)}

    ours, plain, linked = splits("base"), splits("plain"), splits("other")
    for i in range(24):
        assert ours[f"p{i}_a.jpg"] == ours[f"p{i}_b.jpg"], i
        assert ours[f"p{i}_a.jpg"] == linked[f"copy{i}.jpg"], i
    assert len({ours[f"p{i}_b.jpg"] for i in range(0, 6, 3)}) == 1  # shared patient
    assert any(plain[f"p{i}_a.jpg"] != plain[f"p{i}_b.jpg"] for i in range(24))


def test_new_sources_keep_patients_copies_and_dermnet_twins_in_one_split(
    shared_data: Path,
) -> None:
    by_source = {
        n: read_dataset(n, shared_data).records for n in ("fitzpatrick17k_21", "dermnet_nz")
    }
    for name, folder, columns in (
        ("pad_ufes20", "pad_ufes20", ("patient_id", "near_dup_group")),
        ("sd198_27", "sd198", ("near_dup_group",)),
        ("fitzpatrick17k_21", "fitzpatrick17k", ("near_dup_group",)),
    ):
        records = by_source.get(name) or read_dataset(name, shared_data).records
        split_of = {Path(r.image).name: r.split for r in records}
        rows = _table(shared_data / folder / "labels.csv")
        for column in columns:
            seen: dict[str, set[str]] = defaultdict(set)
            for r in rows:
                if r[column] and Path(r["file"]).name in split_of:
                    seen[r[column]].add(split_of[Path(r["file"]).name])
            assert seen and all(len(v) == 1 for v in seen.values()), (name, column)
    dermnet = {Path(r.image).name: r.split for r in by_source["dermnet_nz"]}
    fitz = {Path(r.image).name: r.split for r in by_source["fitzpatrick17k_21"]}
    twins = [
        (fitz[Path(r["file"]).name], dermnet[r["dermnet_nz_twin"]])
        for r in _table(shared_data / "fitzpatrick17k" / "labels.csv")
        if r["dermnet_nz_twin"] in dermnet and Path(r["file"]).name in fitz
    ]
    assert len(twins) > 100 and all(a == b for a, b in twins)
    skin_types = {r.metadata.get("skin_type") for r in by_source["fitzpatrick17k_21"]}
    assert {"I", "II", "III", "IV", "V", "VI"} <= skin_types
    assert {r.metadata["malignant"] for r in by_source["fitzpatrick17k_21"]} == {"0", "1"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("label_colum: dx\nlabel_column: dx\n", "label_colum"),
        ("label_column: dx\njoin: [{file: x.csv, on: id}]\n", "join"),
        ("label_column: dx\nsplit: {method: random}\n", "split"),
        ("label_column: dx\nsplit: {method: hash, fractions: {train: 0.5}}\n", "split"),
        ("layout: image_folder\nlabel_column: dx\n", "label_column"),
        ("file_column: x\n", "label_column"),
        ("label_column: dx\nmask_box: [0, 0, 2, 1]\n", "mask_box"),
        ("label_column: dx\nvalue_maps: {sex: nosuchkey}\n", "value_maps"),
    ],
)
def test_bad_spec_fields_are_named_with_the_file(tmp_path: Path, body: str, field: str) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(body)
    with pytest.raises(ManifestError, match=f"field '{field}'") as info:
        load_dataset_spec(spec)
    assert "bad.yaml" in str(info.value)


def test_unknown_names_missing_tables_and_bad_index_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"known: .*ham10000_official"):
        load_dataset_spec("no_such_dataset")
    with pytest.raises(ManifestError, match=r"HAM10000_metadata\.csv"):
        read_dataset("ham10000_official", tmp_path)
    _write(tmp_path / "labels.csv", ["file", "label"], [["a.jpg", "x"]])
    with pytest.raises(ManifestError, match=r"no column 'dx'.*label_column"):
        read_dataset({"name": "t", "label_column": "dx"}, tmp_path)
    _write(tmp_path / "train.csv", ["indexes"], [[0]])
    _write(tmp_path / "test.csv", ["indexes"], [[0]])
    spec = {"label_column": "label", "split": {"method": "index_files"}}
    spec["split"]["files"] = {"train": "train.csv", "test": "test.csv"}
    with pytest.raises(ManifestError, match=r"test\.csv:2: row 0 is in two splits"):
        read_dataset(spec, tmp_path)
