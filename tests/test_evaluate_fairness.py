"""dermfm.evaluate.fairness: subgroups from records, and per-subgroup tables that sum back to
the whole, with gaps to the best group."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from dermfm.data import ManifestError, Record, read_source
from dermfm.evaluate.fairness import (
    SubgroupTable,
    age_band,
    subgroup_keys,
    subgroup_table,
    subgroup_values,
)
from dermfm.evaluate.metrics import accuracy, auroc, balanced_accuracy, bootstrap


def _predictions(
    seed: int, groups: list[str | None], p_right: dict[str | None, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Labels in [0, 4) and predictions right with a per-subgroup probability."""
    rng = np.random.default_rng(seed)
    n = len(groups)
    y = rng.integers(0, 4, n)
    right = rng.random(n) < np.array([p_right[g] for g in groups])
    return y, np.where(right, y, (y + 1) % 4)


def _subgroups(seed: int, n: int) -> list[str | None]:
    rng = np.random.default_rng(seed)
    return list(
        rng.choice(
            np.array(["I", "II", "III", "IV", None], dtype=object),
            size=n,
            p=[0.3, 0.25, 0.2, 0.15, 0.1],
        )
    )


# --------------------------------------------------------------------------- subgroup values


def test_standard_keys() -> None:
    keys = subgroup_keys()
    assert list(keys) == ["skin_type", "sex", "age_band", "body_site", "modality"]
    assert keys["skin_type"] == "Fitzpatrick skin type"


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (0, "<30"),
        (29.9, "<30"),
        ("30", "30-44"),
        (44.99, "30-44"),
        ("45.0", "45-59"),
        (59, "45-59"),
        (60, "60-74"),
        (74.5, "60-74"),
        (75, "75+"),
        ("85", "75+"),
        (None, None),
        ("", None),
        (" unknown ", None),
        ("N/A", None),
        (math.nan, None),
    ],
)
def test_age_band(age, band) -> None:
    assert age_band(age) == band


@pytest.mark.parametrize("age", [-1, "-3", "forty", True])
def test_age_band_rejects_bad_ages(age) -> None:
    with pytest.raises(ValueError, match="age"):
        age_band(age)


def test_subgroup_values_from_records(tmp_path: Path) -> None:
    def record(name: str, **metadata: str) -> Record:
        return Record(image=str(tmp_path / name), metadata=metadata)

    records = [
        record("a.jpg", sex="female", age="52", skin_type="II", modality="clinical"),
        record("b.jpg", sex="unknown", age="", body_site="back"),
        record("c.jpg", sex="male", age="80", skin_type=" IV "),
        record("d.jpg"),
    ]
    assert subgroup_values(records, "sex") == ["female", None, "male", None]
    assert subgroup_values(records, "age_band") == ["45-59", None, "75+", None]
    assert subgroup_values(records, "skin_type") == ["II", None, "IV", None]
    assert subgroup_values(records, "body_site") == [None, "back", None, None]
    assert subgroup_values(records, "modality") == ["clinical", None, None, None]
    extra = [*records, record("e.jpg", dx_type="histo")]
    assert subgroup_values(extra, "dx_type") == [None, None, None, None, "histo"]
    with pytest.raises(ValueError, match="unknown subgroup key 'skin_colour'"):
        subgroup_values(records, "skin_colour")
    with pytest.raises(ManifestError, match=r"f\.jpg.*age"):
        subgroup_values([*records, record("f.jpg", age="forty")], "age_band")


def test_subgroup_values_of_real_records(shared_data: Path) -> None:
    records = read_source("ham10000", shared_data)
    sex = subgroup_values(records, "sex")
    bands = subgroup_values(records, "age_band")
    assert set(sex) <= {"female", "male", None}
    assert {"female", "male"} <= set(sex)
    assert set(bands) == {"<30", "30-44", "45-59", "60-74", "75+", None}
    for record, band in zip(records, bands, strict=True):
        age = record.metadata.get("age")
        if age is None:
            assert band is None
        else:
            assert band == age_band(float(age))
    assert set(subgroup_values(records, "modality")) == {"dermoscopy"}


