"""Adapters and test-time augmentation, with the bundled model on real embeddings: an adapter
fitted on generated images beats zero-shot on held-out ones, matches the Tip-Adapter formula
computed with numpy, round-trips through its file, is refused by another model or label set,
and reaches diagnose, eval, the CLI and the assistant through one switch; TTA embeddings are
the mean of the embeddings of explicitly flipped and rotated images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_open_clip_folder
from PIL import Image
from typer.testing import CliRunner

import dermfm
from dermfm.adapters import (
    SHIPPED_FOLDER,
    Adapter,
    AdapterError,
    adapter_splits,
    fit_adapter,
    load_adapter,
    read_labelled,
    resolve_adapter,
    select_adapter,
)
from dermfm.evaluate.tasks import _content_keys, embed_records
from dermfm.models import bundled
from dermfm.zeroshot import ZeroShotClassifier

#: Class folder names: assistant labels (ontology ids), so the same images serve the assistant.
CLASSES = ("melanoma", "atopic_dermatitis", "alopecia_areata")
PER_CLASS = 30


def _pattern(kind: int, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """A generated picture of one of three visual classes (blob, stripes, speckle) with noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == 0:  # a dark blob on reddish skin
        cx, cy, r = [*rng.uniform(0.3, 0.7, 2).tolist(), rng.uniform(0.12, 0.25)]
        inside = np.hypot(x - cx, y - cy) < r
        rgb = np.stack([0.85 - 0.6 * inside, 0.55 - 0.4 * inside, 0.5 - 0.35 * inside], -1)
    elif kind == 1:  # blue-grey stripes
        angle, freq = rng.uniform(0, np.pi), rng.uniform(8, 14)
        wave = 0.5 + 0.5 * np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)) * np.pi)
        rgb = np.stack([0.3 + 0.2 * wave, 0.4 + 0.2 * wave, 0.6 + 0.3 * wave], -1)
    else:  # green-yellow speckle
        spots = rng.random((size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
        rgb = np.stack([0.5 + 0.4 * spots, 0.7 + 0.2 * spots, 0.2 + 0.1 * spots], -1)
    rgb = rgb + rng.normal(0, 0.04, rgb.shape)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def model() -> dermfm.DermModel:
    return dermfm.load_model()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class folders of generated images (never copied data)."""
    root = tmp_path_factory.mktemp("clinic") / "photos"
    rng = np.random.default_rng(0)
    for kind, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            _pattern(kind, rng).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def fitted(model, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Adapter:
    """An adapter over the folder's own three-class label set, saved to a file."""
    data = read_labelled(folder)
    train, val, test, how = adapter_splits(data.splits)
    adapter = fit_adapter(model, train, val, data.label_set, test, fitted_on=how)
    adapter.save(tmp_path_factory.mktemp("adapters") / "clinic.safetensors")
    return adapter


def test_adapter_beats_zero_shot_on_held_out_images(fitted: Adapter) -> None:
    measured = fitted.info.metrics
    assert set(measured) == {"val", "test"} and measured["test"]["n"] >= 10
    zero_shot, adapted = measured["test"]["zero_shot"], measured["test"]["adapter"]
    assert adapted["balanced_accuracy"] >= 0.9
    assert adapted["balanced_accuracy"] > zero_shot["balanced_accuracy"] + 0.2
    assert adapted["log_loss"] < zero_shot["log_loss"]
    assert fitted.info.n_train + fitted.info.n_val + measured["test"]["n"] == 3 * PER_CLASS
    assert fitted.cache_shots == 16 and fitted.values_.shape[0] <= 3 * 16


def test_logits_match_the_tip_adapter_formula_in_numpy(fitted: Adapter, model) -> None:
    x = torch.nn.functional.normalize(torch.randn(5, model.embed_dim), dim=-1)
    sims = x @ ZeroShotClassifier(model, fitted.label_set).weights.T
    xn, keys, values = x.numpy().astype(np.float64), fitted.keys_.numpy(), fitted.values_.numpy()
    onehot = np.eye(fitted.n_classes_)[values]
    cache = np.exp(-fitted.beta_ * (1.0 - xn @ keys.T)) @ onehot  # Zhang et al. 2022, eq. 6
    arrays = fitted.probe_.to_arrays()
    z = xn @ arrays["coef"].T.astype(np.float64) + arrays["intercept"]
    log_probe = (
        z
        - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        - z.max(1, keepdims=True)
    )
    blended = fitted.logit_scale_ * sims.numpy() + fitted.alpha_ * cache
    blended = (blended + fitted.gamma_ * log_probe) / fitted.temperature_
    np.testing.assert_allclose(fitted.logits(x, sims).numpy(), blended, rtol=1e-4, atol=1e-4)
    assert fitted.alpha_ > 0 or fitted.gamma_ > 0  # the blend is not plain zero-shot


def test_file_round_trips(fitted: Adapter, model) -> None:
    assert fitted.path is not None and fitted.path.stat().st_size < 200_000
    loaded = load_adapter(fitted.path)
    assert loaded.info == fitted.info and loaded.params() == fitted.params()
    x = torch.nn.functional.normalize(torch.randn(4, model.embed_dim), dim=-1)
    sims = torch.rand(4, 3)
    torch.testing.assert_close(loaded.logits(x, sims), fitted.logits(x, sims))
    assert loaded.info.labels == list(CLASSES) or sorted(loaded.info.labels) == sorted(CLASSES)
    assert len(loaded.info.data_hash) == 64 and loaded.info.model == "dermfm-bundled"
    assert loaded.describe().startswith("clinic.safetensors")


def test_a_damaged_or_foreign_file_is_refused(tmp_path: Path, fitted: Adapter) -> None:
    with pytest.raises(AdapterError, match="not found"):
        load_adapter(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match=r"junk\.safetensors: not a safetensors"):
        load_adapter(junk)
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(AdapterError, match="not a dermfm adapter"):
        load_adapter(other)
    with pytest.raises(FileExistsError):
        fitted.save(fitted.path)


def test_another_label_set_is_refused(fitted: Adapter, model) -> None:
    with pytest.raises(AdapterError, match=r"fitted for label set .* has other classes"):
        ZeroShotClassifier(model, "ham7", adapter=fitted.path)
    label_set = fitted.label_set
    reordered = type(label_set)(name="reordered", classes=tuple(reversed(label_set.classes)))
    with pytest.raises(AdapterError, match="the same classes in another order"):
        ZeroShotClassifier(model, reordered, adapter=fitted)


def test_another_model_is_refused(fitted: Adapter, oc_model, folder: Path, tmp_path) -> None:
    with pytest.raises(AdapterError, match="32-d ones; fit one for it"):
        ZeroShotClassifier(oc_model, fitted.label_set, adapter=fitted.path)
    # same dimension, other weights: the fingerprint tells them apart
    data = read_labelled(folder)
    train, val, _, _ = adapter_splits(data.splits)
    tiny = fit_adapter(oc_model, train, val, data.label_set)
    other = dermfm.load_model(save_open_clip_folder(tmp_path / "other", seed=1))
    with pytest.raises(AdapterError, match="embeds differently"):
        ZeroShotClassifier(other, data.label_set, adapter=tiny)
    assert ZeroShotClassifier(oc_model, data.label_set, adapter=tiny).adapter is tiny


def test_shipped_adapters_are_found_and_switched_off(fitted: Adapter, oc_model, folder, tmp_path):
    # a model folder's adapters/<label set>.safetensors is found with adapter=True
    model_dir = Path(oc_model.card.loaded_from)
    data = read_labelled(folder)
    train, val, _, _ = adapter_splits(data.splits)
    tiny = fit_adapter(oc_model, train, val, data.label_set)
    (model_dir / SHIPPED_FOLDER).mkdir(exist_ok=True)
    target = model_dir / SHIPPED_FOLDER / f"{data.label_set.name}.safetensors"
    try:
        tiny.save(target)
        found = ZeroShotClassifier(oc_model, data.label_set, adapter=True).adapter
        assert found is not None and found.path == target
        assert ZeroShotClassifier(oc_model, data.label_set, adapter=False).adapter is None
        assert ZeroShotClassifier(oc_model, data.label_set).adapter is None  # class default
        # a user's label set that shares the name but not the classes stays zero-shot
        same_name = dermfm.load_label_set(["psoriasis", "eczema"])
        same_name = type(same_name)(name=data.label_set.name, classes=same_name.classes)
        assert resolve_adapter(oc_model, same_name, True) is None
        # the eval harness picks each dataset's adapter by its classes
        assert select_adapter(["shipped"], oc_model, data.label_set).path == target
        assert select_adapter([fitted.path], oc_model, dermfm.load_label_set("ham7")) is None
    finally:
        shutil.rmtree(model_dir / SHIPPED_FOLDER)


def test_diagnose_says_its_scores_come_from_the_adapter(fitted: Adapter, model, folder) -> None:
    image = next((folder / CLASSES[0]).iterdir())
    dx = dermfm.diagnose(image, model=model, labels=fitted.label_set, adapter=fitted, top_k=3)
    assert dx.score_kind == "adapter-calibrated" and dx.adapter == fitted.describe()
    assert dx.temperature == fitted.temperature_
    assert abs(sum(p.probability for p in dx.predictions) - 1.0) < 1e-5
    plain = dermfm.diagnose(image, model=model, labels=fitted.label_set, adapter=False)
    assert plain.score_kind == "uncalibrated softmax over the label set" and plain.adapter is None
    with pytest.raises(ValueError, match="drop temperature"):
        ZeroShotClassifier(model, fitted.label_set, temperature=0.01, adapter=fitted)


def test_cli_adapt_then_diagnose(folder: Path, tmp_path: Path) -> None:
    from dermfm.cli import app

    runner = CliRunner()
    file = tmp_path / "clinic.safetensors"
    result = runner.invoke(app, ["adapt", str(folder), "-o", str(file), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["file"] == str(file) and summary["info"]["n_train"] > 0
    assert "balanced accuracy on the validation split" in summary["info"]["selection"]
    image = next((folder / CLASSES[1]).iterdir())
    result = runner.invoke(app, ["diagnose", str(image), "--adapter", str(file), "--json"])
    assert result.exit_code == 0, result.output
    (dx,) = json.loads(result.stdout)
    assert dx["score_kind"] == "adapter-calibrated" and dx["label_set"] == "photos"
    result = runner.invoke(app, ["diagnose", str(image), "--adapter", str(file), "--no-adapter"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["adapt", str(folder), "-o", str(file)])
    assert result.exit_code == 2 and "exists" in result.output


def test_eval_scores_with_the_adapter_of_the_label_set(fitted: Adapter, folder, tmp_path) -> None:
    from dermfm.evaluate.config import run_config_from_dict
    from dermfm.evaluate.runner import run_benchmark

    config = run_config_from_dict(
        {
            "models": ["dermfm-bundled"],
            "datasets": [{"dataset": "generic_image_folder", "root": str(folder)}],
            "tasks": ["zeroshot"],
            "output": str(tmp_path / "run"),
            "options": {"n_boot": 20, "adapters": [str(fitted.path)]},
        },
        tmp_path,
        "test",
    )
    results = run_benchmark(config)
    assert not results["errors"], results["errors"]
    (run,) = results["runs"]
    assert "adapter-calibrated" in run["score_kind"] and run["adapter"]["file"] == str(fitted.path)
    with (tmp_path / "run" / run["files"]["predictions"]).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * PER_CLASS and {r["score_kind"] for r in rows} == {"adapter-calibrated"}
    # every image, fitted on or not: the adapter must do well on the images it was fitted on too
    assert run["zeroshot"]["metrics"]["balanced_accuracy"]["value"] > 0.9


def test_consult_uses_the_adapter_and_its_calibration(model, folder: Path, tmp_path) -> None:
    from dermfm.assistant.calibration import CALIBRATION_FILE, model_calibration_folder
    from dermfm.assistant.consult import Assistant

    data = read_labelled(folder)
    train, val, _, _ = adapter_splits(data.splits)
    adapter = fit_adapter(model, train, val, "assistant")
    image = next((folder / CLASSES[0]).iterdir())
    assistant = Assistant(model, adapter=adapter, skin_reference=False)
    report = assistant.consult(image)
    differential = report.differential
    assert differential is not None and differential.score_kind == "adapter-calibrated"
    assert differential.adapter == adapter.describe() and differential.calibrated
    assert differential.prediction_set is None  # the shipped calibration is of other scores
    assert "no prediction set" in differential.probability_kind
    # a calibration fitted on this adapter's scores is used with it
    shipped = model_calibration_folder(model) / CALIBRATION_FILE
    if not shipped.is_file():
        pytest.skip("the bundled model ships no assistant calibration")
    doc = json.loads(shipped.read_text())
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / CALIBRATION_FILE).write_text(
        json.dumps({**doc, "adapter": adapter.identity})
    )
    calibrated = Assistant(
        model, adapter=adapter, skin_reference=False, calibration=tmp_path / "cal"
    )
    differential = calibrated.consult(image).differential
    assert differential.score_kind == "adapter-calibrated" and differential.prediction_set


def test_fit_refuses_too_little_data(model, folder: Path) -> None:
    data = read_labelled(folder)
    train, val, _, _ = adapter_splits(data.splits)
    one_class = [r for r in train if r.label == train[0].label]
    with pytest.raises(ValueError, match="at least two classes"):
        fit_adapter(model, one_class, val, data.label_set)
    with pytest.raises(ValueError, match="no validation image"):
        fit_adapter(model, train, [], data.label_set)


def test_splits_without_validation_hold_out_training_groups(folder: Path) -> None:
    records = read_labelled(folder).records
    train, val, test, how = adapter_splits({"train": records})
    assert not test and "held out" in how and 0.1 < len(val) / len(records) < 0.3
    assert not {r.key for r in train} & {r.key for r in val}
    train, val, test, how = adapter_splits({"test": records})
    assert len(train) + len(val) + len(test) == len(records) and "by group" in how


def test_real_pad_ufes20_adapter(model, shared_data: Path) -> None:
    """A small adapter on real PAD-UFES-20 photos: calibrated and no worse than zero-shot."""
    data = read_labelled("pad_ufes20", shared_data)
    adapter = fit_adapter(
        model,
        data.splits["train"],
        data.splits["val"],
        "pad6",
        data.splits["test"][:80],
        max_per_class=15,
    )
    test = adapter.info.metrics["test"]
    assert adapter.info.n_train <= 6 * 15 and test["n"] == 80
    # chosen on validation to be no worse than zero-shot by balanced accuracy and log-loss
    val = adapter.info.metrics["val"]
    assert val["adapter"]["balanced_accuracy"] >= val["zero_shot"]["balanced_accuracy"]
    assert val["adapter"]["log_loss"] <= val["zero_shot"]["log_loss"] + 1e-9
    # its temperature calibrates held-out photos too (80 test photos are too few to compare
    # accuracies: a few photos move them by more than the adapter's gain)
    assert test["adapter"]["log_loss"] < test["zero_shot"]["log_loss"]


def test_shipped_adapters_fit_the_bundled_model(model) -> None:
    """Every shipped adapter loads with the bundled model and its packaged label set (so new
    weights without refitted adapters fail here, not in a user's diagnose)."""
    files = sorted((bundled.weights_dir() / SHIPPED_FOLDER).glob("*.safetensors"))
    if not files:
        pytest.skip("the bundled model ships no adapters yet (scripts/build_bundled_adapters.py)")
    for path in files:
        label_set = dermfm.load_label_set(path.stem)
        load_adapter(path).check(model, label_set)
        assert resolve_adapter(model, label_set, True).path == path


# --------------------------------------------------------------------------- TTA


def test_tta_embedding_is_the_mean_of_explicit_flips_and_rotations(model) -> None:
    rng = np.random.default_rng(3)
    size = model.image_size  # no resize or crop: the transforms commute exactly
    image = _pattern(0, rng, size)
    views = []
    for mirrored in (False, True):
        base = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else image
        views += [base.rotate(90 * turns) for turns in range(4)]
    explicit = model.embed_images(views).vectors
    expected = torch.nn.functional.normalize(explicit.mean(dim=0), dim=-1)
    got = model.embed_images([image], tta=True).vectors[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert float(got @ model.embed_images([image]).vectors[0]) < 0.99999  # not the plain one


def test_tta_embeddings_are_cached_under_their_own_keys(model, folder: Path) -> None:
    records = read_labelled(folder).records[:3]
    plain_keys, _ = _content_keys(records)
    tta_keys, _ = _content_keys(records, tta=True)
    assert not set(plain_keys) & set(tta_keys)
    plain = embed_records(model, records).vectors
    augmented = embed_records(model, records, tta=True).vectors
    again = embed_records(model, records, tta=True).vectors  # from the cache
    torch.testing.assert_close(augmented, again)
    direct = model.embed_images([Image.open(r.image) for r in records], tta=True).vectors
    torch.testing.assert_close(augmented, direct, rtol=0, atol=1e-5)
    assert not torch.allclose(plain, augmented)
    dx = dermfm.diagnose(records[0].image, model=model, labels="ham7", tta=True, adapter=False)
    assert dx.tta


def test_probe_is_class_balanced_like_scikit_learn() -> None:
    # 90 % of the training embeddings belong to class 0: an unweighted probe would favour it
    rng = np.random.default_rng(3)
    centres = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(2, 16))), dim=-1)

    def draw(counts: tuple[int, int]) -> tuple[torch.Tensor, np.ndarray]:
        y = np.repeat([0, 1], counts)
        x = centres[y] + 0.9 * torch.from_numpy(rng.normal(size=(len(y), 16)))
        return torch.nn.functional.normalize(x, dim=-1).float(), y

    train_x, train_y = draw((270, 30))
    val_x, val_y = draw((40, 40))
    adapter = Adapter(cache_shots=4).fit(
        train_x, train_y, val_x, val_y, val_x @ centres.float().T, logit_scale=10.0
    )
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(
        C=adapter.probe_.C_, max_iter=1000, solver="lbfgs", class_weight="balanced"
    ).fit(train_x.double().numpy(), train_y)
    expected = reference.predict_proba(val_x.double().numpy())
    got = adapter.probe_.predict_proba(val_x.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # balanced: the rare class is predicted about as often as it occurs in the balanced val set
    assert 0.3 < float((got[:, 1] > 0.5).mean()) < 0.7
