"""Model registry and loading through the real open_clip / transformers code paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dermfm
from dermfm.errors import ModelNotAvailableError, ModelNotSupportedError
from dermfm.models import list_models

PUBLISHED = {
    "dermlip-vit-b16": "hf-hub:redlessone/DermLIP_ViT-B-16",
    "make": "hf-hub:xieji-x/MAKE",
    "biomedclip": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    "monet": "chanwkim/monet",
    "medsiglip-448": "google/medsiglip-448",
    "openai-clip-vit-b16": "ViT-B-16 (pretrained=openai)",
    "openai-clip-vit-l14": "ViT-L-14 (pretrained=openai)",
    "dermlip-panderm": "hf-hub:redlessone/DermLIP_PanDerm-base-w-PubMed-256",
    "dermfm-bundled": "dermfm/bundled",
}


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE",)}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_registry_lists_every_published_model_with_licence_and_location() -> None:
    rows = {r.name: r for r in list_models()}
    for name, source in PUBLISHED.items():
        assert rows[name].id == source
        assert rows[name].licence
        assert rows[name].location
    assert rows["dermfm-bundled"].default


def test_open_clip_folder_loads_and_embeds(oc_model: dermfm.DermModel) -> None:
    assert oc_model.embed_dim == 32
    assert oc_model.image_size == 64
    texts = oc_model.encode_texts(["melanoma", "nevus"])
    assert texts.shape == (2, 32)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_architecture_plus_checkpoint_equals_folder(
    tiny_open_clip: Path, tmp_path: Path, oc_model: dermfm.DermModel
) -> None:
    import open_clip
    from safetensors.torch import load_file

    cfg = json.loads((tiny_open_clip / "open_clip_config.json").read_text())
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(cfg["model_cfg"]))
    checkpoint = tmp_path / "epoch_1.pt"
    state = load_file(str(tiny_open_clip / "open_clip_model.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
    model = dermfm.load_model(config_file, checkpoint=checkpoint)
    prompts = ["a skin image of psoriasis"]
    assert torch.allclose(model.encode_texts(prompts), oc_model.encode_texts(prompts), atol=1e-6)
    assert "ViT-B-16" in open_clip.list_models()


def test_architecture_without_weights_is_refused() -> None:
    with pytest.raises(ModelNotAvailableError, match="not a registered model"):
        dermfm.load_model("ViT-B-16")


def test_single_weights_file_needs_an_architecture(tiny_open_clip: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="needs its architecture"):
        dermfm.load_model(tiny_open_clip / "open_clip_model.safetensors")


def test_transformers_clip_folder_loads(tiny_transformers_clip: Path) -> None:
    model = dermfm.load_model(tiny_transformers_clip)
    assert model.card.backend == "transformers"
    assert model.embed_dim == 32
    assert model.encode_texts(["scale", "crust", "ulcer"]).shape == (3, 32)


def test_folder_that_is_no_model_gets_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="not a model folder"):
        dermfm.load_model(tmp_path)


def test_panderm_is_refused_with_the_reason() -> None:
    with pytest.raises(ModelNotSupportedError, match="PanDerm"):
        dermfm.load_model("dermlip-panderm")


def test_missing_bundled_weights_say_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dermfm.models import bundled

    monkeypatch.setattr(bundled, "weights_dir", lambda: tmp_path)
    with pytest.raises(ModelNotAvailableError, match=r"weights .* are missing"):
        dermfm.load_model()


def test_offline_without_local_copy_fails_fast_with_instructions() -> None:
    result = _run("import dermfm; dermfm.load_model('dermlip-vit-b16')", HF_HUB_OFFLINE="1")
    assert result.returncode != 0
    assert "ModelNotAvailableError" in result.stderr
    assert "hf download redlessone/DermLIP_ViT-B-16" in result.stderr
    assert "--model /path/to/DermLIP_ViT-B-16" in result.stderr


def test_unreachable_hub_fails_fast_with_instructions() -> None:
    # a closed port on loopback stands for a machine without internet access
    result = _run("import dermfm; dermfm.load_model('monet')", HF_ENDPOINT="http://127.0.0.1:9")
    assert result.returncode != 0
    assert "cannot be reached" in result.stderr
    assert "hf download chanwkim/monet" in result.stderr


def test_gated_model_instructions_mention_access(tmp_path: Path) -> None:
    result = _run("import dermfm; dermfm.load_model('medsiglip-448')", HF_HUB_OFFLINE="1")
    assert "gated" in result.stderr and "hf auth login" in result.stderr


def test_hub_id_and_registry_extension_load_from_local_hub_cache(
    tiny_open_clip: Path, tmp_path: Path
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-derm"
    shutil.copytree(tiny_open_clip, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    registry = tmp_path / "my_registry.yaml"
    registry.write_text(
        "schema_version: 1\nmodels:\n  my-derm:\n    backend: open_clip\n"
        "    id: hf-hub:someone/tiny-derm\n    licence: CC0\n"
    )
    code = (
        "import dermfm\n"
        "a = dermfm.load_model('hf-hub:someone/tiny-derm')\n"
        "b = dermfm.load_model('my-derm')\n"
        "print(a.embed_dim, b.card.licence, b.cache_key.endswith('" + commit + "'))\n"
        "print([m.location for m in dermfm.list_models() if m.name == 'my-derm'][0])\n"
    )
    result = _run(
        code, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", DERMFM_REGISTRY=str(registry)
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    assert first == "32 CC0 True"
    assert second.endswith(commit)


def test_bf16_precision_is_close_to_fp32_and_keyed_separately(
    tiny_open_clip: Path, oc_model
) -> None:
    fast = dermfm.load_model(tiny_open_clip, precision="bf16")
    texts = ["melanoma", "psoriasis", "a skin image of tinea corporis"]
    cos = (fast.encode_texts(texts) * oc_model.encode_texts(texts)).sum(dim=-1)
    assert bool((cos > 0.99).all())
    assert fast.cache_key == oc_model.cache_key + ":bf16"
    with pytest.raises(ValueError, match="reload"):
        fast.set_precision("fp32")
    with pytest.raises(ValueError, match="precision"):
        dermfm.load_model(tiny_open_clip, precision="fp16")
