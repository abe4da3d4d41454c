"""Sparse autoencoders on embeddings: a planted sparse dictionary is recovered, the recipe's
invariants hold (unit-norm decoder, exact TopK, original-space normalisation, decoder-bias
init, AuxK revival), metrics match their definitions, checkpoints round-trip and refuse bad
files, and an SAE trains on real dermatology embeddings of the bundled model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.optimize import minimize

from dermfm.errors import SourceError
from dermfm.interpret.sae import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    SAEConfig,
    SAETrainReport,
    SparseAutoencoder,
    init_sae,
    load_sae,
    sae_metrics,
    save_sae,
    train_sae,
)


def planted(
    n: int = 4000, d: int = 64, m: int = 32, active: int = 3, noise: float = 0.01, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` embeddings, each a non-negative combination of ``active`` of ``m`` known random
    unit directions (coefficients in [0.5, 1.5]) plus Gaussian noise; returns (x, directions)."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(m, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, m))
    for row in codes:
        row[rng.choice(m, active, replace=False)] = rng.uniform(0.5, 1.5, active)
    x = codes @ atoms + noise * rng.normal(size=(n, d))
    return x.astype(np.float32), atoms


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return planted()


@pytest.fixture(scope="module")
def topk(data: tuple[np.ndarray, np.ndarray]) -> tuple[SparseAutoencoder, SAETrainReport]:
    x, _ = data
    return train_sae(x, SAEConfig(d_in=64, n_latents=128, k=4, lr=3e-3, epochs=20))


def _best_cosines(atoms: np.ndarray, sae: SparseAutoencoder) -> np.ndarray:
    """Per planted direction, its best cosine with any latent's direction."""
    return (atoms @ sae.directions.numpy().T).max(axis=1)


def test_topk_sae_recovers_a_planted_sparse_dictionary(data, topk) -> None:
    _, atoms = data
    sae, report = topk
    assert _best_cosines(atoms, sae).min() > 0.9
    assert report.train_metrics["fve"] > 0.95
    assert report.train_metrics["l0"] <= 4
    assert len(report.history) == 20
    assert report.history[-1]["fve"] > report.history[0]["fve"]


def test_relu_l1_sae_gives_sparse_codes_with_decent_reconstruction(data) -> None:
    x, atoms = data
    config = SAEConfig(d_in=64, n_latents=128, kind="relu", l1=0.08, lr=1e-2, epochs=20)
    sae, report = train_sae(x, config)
    assert report.train_metrics["l0"] < 128 / 8
    assert report.train_metrics["fve"] > 0.9
    assert (sae.encode(x) >= 0).all()
    assert np.median(_best_cosines(atoms, sae)) > 0.9


def test_decoder_rows_are_unit_norm_and_directions_live_in_the_original_space(topk) -> None:
    sae, _ = topk
    norms = sae.w_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # switching one latent on moves the ORIGINAL-space reconstruction along its direction
    moved = sae.decode(2.5 * torch.eye(sae.n_latents)) - sae.decode(torch.zeros(1, sae.n_latents))
    torch.testing.assert_close(torch.nn.functional.normalize(moved, dim=1), sae.directions)
    torch.testing.assert_close(sae.directions.norm(dim=1), torch.ones(sae.n_latents))


def test_encode_keeps_exactly_the_k_largest_positive_pre_activations(data, topk) -> None:
    x, _ = data
    sae, _ = topk
    acts = sae.encode(x[:300]).numpy()
    # reference: the definition, with numpy, from the stored weights and buffers
    u = (x[:300] - sae.input_mean.numpy()) / sae.input_scale.numpy()
    pre = (u - sae.b_dec.numpy()) @ sae.w_enc.numpy().T + sae.b_enc.numpy()
    expected = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :4]
    np.put_along_axis(expected, top, np.maximum(np.take_along_axis(pre, top, axis=1), 0), axis=1)
    np.testing.assert_allclose(acts, expected, atol=1e-4)
    assert ((acts > 0).sum(axis=1) <= 4).all()
    assert ((acts > 0).sum(axis=1) == 4).mean() > 0.9


def test_normalisation_works_in_the_original_space(data) -> None:
    x, _ = data
    x = x[:1500]
    config = SAEConfig(d_in=64, n_latents=96, k=4, lr=3e-3, epochs=3)
    shift = np.linspace(-3, 3, 64, dtype=np.float32)
    sae, _ = train_sae(x, config)
    shifted, _ = train_sae(x + shift, config)
    np.testing.assert_allclose(shifted.encode(x + shift), sae.encode(x), atol=1e-3)
    np.testing.assert_allclose(
        shifted.decode(sae.encode(x)), sae.decode(sae.encode(x)) + shift, atol=1e-3
    )
    # stats are buffers in the original space: normalised inputs have mean 0, mean sq. norm d
    u = (x - sae.input_mean.numpy()) / sae.input_scale.numpy()
    np.testing.assert_allclose(u.mean(axis=0), 0, atol=1e-4)
    assert np.mean(np.sum(u**2, axis=1)) == pytest.approx(64, rel=1e-4)