# --------------------------------------------------------------------------- the table


def test_table_sums_back_to_the_whole() -> None:
    groups = _subgroups(0, 900)
    y, pred = _predictions(1, groups, {"I": 0.8, "II": 0.75, "III": 0.7, "IV": 0.8, None: 0.6})
    table = subgroup_table(
        {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy},
        y,
        pred,
        subgroups=groups,
        key="skin_type",
        n_boot=200,
    )
    assert isinstance(table, SubgroupTable)
    assert [row.label for row in table.rows] == ["I", "II", "III", "IV", "unknown"]
    assert sum(row.n for row in table.rows) == table.n == 900
    assert table.unknown is not None and table.unknown.n == groups.count(None)
    # accuracy: the n-weighted mean of the groups' values is the overall value
    weighted = sum(row.n * row.estimates["accuracy"].value for row in table.rows) / table.n
    assert weighted == pytest.approx(table.overall["accuracy"].value)
    assert table.overall["accuracy"].value == pytest.approx(skm.accuracy_score(y, pred))
    mask = np.array([g == "III" for g in groups])
    assert table.row("III").estimates["balanced_accuracy"].value == pytest.approx(
        skm.balanced_accuracy_score(y[mask], pred[mask])
    )
    for row in table.rows:
        for metric in ("accuracy", "balanced_accuracy"):
            estimate = row.estimates[metric]
            assert estimate.n == row.n
            assert estimate.low <= estimate.value <= estimate.high


def test_best_group_gap_is_zero_and_planted_gap_excluded_from_zero() -> None:
    groups = _subgroups(2, 1200)
    # III is much worse; the unknown group is best of all but may never be "best"
    p_right = {"I": 0.85, "II": 0.82, "III": 0.45, "IV": 0.8, None: 0.95}
    y, pred = _predictions(3, groups, p_right)
    table = subgroup_table({"accuracy": accuracy}, y, pred, subgroups=groups, n_boot=400, seed=1)
    best = max(
        (row for row in table.rows if row.value is not None),
        key=lambda row: row.estimates["accuracy"].value,
    )
    assert table.best["accuracy"] == best.value
    assert best.value is not None
    gap = best.gaps["accuracy"]
    assert gap.value == gap.low == gap.high == 0.0
    for row in table.rows:
        assert row.gaps["accuracy"].value == pytest.approx(
            best.estimates["accuracy"].value - row.estimates["accuracy"].value
        )
    planted = table.row("III").gaps["accuracy"]
    assert planted.low > 0.2
    assert planted.low <= planted.value <= planted.high
    assert table.unknown is not None
    assert table.unknown.gaps["accuracy"].value < 0  # better than the best known group


def test_min_size_and_lower_is_better() -> None:
    groups = ["big_a"] * 300 + ["big_b"] * 300 + ["tiny"] * 10
    y = np.zeros(610, dtype=int)
    pred = np.zeros(610, dtype=int)
    pred[:60] = 1  # big_a: 80% right
    pred[300:330] = 1  # big_b: 90% right; tiny: 100% right but too small to be best

    def error_rate(t: np.ndarray, p: np.ndarray) -> float:
        return 1.0 - accuracy(t, p)

    table = subgroup_table(
        {"accuracy": accuracy, "error": error_rate},
        y,
        pred,
        subgroups=groups,
        n_boot=100,
        min_size=50,
        lower_is_better=["error"],
    )
    assert table.best == {"accuracy": "big_b", "error": "big_b"}
    for row in table.rows:  # a gap is "how much worse", whichever direction is better
        assert row.gaps["error"].value == pytest.approx(row.gaps["accuracy"].value)
    assert table.row("big_a").gaps["error"].value == pytest.approx(0.1)
    assert table.row("tiny").gaps["accuracy"].value == pytest.approx(-0.1)
    small = subgroup_table({"accuracy": accuracy}, y, pred, subgroups=groups, n_boot=10, min_size=1)
    assert small.best["accuracy"] == "tiny"
    none = subgroup_table(
        {"accuracy": accuracy}, y, pred, subgroups=groups, n_boot=10, min_size=1000
    )
    assert none.best["accuracy"] is None
    assert all(math.isnan(row.gaps["accuracy"].value) for row in none.rows)


