"""The assistant's calibration: the conformal threshold, its coverage, storage with the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dermfm.assistant.calibration import (
    AssistantCalibration,
    CalibrationError,
    GroupCalibration,
    _conformal_threshold,
    load_calibration,
)


def test_conformal_threshold_is_the_finite_sample_quantile() -> None:
    # p(true) = 0.9, 0.8, ..., 0.1 -> scores 0.1 ... 0.9; n = 9, coverage 0.8:
    # level ceil(10 * 0.8) / 9 = 8/9 -> the 8th smallest score (0.8) -> threshold 0.2
    p_true = np.linspace(0.9, 0.1, 9)
    probs = np.stack([p_true, 1 - p_true], axis=1)
    assert _conformal_threshold(probs, np.zeros(9, dtype=int), 0.8) == pytest.approx(0.2)


def _calibration(threshold: float) -> AssistantCalibration:
    group = GroupCalibration(
        temperature=1.0, threshold=threshold, n_calibration=1, calibrated_on="test"
    )
    return AssistantCalibration(
        model="m",
        label_set="s",
        templates="t",
        coverage=0.9,
        groups={"dermoscopy": group},
        limits={},
        modality_accuracy={},
    )


def test_prediction_sets_reach_their_coverage_on_exchangeable_data() -> None:
    rng = np.random.default_rng(0)
    n, k = 4000, 12
    probs = rng.dirichlet(np.full(k, 0.3), size=n)
    y = np.array([rng.choice(k, p=p) for p in probs])  # labels drawn from the probabilities
    threshold = _conformal_threshold(probs[:2000], y[:2000], 0.9)
    calibration = _calibration(threshold)
    sets = [calibration.prediction_set(torch.tensor(p), "dermoscopy") for p in probs[2000:]]
    coverage = np.mean([t in s for t, s in zip(y[2000:], sets, strict=True)])
    assert 0.88 <= coverage <= 0.93
    assert all(s[0] == int(np.argmax(p)) for s, p in zip(sets, probs[2000:], strict=True))


def test_save_refuses_to_overwrite_and_load_round_trips(tmp_path: Path) -> None:
    calibration = _calibration(0.05)
    calibration.save(tmp_path)
    with pytest.raises(FileExistsError):
        calibration.save(tmp_path)
    assert AssistantCalibration.load(tmp_path) == calibration


def test_broken_calibration_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "calibration.json").write_text(json.dumps({"model": "m"}), encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"calibration\.json"):
        AssistantCalibration.load(tmp_path)


def test_bundled_model_ships_a_calibration_with_measured_coverage() -> None:
    from dermfm.models import load_model

    calibration = load_calibration(load_model())
    assert calibration is not None and calibration.label_set == "assistant"
    for modality, group in calibration.groups.items():
        assert group.n_calibration > 300, modality
        measured = group.measured
        # measured on test images the calibration never saw; stated in every report
        assert abs(measured["coverage"] - calibration.coverage) < 0.05, modality
        assert measured["ece_calibrated"] < 0.1


def test_a_model_without_calibration_has_none(oc_model) -> None:
    assert load_calibration(oc_model) is None


# the test splits each modality's figures in docs/assistant.md are measured on (the calibrate
# command of scripts/rebuild_bundled.sh)
DOC_TEST_SPLITS = {
    "dermoscopy": ("ham10000", "derm7pt"),
    "clinical": ("dermnet_nz", "fitzpatrick17k_21", "pad_ufes20", "sd198_27"),
}


def _documented_figures() -> dict[str, tuple[int, float, float]]:
    """(test images, coverage, mean set size) per modality from docs/assistant.md's table."""
    doc = (Path(__file__).parents[1] / "docs" / "assistant.md").read_text(encoding="utf-8")
    found = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] in DOC_TEST_SPLITS:
            n_test = int(cells[3].split()[0].replace(",", ""))
            found[cells[0]] = (n_test, float(cells[4]), float(cells[5]))
    assert found.keys() == DOC_TEST_SPLITS.keys(), "docs/assistant.md: calibration table"
    return found


@pytest.mark.slow
def test_shipped_calibration_gives_on_real_test_images_what_the_docs_state(
    shared_data: Path,
) -> None:
    """Recompute coverage and mean set size of the shipped calibration's 90% prediction sets
    on the real test images, independently of the calibration module (temperature-scaled
    softmax, classes at or above the stored threshold), and compare with the documentation."""
    from dermfm.data import read_dataset
    from dermfm.evaluate.tasks import embed_records, targets
    from dermfm.models import load_model
    from dermfm.zeroshot import ZeroShotClassifier

    model = load_model()
    calibration = load_calibration(model)
    assert calibration is not None
    # the scores it was fitted on: the shipped assistant adapter's, or zero-shot ones
    adapter = calibration.adapter is not None
    clf = ZeroShotClassifier(model, calibration.label_set, calibration.templates, adapter=adapter)
    assert (clf.adapter.identity if clf.adapter else None) == calibration.adapter
    for modality, (n_doc, coverage_doc, size_doc) in _documented_figures().items():
        group = calibration.groups[modality]
        hits, sizes = [], []
        for source in DOC_TEST_SPLITS[modality]:
            split = embed_records(model, read_dataset(source, shared_data).splits["test"])
            y = targets(split.records, clf.label_set)
            probs = (clf.logits(split.vectors).double() / group.temperature).softmax(-1)
            members = probs >= group.threshold
            for row, label in zip(members, y, strict=True):
                if label >= 0:
                    hits.append(bool(row[label]))
                    sizes.append(int(row.sum()))
        assert len(hits) == n_doc, modality
        assert np.mean(hits) == pytest.approx(coverage_doc, abs=5e-4), modality
        assert np.mean(sizes) == pytest.approx(size_doc, abs=0.05), modality
        assert 0.88 <= np.mean(hits) <= 0.92, f"{modality}: the 90% sets miss their target"
