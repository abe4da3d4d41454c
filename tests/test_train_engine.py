"""The training engine: DDP equivalence, exact resume after a kill, freezing, export."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from dermfm.data import Record, write_manifest
from dermfm.train import EpochSampler, load_config, sampling_weights

REPO = Path(__file__).resolve().parents[1]
COLOURS = {
    "melanoma": (90, 40, 30),
    "melanocytic_nevus": (170, 120, 90),
    "psoriasis": (200, 80, 80),
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 generated lesion-like images of 3 diagnoses, with captions, as a JSONL manifest."""
    folder = tmp_path_factory.mktemp("train-data")
    rng = np.random.default_rng(0)
    records = []
    for i in range(24):
        label = list(COLOURS)[i % 3]
        noise = rng.integers(-30, 30, size=(72, 80, 3))
        pixels = np.clip(np.array(COLOURS[label]) + noise, 0, 255).astype(np.uint8)
        path = folder / f"img{i:02d}.jpg"
        Image.fromarray(pixels).save(path)
        records.append(
            Record(
                image=str(path),
                texts=(f"close-up of {label.replace('_', ' ')} number {i}",),
                label=label,
                split="val" if i >= 20 else "train",
                source="generated",
                metadata={
                    "modality": "clinical",
                    "class_name": label.replace("_", " "),
                    "dataset_label": label.replace("_", " "),
                },
            )
        )
    return write_manifest(records, folder / "manifest.jsonl")


def _config(tmp: Path, manifest: Path, init: str, **sections: dict) -> Path:
    doc = {
        "model": {"init": init, "freeze_text": False},
        "data": {"manifest": str(manifest), "views": ["caption", "free"]},
        "loss": {"kind": "clip"},
        "optim": {"epochs": 3, "batch_size": 4, "warmup_steps": 2, "lr": 1e-3},
        "run": {"output": str(tmp / "run"), "progress": False, "checkpoint_every": 2},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _parts_trainer(tmp: Path, manifest: Path, **sections: dict) -> Any:
    """A trainer of the dual encoder built from its pretrained parts, without validation, in
    training mode."""
    from dermfm.train import Trainer

    sections.setdefault("validation", {"label_sets": {}})
    trainer = Trainer(load_config(_config(tmp, manifest, "parts", **sections)))
    trainer.step_module.train()
    return trainer


GRAD_SCRIPT = """
import sys, torch
from dermfm.train import Trainer, load_config
trainer = Trainer(load_config(sys.argv[1], sys.argv[3:]))
batch = next(trainer._micro_batches(0, 0))
terms = trainer.ddp(batch.pixels, batch.texts, batch.labels)
terms["total"].backward()
grads = {n: p.grad.clone() for n, p in trainer.step_module.named_parameters() if p.grad is not None}
if trainer.rank == 0:
    torch.save({"loss": terms["total"].item(), "grads": grads}, sys.argv[2])
"""


def _run(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def test_two_process_gloo_matches_one_process_of_the_same_global_batch(
    tmp_path: Path, manifest: Path, tiny_open_clip: Path
) -> None:
    config = _config(tmp_path, manifest, str(tiny_open_clip))
    script = tmp_path / "grads.py"
    script.write_text(GRAD_SCRIPT)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    single = _run([sys.executable, str(script), str(config), str(one), "optim.batch_size=4"])
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    torchrun += ["--master-port", "29517"]
    double = _run([*torchrun, str(script), str(config), str(two), "optim.batch_size=2"])
    assert double.returncode == 0, double.stderr[-2000:]
    a, b = torch.load(one), torch.load(two)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    names = set(a["grads"])
    assert names == set(b["grads"]) and len(names) > 10
    for name in names:
        torch.testing.assert_close(b["grads"][name], a["grads"][name], rtol=1e-4, atol=1e-6)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "open_clip_model.safetensors"))