def test_stratified_resampling_keeps_groups_and_clusters() -> None:
    groups = ["a"] * 40 + ["b"] * 60 + [None] * 20
    codes = np.array([0] * 40 + [1] * 60 + [2] * 20)
    lesions = np.repeat(np.arange(30), 4)  # clusters of 4 rows, never across subgroups here
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def check(code: np.ndarray, lesion: np.ndarray) -> float:
        calls.append((code, lesion))
        return float(len(code))

    table = subgroup_table(
        {"size": check}, codes, lesions, subgroups=groups, groups=lesions, n_boot=30
    )
    mixed = [code for code, _ in calls if np.unique(code).size > 1]
    assert len(mixed) == 1 + 30  # only the overall row's samples mix subgroups
    assert all(len(code) == 120 for code in mixed)
    assert len(calls) - len(mixed) == 3 * (1 + 30)  # each subgroup on its own
    for _, lesion in calls:
        assert np.all(np.bincount(lesion) % 4 == 0)  # whole lesions only
    # subgroup sizes are fixed in every resample: the size "metric" has a zero-width interval
    for row in table.rows:
        est = row.estimates["size"]
        assert est.value == est.low == est.high == row.n


def test_overall_equals_bootstrap_and_unknown_markers() -> None:
    rng = np.random.default_rng(5)
    n = 400
    y = rng.integers(0, 2, n)
    score = rng.normal(size=n) + y
    subgroups = rng.choice(np.array(["clinical", "dermoscopy", "unknown", ""]), size=n)
    lesions = rng.integers(0, 150, n)
    table = subgroup_table(
        {"auroc": auroc}, y, score, subgroups=subgroups, key="modality", groups=lesions, n_boot=150
    )
    assert table.overall["auroc"] == bootstrap(
        auroc, y, score, n_boot=150, groups=lesions, name="auroc"
    )
    # "unknown" and "" are the unknown group; modality rows follow subgroups.yaml's order
    assert [row.label for row in table.rows] == ["dermoscopy", "clinical", "unknown"]
    assert table.unknown is not None
    assert table.unknown.n == int(np.isin(subgroups, ["unknown", ""]).sum())


def test_metric_undefined_in_a_group() -> None:
    y = np.array([0, 1] * 50 + [1] * 20)  # group "c" holds a single class: AUROC undefined
    score = np.linspace(0, 1, 120)
    groups = ["a"] * 50 + ["b"] * 50 + ["c"] * 20
    table = subgroup_table({"auroc": auroc}, y, score, subgroups=groups, n_boot=50, min_size=1)
    c = table.row("c")
    assert math.isnan(c.estimates["auroc"].value) and c.estimates["auroc"].n_boot == 0
    assert math.isnan(c.gaps["auroc"].value)
    assert table.best["auroc"] in {"a", "b"}
    with pytest.raises(ValueError, match="one class"):  # undefined on all rows propagates
        subgroup_table({"auroc": auroc}, np.ones(10, int), np.arange(10.0), subgroups=["a"] * 10)


def test_age_band_rows_follow_the_bands() -> None:
    ages = [22, 81, 50, 35, 66, None, 47, 90, 31, 70] * 10
    bands = [age_band(a) for a in ages]
    y = np.arange(100) % 3
    table = subgroup_table({"accuracy": accuracy}, y, y, subgroups=bands, key="age_band", n_boot=20)
    assert [row.label for row in table.rows] == ["<30", "30-44", "45-59", "60-74", "75+", "unknown"]
    assert table.name == "Age band"