def test_decoder_bias_starts_at_the_data_mean_or_geometric_median(data) -> None:
    x, _ = data
    x = x[:500].astype(np.float64)

    def distance_sum(point: np.ndarray) -> float:
        return float(np.linalg.norm(x - point, axis=1).sum())

    def gradient(point: np.ndarray) -> np.ndarray:
        diff = point - x
        return (diff / np.linalg.norm(diff, axis=1, keepdims=True)).sum(axis=0)

    reference = minimize(
        distance_sum, x.mean(axis=0), jac=gradient, method="L-BFGS-B", options={"gtol": 1e-12}
    ).x
    zero = torch.zeros(1, 16)
    for normalise in (True, False):
        config = SAEConfig(d_in=64, n_latents=16, k=2, normalise=normalise)
        mean = init_sae(x, replace(config, b_dec_init="mean")).decode(zero)[0].numpy()
        np.testing.assert_allclose(mean, x.mean(axis=0), atol=1e-5)
        median = init_sae(x, config).decode(zero)[0].numpy().astype(np.float64)
        np.testing.assert_allclose(median, reference, atol=1e-4)
        assert np.linalg.norm(gradient(median)) < 1e-3 * len(x)  # optimality: unit vectors sum to 0
        assert np.linalg.norm(median - x.mean(axis=0)) > 0.01  # the median is not the mean here


def test_auxk_loss_revives_dead_latents() -> None:
    # many features, and a learning rate high enough to kill about half of the latents early
    x, _ = planted(m=512)
    config = SAEConfig(d_in=64, n_latents=512, k=3, lr=3e-2, epochs=10)
    _, without = train_sae(x, replace(config, aux_coef=0.0))
    _, with_aux = train_sae(x, config)
    assert without.train_metrics["dead_fraction"] > 0.3
    assert with_aux.train_metrics["dead_fraction"] < without.train_metrics["dead_fraction"] / 2
    assert with_aux.train_metrics["fve"] > without.train_metrics["fve"] + 0.05


def test_metrics_equal_their_definitions(data, topk) -> None:
    x, _ = data
    sae, _ = topk
    acts = sae.encode(x).numpy()
    x_hat = sae.decode(acts).numpy().astype(np.float64)
    x64 = x.astype(np.float64)
    on = acts > 0
    cosine = (
        np.sum(x_hat * x64, axis=1) / np.linalg.norm(x_hat, axis=1) / np.linalg.norm(x64, axis=1)
    )
    expected = {
        "fve": 1 - np.sum((x64 - x_hat) ** 2) / np.sum((x64 - x64.mean(axis=0)) ** 2),
        "mse": np.mean((x64 - x_hat) ** 2),
        "cosine": cosine.mean(),
        "l0": on.sum() / len(x),
        "dead_fraction": np.mean(on.sum(axis=0) == 0),
        "dense_fraction": np.mean(on.mean(axis=0) > 0.1),
    }
    metrics = sae_metrics(sae, x, batch_size=333)  # batches of unequal size
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_training_is_deterministic_for_a_seed(data) -> None:
    x, _ = data
    config = SAEConfig(d_in=64, n_latents=64, k=4, epochs=2)
    a, _ = train_sae(x[:1000], config)
    b, _ = train_sae(x[:1000], config)
    c, _ = train_sae(x[:1000], replace(config, seed=1))
    for name, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[name], rtol=0, atol=0)
    assert not torch.equal(a.w_dec, c.w_dec)


def test_report_history_and_validation_metrics(data) -> None:
    x, _ = data
    config = SAEConfig(d_in=64, n_latents=64, k=4, epochs=3)
    sae, report = train_sae(x[:1000], config, val_embeddings=x[1000:1500])
    assert [h["epoch"] for h in report.history] == [1, 2, 3]
    assert {"loss", "fve", "l0", "dead_fraction", "lr", "val_fve"} <= report.history[0].keys()
    assert report.val_metrics == sae_metrics(sae, x[1000:1500])
    assert report.history[-1]["val_fve"] == pytest.approx(report.val_metrics["fve"])
    assert json.loads(json.dumps(report.to_dict()))["config"] == config.to_dict()
    assert not sae.w_dec.requires_grad and not sae.training


def test_config_round_trip_and_validation() -> None:
    config = SAEConfig(d_in=256)
    assert config.n_latents == 2048 and config.kind == "topk" and config.aux_k == 128
    assert SAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    bad = [
        {"d_in": 8, "kind": "jumprelu"},
        {"d_in": 8, "n_latents": 4, "k": 5},
        {"d_in": 8, "b_dec_init": "mode"},
        {"d_in": 8, "lr": 0},
        {"d_in": 8, "epochs": 1.5},
        {"d_in": 8, "latents": 64},
        {"k": 4},
    ]
    for values in bad:
        with pytest.raises(ValueError, match="SAE config"):
            SAEConfig.from_dict(values)


