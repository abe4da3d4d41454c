"""Adapter for open_clip models: hf-hub ids, local folders, architectures + checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dermfm.cache import atomic_write_bytes, cache_dir, content_key
from dermfm.errors import ModelNotAvailableError
from dermfm.models.base import DermModel, ModelCard

#: File names open_clip looks for in a model folder, preferred first.
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenClipModel(DermModel):
    """A :class:`DermModel` around an ``open_clip`` model, tokenizer and transform."""

    def __init__(
        self,
        model: Any,
        preprocess: Any,
        tokenizer: Any,
        card: ModelCard,
        cache_key: str,
        device: str | torch.device = "cpu",
        open_clip_config: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        #: ``{"model_cfg": ..., "preprocess_cfg": ...}``: what a trained copy is saved with.
        self.open_clip_config = open_clip_config
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.card = card
        self.cache_key = cache_key
        self.logit_scale = float(model.logit_scale.detach().exp())
        size = model.visual.image_size
        self.image_size = int(max(size) if isinstance(size, (tuple, list)) else size)

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_tokens(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def weight_file(folder: Path) -> Path | None:
    """The open_clip weight file inside ``folder``, if there is one."""
    return next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)


def _norm_kwargs(mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None) -> dict:
    return {"image_mean": mean_std[0], "image_std": mean_std[1]} if mean_std else {}


def load_folder(
    folder: Path,
    card: ModelCard,
    cache_key: str,
    device: str = "cpu",
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> OpenClipModel:
    """Load a folder holding ``open_clip_config.json`` and its weights (hf-hub layout)."""
    import open_clip

    if weight_file(folder) is None:
        raise ModelNotAvailableError(
            f"{folder}: has open_clip_config.json but no weights ({' or '.join(WEIGHT_FILES)})"
        )
    spec = f"local-dir:{folder}"
    model, _, preprocess = open_clip.create_model_and_transforms(
        spec, device=device, **_norm_kwargs(mean_std)
    )
    config = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
    return OpenClipModel(
        model, preprocess, open_clip.get_tokenizer(spec), card, cache_key, device, config
    )


def load_architecture(
    arch: str,
    weights: Path,
    card: ModelCard,
    cache_key: str,
    device: str = "cpu",
    pretrained_tag: str | None = None,
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> OpenClipModel:
    """Build open_clip architecture ``arch`` (a name or a model-config JSON) with ``weights``.

    ``pretrained_tag`` carries the settings of a published tag (e.g. QuickGELU for ``openai``).
    """
    import open_clip

    if arch.endswith(".json") and Path(arch).is_file():
        arch = _register_config(Path(arch))
    if arch not in open_clip.list_models():
        raise ModelNotAvailableError(
            f"'{arch}' is not an open_clip architecture (see open_clip.list_models())"
        )
    kwargs: dict[str, Any] = _norm_kwargs(mean_std)
    if pretrained_tag:
        cfg = open_clip.get_pretrained_cfg(arch, pretrained_tag)
        kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
        for key in ("mean", "std"):
            if cfg.get(key) and f"image_{key}" not in kwargs:
                kwargs[f"image_{key}"] = cfg[key]
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=str(weights), device=device, **kwargs
    )
    config = {
        "model_cfg": open_clip.get_model_config(arch),
        "preprocess_cfg": {
            "mean": list(preprocess.transforms[-1].mean),
            "std": list(preprocess.transforms[-1].std),
        },
    }
    return OpenClipModel(
        model, preprocess, open_clip.get_tokenizer(arch), card, cache_key, device, config
    )


def _register_config(path: Path) -> str:
    """Register a user's open_clip model config JSON and return the name it is known by."""
    import open_clip

    data = json.loads(path.read_text(encoding="utf-8"))
    model_cfg = data.get("model_cfg", data)
    missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(model_cfg)
    if missing:
        raise ModelNotAvailableError(f"{path}: not an open_clip model config (missing {missing})")
    name = f"user-{path.stem}-{content_key(model_cfg)[:12]}"
    cfg_file = cache_dir("open_clip_configs") / f"{name}.json"
    atomic_write_bytes(cfg_file, json.dumps(model_cfg).encode("utf-8"))
    open_clip.add_model_config(cfg_file)
    return name