def test_resume_after_a_kill_continues_identically(
    tmp_path: Path, manifest: Path, tiny_open_clip: Path
) -> None:
    train = [sys.executable, "-m", "dermfm.train"]
    long_run = {"data": {"samples_per_epoch": 100}, "run": {"checkpoint_every": 5}}
    (tmp_path / "a").mkdir()
    straight = _config(tmp_path / "a", manifest, str(tiny_open_clip), **long_run)
    result = _run([*train, str(straight)])
    assert result.returncode == 0, result.stderr[-2000:]

    (tmp_path / "b").mkdir()
    killed = _config(tmp_path / "b", manifest, str(tiny_open_clip), **long_run)
    checkpoint = tmp_path / "b" / "run" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        [*train, str(killed)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(checkpoint, weights_only=False)
    assert 0 < state["position"]["step"] < 75, "the kill should land mid-run"
    assert not (tmp_path / "b" / "run" / "model").exists()
    resumed = _run([*train, str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = _final_weights(tmp_path / "a" / "run"), _final_weights(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(b[key], a[key]), key
    summary = json.loads((tmp_path / "b" / "run" / "summary.json").read_text())
    assert summary["steps"] == 75  # 3 epochs x 100 samples / batch 4
    # training is deterministic, so equal weights alone would also follow from a restart at
    # step 0: the log (appended to by both processes) shows the second one ran only the rest
    done = state["position"]["step"]
    with (tmp_path / "b" / "run" / "metrics.csv").open(newline="") as fh:
        logged = [int(r["step"]) for r in csv.DictReader(fh) if r["name"] == "train/total"]
    assert logged.count(1) == 1, "the resumed process started again from step 1"
    assert logged[-(75 - done) :] == list(range(done + 1, 76))


def test_sampler_splits_each_global_batch_across_ranks() -> None:
    one = EpochSampler(40, 8, seed=3).batches(epoch=2)
    ranks = [EpochSampler(40, 4, seed=3, rank=r, world=2).batches(epoch=2) for r in range(2)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    assert EpochSampler(40, 8, seed=3).batches(epoch=3) != one
    assert sorted(i for b in one for i, _ in b) == list(range(40))
    assert [d for b in one for _, d in b] == list(range(40))  # draw positions seed the views


def test_balanced_sampling_flattens_labels_within_each_source_and_sets_shares() -> None:
    records = [Record(image=f"a{i}", label="nv", source="ham") for i in range(90)]
    records += [Record(image=f"b{i}", label="mel", source="ham") for i in range(10)]
    records += [Record(image=f"c{i}", label="acne", source="dn") for i in range(100)]
    w = sampling_weights(records, "inverse", {"ham": 0.75})
    assert w[:90].sum() == pytest.approx(0.375) and w[90:100].sum() == pytest.approx(0.375)
    assert w[100:].sum() == pytest.approx(0.25)
    sqrt = sampling_weights(records, "sqrt")
    assert sqrt[:90].sum() / sqrt[90:100].sum() == pytest.approx(3.0)
    assert sampling_weights(records, "none") is None


def test_config_errors_name_the_problem(tmp_path: Path, manifest: Path) -> None:
    from dermfm.train.config import ConfigError

    with pytest.raises(ConfigError, match="unknown keys in 'optim'"):
        load_config(_config(tmp_path, manifest, "parts"), ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"loss\.kind"):
        load_config(_config(tmp_path, manifest, "parts"), ["loss.kind=triplet"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    assert load_config("bundled").model.init == "previous"  # the last of its stages


def test_dual_encoder_trains_every_objective_and_exports_a_loadable_model(
    tmp_path: Path, manifest: Path
) -> None:
    """LiT-style: frozen text tower and frozen early image blocks stay exactly as shipped."""
    from dermfm import load_model

    trainer = _parts_trainer(
        tmp_path,
        manifest,
        model={"image_size": 64, "freeze_text": True, "frozen_image_blocks": 4},
        data={"views": ["ontology", "caption", "free"]},
        loss={"kind": "make", "local_weight": 0.5, "masked_latent_weight": 1.0},
        optim={"epochs": 1, "batch_size": 5},
    )
    assert not trainer.model.net.text.training  # a frozen tower runs without dropout
    assert trainer.model.net.visual.training and trainer.model.net.text_proj.training
    before = {k: v.clone() for k, v in trainer.model.net.state_dict().items()}
    folder = trainer.fit()
    assert folder is not None
    log = (tmp_path / "run" / "metrics.csv").read_text()
    for term in ("train/contrastive", "train/local", "train/masked_latent"):
        assert term in log
    after = trainer.model.net.state_dict()
    assert torch.equal(
        after["visual.net._blocks.0._depthwise_conv.weight"],
        before["visual.net._blocks.0._depthwise_conv.weight"],
    )
    assert torch.equal(
        after["text.encoder.embeddings.word_embeddings.weight"],
        before["text.encoder.embeddings.word_embeddings.weight"],
    )
    assert not torch.equal(
        after["visual.net._blocks.10._project_conv.weight"],
        before["visual.net._blocks.10._project_conv.weight"],
    )
    assert not torch.equal(after["text_proj.weight"], before["text_proj.weight"])
    stored = load_file(str(folder / "model.safetensors"))
    assert not any(k.startswith("text.") for k in stored)  # frozen tower comes from PyPI
    loaded = load_model(folder)
    image = Image.open(json.loads(manifest.read_text().splitlines()[0])["image"])
    direct = trainer.model.as_model("check").embed_images([image]).vectors
    torch.testing.assert_close(loaded.embed_images([image]).vectors, direct, atol=1e-5, rtol=0)


def test_top_text_layers_train_and_only_they_are_stored_and_reloaded(
    tmp_path: Path, manifest: Path
) -> None:
    from dermfm.models import load_model

    trainer = _parts_trainer(
        tmp_path,
        manifest,
        model={"image_size": 64, "freeze_text": True, "text_trainable_layers": 2},
        optim={"epochs": 1, "batch_size": 5, "lr": 1e-3, "text_tower_lr": 5e-4},
    )
    assert not trainer.model.net.text.training  # trained layers run without dropout too
    lrs = {id(p): g["initial_lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    top = trainer.model.net.text.encoder.encoder.layer[5].output.dense.weight
    assert lrs[id(top)] == pytest.approx(5e-4)
    assert lrs[id(trainer.model.net.text_proj.weight)] == pytest.approx(1e-3)
    before = {k: v.clone() for k, v in trainer.model.net.state_dict().items()}
    folder = trainer.fit()
    assert folder is not None
    after = trainer.model.net.state_dict()
    for frozen in (
        "text.encoder.embeddings.word_embeddings.weight",
        "text.encoder.encoder.layer.3.output.dense.weight",
    ):
        assert torch.equal(after[frozen], before[frozen])
    for trained in (
        "text.encoder.encoder.layer.4.output.dense.weight",
        "text.encoder.encoder.layer.5.attention.self.query.weight",
    ):
        assert not torch.equal(after[trained], before[trained])
    stored = load_file(str(folder / "model.safetensors"))
    text_keys = {k for k in stored if k.startswith("text.")}
    assert text_keys and all(
        k.startswith(("text.encoder.encoder.layer.4.", "text.encoder.encoder.layer.5."))
        for k in text_keys
    )
    assert json.loads((folder / "dermfm_config.json").read_text())["text_trained_layers"] == [4, 5]
    assert {stored[k].dtype for k in text_keys} == {torch.float16}  # half the bytes
    loaded = load_model(folder)
    texts = ["a photo of psoriasis", "melanoma on the back"]
    direct = trainer.model.as_model("check").encode_texts(texts)
    # the same embeddings up to float16 rounding of the stored layers
    torch.testing.assert_close(loaded.encode_texts(texts), direct, atol=2e-3, rtol=0)
    untrained = load_model(folder)
    untrained.model.text_overrides = {}
    assert (untrained.encode_texts(texts) - direct).abs().max() > 1e-2
    # saved again by a run that trains no text layer (its tower not even built): still kept
    from dermfm.models.bundled import load_dual_encoder, save_folder

    module = load_dual_encoder(folder)
    again = save_folder(module, tmp_path / "again", {"text_trained_layers": []})
    restored = load_file(str(again / "model.safetensors"))
    assert json.loads((again / "dermfm_config.json").read_text())["text_trained_layers"] == [4, 5]
    assert torch.equal(
        restored["text.encoder.encoder.layer.5.output.dense.weight"],
        stored["text.encoder.encoder.layer.5.output.dense.weight"],
    )


def test_text_trainable_layers_needs_a_frozen_text_tower(tmp_path: Path, manifest: Path) -> None:
    with pytest.raises(Exception, match="text_trainable_layers"):
        load_config(_config(tmp_path, manifest, "parts", model={"text_trainable_layers": 2}))


def test_cli_packs_shards_and_trains_from_them(
    tmp_path: Path, manifest: Path, tiny_open_clip: Path
) -> None:
    dermfm = str(REPO / ".venv" / "bin" / "dermfm")
    shards = tmp_path / "shards"
    packed = _run(
        [
            dermfm,
            "data",
            "pack",
            str(manifest),
            str(shards),
            "--shard-size",
            "5",
            "--split",
            "train",
        ]
    )
    assert packed.returncode == 0, packed.stderr[-2000:]
    assert "20 samples in 4 shards" in packed.stdout
    val = {"generated": "melanoma,melanocytic nevus,psoriasis"}
    config = _config(tmp_path, manifest, str(tiny_open_clip), validation={"label_sets": val})
    sets = [
        "--set",
        "data.manifest=null",
        "--set",
        f"data.shards={shards}",
        "--set",
        f"data.val_manifest={manifest}",
        "--set",
        "optim.epochs=2",
    ]
    trained = _run([dermfm, "train", str(config), *sets])
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 10  # 2 epochs x 20 streamed samples / batch 4
    log = (tmp_path / "run" / "metrics.csv").read_text()
    for metric in ("accuracy", "balanced_accuracy", "macro_auroc"):  # per-epoch validation
        assert log.count(f"val/generated/{metric},") == 2
    from dermfm import load_model

    assert load_model(tmp_path / "run" / "model").embed_dim == 32


def test_transformers_model_fine_tunes_lit_style_and_saves_in_its_own_format(
    tmp_path: Path, manifest: Path, tiny_transformers_clip: Path
) -> None:
    """Locked image tower (LiT): image embeddings unchanged, text embeddings trained."""
    from dermfm import load_model
    from dermfm.train import Trainer

    config = load_config(
        _config(
            tmp_path,
            manifest,
            str(tiny_transformers_clip),
            model={"freeze_image": True, "freeze_text": False},
            optim={"epochs": 1, "lr": 1e-2},
            validation={"label_sets": {}},
        )
    )
    folder = Trainer(config).fit()
    assert folder is not None and (folder / "config.json").is_file()
    before, after = load_model(tiny_transformers_clip), load_model(folder)
    image = json.loads(manifest.read_text().splitlines()[0])["image"]
    torch.testing.assert_close(
        after.embed_images([image]).vectors, before.embed_images([image]).vectors
    )
    texts = ["melanoma", "psoriasis"]
    assert not torch.allclose(after.encode_texts(texts), before.encode_texts(texts), atol=1e-4)


def test_gradient_accumulation_steps_once_per_accum_micro_batches(
    tmp_path: Path, manifest: Path, tiny_open_clip: Path
) -> None:
    """accum_steps=2: half the optimiser steps, and each step averages two micro-batch grads."""
    from dermfm.train import Trainer

    config = load_config(
        _config(tmp_path, manifest, str(tiny_open_clip), validation={"label_sets": {}}),
        ["optim.accum_steps=2", "optim.epochs=1", "optim.batch_size=2", "optim.grad_clip=null"],
    )
    trainer = Trainer(config)
    assert trainer.steps_per_epoch == 5  # 20 records / batch 2 / 2 micro-batches per step
    micro = list(trainer._micro_batches(0, 0))[:2]
    expected = []
    for batch in micro:  # each micro-batch's own gradient, computed separately
        trainer.step_module.zero_grad()
        trainer.ddp(batch.pixels, batch.texts, batch.labels)["total"].backward()
        expected.append(
            {
                n: p.grad.clone()
                for n, p in trainer.step_module.named_parameters()
                if p.grad is not None
            }
        )
    trainer.step_module.zero_grad()
    captured = {}
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: (
        captured.update(  # type: ignore[method-assign]
            {
                n: p.grad.clone()
                for n, p in trainer.step_module.named_parameters()
                if p.grad is not None
            }
        )
        or step()
    )
    trainer.train_step(micro, epoch=0)
    for name, grad in captured.items():
        torch.testing.assert_close(grad, (expected[0][name] + expected[1][name]) / 2)


def test_staged_recipe_warm_starts_each_stage_and_resizes_progressively(
    tmp_path: Path, manifest: Path
) -> None:
    """Stage 2 starts from stage 1's model (re-sized to its own resolution), trains at the
    scheduled sizes, and a finished stage is not run again."""
    from dermfm import load_model
    from dermfm.train import Trainer, load_stages, train_recipe

    doc = {
        "model": {"init": "parts", "freeze_text": True},
        "data": {"manifest": str(manifest), "views": ["caption"]},
        "loss": {"kind": "clip"},
        "optim": {"epochs": 1, "batch_size": 4, "warmup_steps": 1},
        "run": {"output": str(tmp_path / "run"), "progress": False},
        "validation": {"label_sets": {}},
        "stages": [
            {"name": "first", "model": {"image_size": 48}},
            {
                "name": "second",
                "model": {"init": "previous", "image_size": 64, "resize_schedule": {1: 56}},
                "optim": {"epochs": 2},
            },
        ],
    }
    recipe = tmp_path / "staged.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    stages = load_stages(recipe)
    assert [name for name, _ in stages] == ["first", "second"]
    assert stages[1][1].run.output == str(tmp_path / "run" / "second")
    folder = train_recipe(recipe)
    assert folder == tmp_path / "run" / "second" / "model"
    first = load_model(tmp_path / "run" / "first" / "model")
    second = load_model(folder)
    assert (first.image_size, second.image_size) == (48, 64)
    summary = json.loads((tmp_path / "run" / "second" / "summary.json").read_text())
    assert summary["recipe"]["model"]["init"] == str(tmp_path / "run" / "first" / "model")
    # the second stage trains at 64 px in epoch 0, then at the scheduled 56 px
    config = stages[1][1]
    config.model.init = str(tmp_path / "run" / "first" / "model")
    trainer = Trainer(config)
    sizes = [next(trainer._micro_batches(e, 0)).pixels.shape[-1] for e in (0, 1)]
    assert sizes == [64, 56]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert train_recipe(recipe) == folder  # finished stages are kept, not retrained
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match="previous"):
        doc["stages"] = [{"name": "only", "model": {"init": "previous"}}]
        recipe.write_text(yaml.safe_dump(doc))
        load_stages(recipe)


def test_packaged_bundled_recipe_has_its_four_stages_on_all_six_sources() -> None:
    from dermfm.train import load_stages

    (_, first), (_, second), (_, third), (_, fourth) = load_stages("bundled")
    assert first.model.init == "parts"
    assert second.model.init == third.model.init == fourth.model.init == "previous"
    assert second.model.image_size == 224 and second.model.frozen_image_blocks == 0
    assert max(second.model.resize_schedule.values()) == 224
    assert len(second.data.sources) == 6 and second.run.precision == "bf16"
    assert third.model.image_size == 224 and not third.model.resize_schedule
    assert third.data.sources == second.data.sources and third.run.precision == "fp32"
    # stage 4 restarts stage 3's schedule at a lower peak, with a new sample order
    assert fourth.model.image_size == 224 and fourth.data.sources == third.data.sources
    assert fourth.optim.lr < third.optim.lr and fourth.run.seed != third.run.seed


def test_text_layers_experiment_recipe_continues_the_shipped_model() -> None:
    from dermfm.train import load_stages

    (_, fourth) = load_stages("bundled")[-1]
    [(_, experiment)] = load_stages(REPO / "configs" / "train" / "bundled_text_layers.yaml")
    assert experiment.model.init == "dermfm-bundled" and experiment.model.freeze_text
    assert experiment.model.text_trainable_layers == 2
    assert experiment.data.sources == fourth.data.sources
    assert experiment.optim.lr < fourth.optim.lr and experiment.run.seed != fourth.run.seed