def test_serialisation_markdown_and_bars(tmp_path: Path) -> None:
    groups = _subgroups(6, 500)
    y, pred = _predictions(7, groups, {"I": 0.8, "II": 0.7, "III": 0.5, "IV": 0.75, None: 0.7})
    table = subgroup_table(
        {"accuracy": accuracy}, y, pred, subgroups=groups, key="skin_type", n_boot=100
    )
    data = json.loads(json.dumps(table.to_dict()))
    assert data["key"] == "skin_type" and data["n"] == 500
    assert [row["value"] for row in data["rows"]] == ["I", "II", "III", "IV", None]
    assert sum(row["n"] for row in data["rows"]) == 500
    assert [row["group"] for row in data["rows"]] == ["I", "II", "III", "IV", "unknown"]
    assert data["best"] == {"accuracy": table.best["accuracy"]}
    assert data["metrics"] == ["accuracy"]
    third = data["rows"][2]
    assert third["estimates"]["accuracy"] == table.row("III").estimates["accuracy"].to_dict()
    assert third["gaps"]["accuracy"]["value"] == pytest.approx(
        table.row("III").gaps["accuracy"].value
    )

    lines = table.to_markdown().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Fitzpatrick skin type", "n", "accuracy", "accuracy gap"]
    body = {line.split("|")[1].strip(): line for line in lines[2:] if line.startswith("|")}
    assert list(body) == ["I", "II", "III", "IV", "unknown", "all"]
    assert "| best |" in body[table.best["accuracy"]]
    assert str(table.row("III").estimates["accuracy"]) in body["III"]
    assert str(table.row("III").gaps["accuracy"]) in body["III"]
    assert str(table.overall["accuracy"]) in body["all"]
    assert f"| {table.row('II').n} |" in body["II"]

    out = table.plot_bars(tmp_path / "skin.png", "accuracy")
    assert out == tmp_path / "skin.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 300
    with pytest.raises(ValueError, match="no metric 'auroc'"):
        table.plot_bars(tmp_path / "x.png", "auroc")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subgroups": ["a", "b"]}, "subgroups has 2 entries"),
        ({"subgroups": ["a"] * 4, "min_size": 0}, "min_size"),
        ({"subgroups": ["a"] * 4, "lower_is_better": ["ece"]}, "lower_is_better"),
        ({"subgroups": ["a"] * 4, "n_boot": -1}, "n_boot"),
        ({"subgroups": ["a"] * 4, "groups": [1, 2]}, "groups"),
    ],
)
def test_input_validation(kwargs: dict, match: str) -> None:
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=match):
        subgroup_table({"accuracy": accuracy}, y, y, **kwargs)
    with pytest.raises(ValueError, match="at least one metric"):
        subgroup_table({}, y, y, subgroups=["a"] * 4)


def test_real_metadata_table_sums_back(shared_data: Path) -> None:
    """HAM10000 records (real sex/age metadata, lesion clusters) with a simulated classifier."""
    records = read_source("ham10000", shared_data)[::4]
    rng = np.random.default_rng(8)
    y = rng.integers(0, 7, len(records))
    pred = np.where(rng.random(len(records)) < 0.7, y, rng.integers(0, 7, len(records)))
    lesions = [r.key for r in records]
    for key in ("sex", "age_band", "body_site"):
        table = subgroup_table(
            {"accuracy": accuracy},
            y,
            pred,
            subgroups=subgroup_values(records, key),
            key=key,
            groups=lesions,
            n_boot=50,
        )
        assert sum(row.n for row in table.rows) == len(records)
        weighted = sum(row.n * row.estimates["accuracy"].value for row in table.rows)
        assert weighted / len(records) == pytest.approx(accuracy(y, pred))