def test_bad_embeddings_are_refused(data) -> None:
    x, _ = data
    config = SAEConfig(d_in=64, n_latents=64, k=4, epochs=1)
    with pytest.raises(ValueError, match=r"shape \(N, 64\)"):
        train_sae(x[:, :32], config)
    broken = x[:100].copy()
    broken[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_sae(broken, config)
    with pytest.raises(ValueError, match="identical"):
        train_sae(np.ones((10, 64), dtype=np.float32), config)
    sae = init_sae(x, config)
    with pytest.raises(ValueError, match=r"shape \(N, 64\)"):
        sae.encode(x[:5, :63])
    with pytest.raises(ValueError, match=r"activations must have shape \(N, 64\)"):
        sae.decode(np.zeros((5, 65), dtype=np.float32))


def test_save_load_round_trip(tmp_path: Path, topk) -> None:
    sae, report = topk
    folder = save_sae(sae, tmp_path / "sae", {"model": "dermfm-bundled", **report.to_dict()})
    loaded = load_sae(folder)
    assert loaded.config == sae.config
    assert loaded.metadata["model"] == "dermfm-bundled"
    x = torch.randn(50, 64)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(
        loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)), rtol=0, atol=0
    )
    # metadata defaults to the SAE's own: a loaded SAE saves again unchanged
    again = load_sae(save_sae(loaded, tmp_path / "again"))
    assert again.metadata == loaded.metadata


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path, topk) -> None:
    sae, _ = topk
    folder = save_sae(sae, tmp_path / "sae")
    with pytest.raises(SourceError, match="already exists") as error:
        save_sae(sae, folder)
    assert error.value.source == str(folder)
    save_sae(sae, folder, {"note": "second"}, overwrite=True)
    assert load_sae(folder).metadata == {"note": "second"}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    with pytest.raises(SourceError):
        save_sae(sae, tmp_path / "other")
    (tmp_path / "empty-but-present").mkdir()
    save_sae(sae, tmp_path / "empty-but-present")  # an existing empty folder is fine
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SourceError, match="not a folder"):
        save_sae(sae, tmp_path / "a-file", overwrite=True)


def test_load_names_the_broken_file(tmp_path: Path, topk) -> None:
    sae, _ = topk
    folder = save_sae(sae, tmp_path / "sae")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    good_config, good_weights = config_path.read_text(), weights_path.read_bytes()

    def expect(path: Path, match: str) -> None:
        with pytest.raises(SourceError, match=match) as error:
            load_sae(folder)
        assert error.value.source == str(path)
        config_path.write_text(good_config)
        weights_path.write_bytes(good_weights)

    with pytest.raises(SourceError, match="missing"):
        load_sae(tmp_path / "nowhere")
    weights_path.unlink()
    expect(weights_path, "missing")
    config_path.write_text("{not json")
    expect(config_path, "unreadable JSON")
    doc = json.loads(good_config)
    config_path.write_text(json.dumps({**doc, "format": 99}))
    expect(config_path, "format 99")
    config_path.write_text(json.dumps({**doc, "config": {**doc["config"], "kind": "gated"}}))
    expect(config_path, "kind")
    config_path.write_text(json.dumps({**doc, "config": {**doc["config"], "n_latents": 256}}))
    expect(weights_path, "do not match")
    weights_path.write_bytes(good_weights[:200])
    expect(weights_path, "unreadable weights")
    state = load_file(str(weights_path))
    del state["b_enc"]
    save_file(state, str(weights_path))
    expect(weights_path, "b_enc")


def test_sae_trains_on_real_dermatology_embeddings(shared_data: Path) -> None:
    import dermfm
    from dermfm.data import read_dataset
    from dermfm.evaluate.tasks import embed_records
    from dermfm.models import bundled

    if not bundled.is_available():
        pytest.skip("the bundled model's weights are not installed")
    model = dermfm.load_model()
    records = []
    for name in ("ham10000", "dermnet_nz"):
        rows = read_dataset(name, shared_data).records
        records += rows[:: len(rows) // 150][:150]
    split = embed_records(model, records)
    assert len(split.records) == 300 and not split.failed
    x = split.vectors.numpy()
    order = np.random.default_rng(0).permutation(len(x))
    train, val = x[order[:240]], x[order[240:]]
    config = SAEConfig(d_in=model.embed_dim, n_latents=512, k=16, epochs=20, batch_size=32)
    sae, report = train_sae(train, config, val_embeddings=val)
    assert all(np.isfinite(v) for v in report.train_metrics.values())
    assert torch.isfinite(sae.directions).all()
    assert report.train_metrics["fve"] > 0.85 and report.train_metrics["l0"] <= 16
    assert report.val_metrics is not None and report.val_metrics["fve"] > 0.5
    # held-out reconstructions keep each image's identity: nearest to their own original
    x_hat = sae.decode(sae.encode(val)).numpy()
    nearest = (x_hat @ val.T / np.linalg.norm(x_hat, axis=1, keepdims=True)).argmax(axis=1)
    assert np.mean(nearest == np.arange(len(val))) > 0.8
