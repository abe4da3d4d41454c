"""Benchmark runs end to end: a run file of models x datasets x tasks on real images from
../shared/data with tiny built open_clip models; results, report, predictions and cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import save_open_clip_folder
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

from dermfm.evaluate.config import RunConfigError, load_run_config
from dermfm.evaluate.runner import run_benchmark


def _write_run(tmp_path: Path, shared: Path, models: list[str], **extra: object) -> Path:
    run = {
        "name": "t",
        "output": "out",
        "models": models,
        "datasets": [
            {"dataset": "ham10000", "root": str(shared), "split": "test", "max_images": 60},
            {
                "dataset": "derm7pt",
                "tasks": ["zeroshot", "calibration", "concepts"],
                "root": str(shared),
                "split": "test",
                "val_split": None,
                "max_images": 40,
            },
        ],
        "tasks": ["zeroshot", "calibration", "fairness", "concepts", "retrieval"],
        "options": {
            "n_boot": 50,
            "seed": 0,
            "min_group_size": 5,
            "fairness_metrics": ["accuracy", "macro_auroc", "malignant_sensitivity"],
        },
        **extra,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("models")
    return [
        str(save_open_clip_folder(root / "a", seed=0)),
        str(save_open_clip_folder(root / "b", seed=1)),
    ]


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory, shared_data: Path, two_models: list[str]
) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("run")
    config = load_run_config(_write_run(tmp, shared_data, two_models))
    return run_benchmark(config, show_progress=False), config.output


def test_run_writes_results_report_and_predictions(finished_run: tuple[dict, Path]) -> None:
    results, out = finished_run
    assert results["errors"] == []
    assert len(results["runs"]) == 4  # 2 models x 2 datasets
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["config"]["models"] == results["config"]["models"]
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for text in (md, html):
        assert "ham10000" in text and "derm7pt" in text and "balanced_accuracy" in text
    for run in results["runs"]:
        for rel in run["files"].values():
            assert (out / rel).is_file() and (out / rel).stat().st_size > 0


def test_metrics_match_sklearn_on_the_predictions_csv(finished_run: tuple[dict, Path]) -> None:
    results, out = finished_run
    run = next(r for r in results["runs"] if r["dataset"] == "ham10000")
    with (out / run["files"]["predictions"]).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == run["n_images"] == 60
    truth = [r["true_class"] for r in rows]
    pred = [r["predicted_class"] for r in rows]
    found = run["zeroshot"]["metrics"]
    assert found["accuracy"]["value"] == pytest.approx(accuracy_score(truth, pred))
    assert found["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(truth, pred)
    )
    matrix = np.asarray(run["zeroshot"]["confusion_matrix"])
    names = list(run["zeroshot"]["support"])
    assert (matrix == confusion_matrix(truth, pred, labels=names)).all()
    for estimate in found.values():
        assert estimate["low"] <= estimate["value"] <= estimate["high"]


def test_malignant_vs_benign_matches_sklearn_on_the_predictions_csv(
    finished_run: tuple[dict, Path],
) -> None:
    from sklearn.metrics import roc_auc_score

    results, out = finished_run
    run = next(r for r in results["runs"] if r["dataset"] == "derm7pt")  # raw scores: no val
    with (out / run["files"]["predictions"]).open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["malignant_truth"]]
    assert {r["score_kind"] for r in rows} == {"raw"}
    truth = [r["malignant_truth"] == "malignant" for r in rows]
    score = [float(r["malignant_probability"]) for r in rows]
    found = run["zeroshot"]["malignancy"]
    assert found["n"] == len(rows) and found["n_malignant"] == sum(truth)
    assert found["metrics"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(truth, score), abs=1e-5
    )


def test_calibration_fitted_on_validation_split_and_reported(
    finished_run: tuple[dict, Path],
) -> None:
    results, _ = finished_run
    ham = next(r for r in results["runs"] if r["dataset"] == "ham10000")
    cal = ham["calibration"]
    assert cal["temperature"] > 0 and "val split" in cal["fitted_on"]
    assert cal["calibrated"]["nll"]["value"] <= cal["raw"]["nll"]["value"] + 0.05
    assert "predictions file: calibrated" in ham["score_kind"]
    d7 = next(r for r in results["runs"] if r["dataset"] == "derm7pt")
    assert "temperature" not in d7["calibration"] and "predictions file: raw" in d7["score_kind"]


def test_concepts_fairness_and_retrieval_sections(finished_run: tuple[dict, Path]) -> None:
    results, _ = finished_run
    d7 = next(r for r in results["runs"] if r["dataset"] == "derm7pt")
    assert d7["concepts"]["n_concepts"] >= 5
    assert "retrieval" not in d7 and "fairness" not in d7  # its own task list
    ham = next(r for r in results["runs"] if r["dataset"] == "ham10000")
    sex = ham["fairness"]["sex"]
    assert sum(row["n"] for row in sex["rows"]) == ham["n_images"]
    assert sex["metrics"] == ["accuracy", "macro_auroc", "malignant_sensitivity"]
    # n-weighted group accuracies add back up to the overall accuracy
    acc = sum(row["n"] * row["estimates"]["accuracy"]["value"] for row in sex["rows"])
    assert acc / ham["n_images"] == pytest.approx(ham["zeroshot"]["metrics"]["accuracy"]["value"])
    assert set(ham["retrieval"]["metrics"]) >= {"image_to_text_R@1", "text_to_image_R@1"}


def test_models_compared_on_the_same_images(finished_run: tuple[dict, Path]) -> None:
    results, _ = finished_run
    comps = [c for c in results["comparisons"] if c["dataset"] == "ham10000"]
    assert len(comps) == 1 and comps[0]["n_images"] == 60
    acc = comps[0]["metrics"]["accuracy"]
    assert 0.0 <= acc["p_value"] <= 1.0


def test_rerun_uses_the_embedding_cache(
    tmp_path: Path, shared_data: Path, two_models: list[str], finished_run: tuple[dict, Path]
) -> None:
    from dermfm.models import load_model

    def no_embedding(name: str):  # the model can no longer embed images
        model = load_model(name)

        def refuse(pixels):  # type: ignore[no-untyped-def]
            raise AssertionError("re-embedded an image that was cached")

        model._encode_pixels = refuse  # type: ignore[method-assign]
        return model

    config = load_run_config(_write_run(tmp_path, shared_data, two_models[:1]))
    results = run_benchmark(config, show_progress=False, load=no_embedding)
    assert results["errors"] == []
    first = next(r for r in finished_run[0]["runs"] if r["dataset"] == "ham10000")
    again = next(r for r in results["runs"] if r["dataset"] == "ham10000")
    assert again["zeroshot"]["metrics"] == first["zeroshot"]["metrics"]


def test_bad_inputs_are_reported_and_the_run_goes_on(
    tmp_path: Path, shared_data: Path, two_models: list[str]
) -> None:
    path = _write_run(tmp_path, shared_data, [two_models[0], str(tmp_path / "missing-model")])
    config = load_run_config(path)
    results = run_benchmark(config, show_progress=False)
    assert len(results["runs"]) == 2
    assert [e["model"] for e in results["errors"]] == [str(tmp_path / "missing-model")]


def test_run_file_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": ["x"], "datasets": ["ham10000"], "tasks": ["zs"]}))
    with pytest.raises(RunConfigError, match=r"bad.yaml.*unknown task.*zs"):
        load_run_config(path)
    path.write_text(
        yaml.safe_dump({"models": ["x"], "datasets": ["ham10000"], "options": {"n_bot": 3}})
    )
    with pytest.raises(RunConfigError, match=r"unknown key.*n_bot"):
        load_run_config(path)
    path.write_text(
        yaml.safe_dump(
            {"models": ["x"], "datasets": ["ham10000"], "options": {"fairness_metrics": ["acc"]}}
        )
    )
    with pytest.raises(RunConfigError, match=r"fairness_metrics.*acc"):
        load_run_config(path)


def test_probes_few_shot_and_leakage_with_exclusion(
    tmp_path: Path, shared_data: Path, two_models: list[str]
) -> None:
    import shutil

    from dermfm.data import read_dataset

    # plant a leak: a copy of a HAM10000 training image listed among the test images
    ham = read_dataset("ham10000", shared_data).records
    leaked = next(r for r in ham if r.split == "train")
    copy = tmp_path / "leak" / Path(leaked.image).name
    copy.parent.mkdir()
    shutil.copyfile(leaked.image, copy)
    label = leaked.metadata["dataset_label"]
    rows = [
        {"file": str(r.image), "label": r.metadata["dataset_label"], "split": r.split}
        for r in ham
        if r.split in ("train", "test")
    ][::40]
    rows.append({"file": str(copy), "label": label, "split": "test"})
    rows.append({"file": leaked.image, "label": label, "split": "train"})
    table = tmp_path / "labels.csv"
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    spec = tmp_path / "mini.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "mini",
                "layout": "csv",
                "labels_file": "labels.csv",
                "file_column": "file",
                "label_column": "label",
                "label_set": "ham7",
                "modality": "dermoscopy",
                "split": {
                    "method": "column",
                    "column": "split",
                    "map": {"train": "train", "test": "test"},
                },
            }
        )
    )
    run = {
        "models": two_models[:1],
        "output": "out",
        "datasets": [{"dataset": str(spec), "root": str(tmp_path), "val_split": None}],
        "tasks": ["zeroshot", "linear_probe", "few_shot", "leakage"],
        "options": {
            "n_boot": 20,
            "shots": [1, 4],
            "fractions": [0.5, 1.0],
            "few_shot_seeds": [0],
            "exclude_duplicates": True,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    results = run_benchmark(load_run_config(path), show_progress=False)
    assert results["errors"] == []
    (section,) = results["runs"]
    n_test = sum(r["split"] == "test" for r in rows)
    assert section["leakage"]["excluded"] >= 1
    assert str(copy) in {p["eval_image"] for p in section["leakage"]["pairs"]}
    assert section["n_images"] == n_test - section["leakage"]["excluded"]
    assert section["linear_probe"]["n_train"] == sum(r["split"] == "train" for r in rows)
    settings = {r["setting"] for r in section["few_shot"]}
    assert len(settings) == 4
    assert 0.0 <= section["linear_probe"]["metrics"]["accuracy"]["value"] <= 1.0
