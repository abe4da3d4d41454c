"""The trainable view of any :class:`~dermfm.models.DermModel`.

Training needs differentiable towers, the learnable temperature, tower-wise freezing and a way to
write the result back in the model's own format. :class:`Trainable` provides that once for every
backend: dermfm's dual encoder (built from its pretrained parts or loaded), open_clip models
(DermLIP, MAKE, BiomedCLIP...) and transformers CLIP/SigLIP models (MONET...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dermfm.models import load_model
from dermfm.models.base import DermModel, ModelCard
from dermfm.models.bundled import (
    DualEncoder,
    DualEncoderConfig,
    DualEncoderModel,
    save_folder,
)
from dermfm.train.config import ConfigError, ModelSection

#: Attribute names of image-tower modules across backends (dermfm, open_clip, transformers).
IMAGE_PARTS = ("visual", "image_proj", "vision_model", "visual_projection")
#: Attribute names of text-tower modules across backends.
TEXT_PARTS = (
    "text",
    "text_proj",
    "transformer",
    "token_embedding",
    "positional_embedding",
    "ln_final",
    "text_projection",
    "text_model",
)


def _normalisation(preprocess: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # the dual encoder's EvalTransform, or a step of a torchvision Compose (open_clip)
    for step in (preprocess, *getattr(preprocess, "transforms", [])):
        if hasattr(step, "mean") and hasattr(step, "std"):
            return tuple(step.mean), tuple(step.std)
    processor = getattr(getattr(preprocess, "__self__", None), "processor", None)
    if processor is not None:
        ip = processor.image_processor
        return tuple(ip.image_mean), tuple(ip.image_std)
    return (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class Trainable(nn.Module):
    """Differentiable towers + temperature of a :class:`DermModel`, ready for the losses.

    Args:
        wrapped: the loaded model (its ``.model`` holds every parameter).
        section: the ``model`` section of the training config (freezing choices).
    """

    def __init__(self, wrapped: DermModel, section: ModelSection) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.net: nn.Module = wrapped.model
        self.is_dual = isinstance(self.net, DualEncoder)
        if not hasattr(self.net, "logit_bias"):
            self.extra_bias = nn.Parameter(torch.tensor(-10.0))
        self.mean, self.std = _normalisation(wrapped.preprocess)
        self.image_size = wrapped.image_size
        self._set_frozen(section)

    # ------------------------------------------------------------------ parts
    def _parts(self, names: tuple[str, ...]) -> list[nn.Module | nn.Parameter]:
        return [getattr(self.net, n) for n in names if getattr(self.net, n, None) is not None]

    def _set_frozen(self, section: ModelSection) -> None:
        #: Frozen tower modules: kept in eval mode (no dropout, fixed norm statistics).
        self._frozen_modules: list[nn.Module] = []
        for frozen, names in (
            (section.freeze_image, IMAGE_PARTS),
            (section.freeze_text, TEXT_PARTS),
        ):
            for part in self._parts(names):
                if frozen and isinstance(part, nn.Module):
                    self._frozen_modules.append(part)
                params = [part] if isinstance(part, nn.Parameter) else list(part.parameters())
                for p in params:
                    p.requires_grad_(not frozen)
        self.text_tower_frozen = section.freeze_text
        #: Indices of the MiniLM layers that train inside an otherwise frozen text tower.
        self.trained_text_layers: list[int] = []
        if section.text_trainable_layers:
            self._unfreeze_text_layers(section.text_trainable_layers)
        if self.is_dual:
            self.net.frozen_blocks = section.frozen_image_blocks
            for frozen, head in (
                (section.freeze_text, self.net.text_proj),
                (section.freeze_image, self.net.image_proj),
            ):
                if frozen:  # the head on top of a frozen tower still trains
                    head.requires_grad_(True)
                    self._frozen_modules.remove(head)
            blocks = self.net.visual.net
            for module in (
                blocks._conv_stem,
                blocks._bn0,
                *blocks._blocks[: section.frozen_image_blocks],
            ):
                module.requires_grad_(False)
        elif section.frozen_image_blocks:
            raise ConfigError("model.frozen_image_blocks applies to the dual encoder only")
        self.net.train()

    def _unfreeze_text_layers(self, count: int) -> None:
        if not self.is_dual:
            raise ConfigError("model.text_trainable_layers applies to the dual encoder only")
        layers = self.net.text.encoder.encoder.layer
        if not 0 < count <= len(layers):
            raise ConfigError(
                f"model.text_trainable_layers must be between 1 and {len(layers)}, got {count}"
            )
        self.trained_text_layers = list(range(len(layers) - count, len(layers)))
        for i in self.trained_text_layers:
            layers[i].requires_grad_(True)
        self.text_tower_frozen = False  # its features change: no caching

    def train(self, mode: bool = True) -> Trainable:
        """Training mode, except frozen towers, which stay in eval mode."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules:
                module.eval()
        return self

    def image_tower_parameters(self) -> list[nn.Parameter]:
        """Trainable pretrained image-tower weights (they may get their own learning rate)."""
        names = ("visual", "vision_model")
        return [p for m in self._parts(names) for p in m.parameters() if p.requires_grad]

    def text_tower_parameters(self) -> list[nn.Parameter]:
        """Trainable pretrained text-tower weights (they may get their own learning rate)."""
        names = ("text", "transformer", "token_embedding", "text_model")
        return [
            p
            for m in self._parts(names)
            if isinstance(m, nn.Module)
            for p in m.parameters()
            if p.requires_grad
        ]

    @property
    def logit_scale(self) -> torch.Tensor:
        """Learnable log of the similarity scale."""
        return self.net.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor:
        """Learnable bias of the SigLIP loss."""
        return (
            getattr(self.net, "logit_bias", None)
            if not hasattr(self, "extra_bias")
            else self.extra_bias
        )

    # --------------------------------------------------------------- forward
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings with gradients."""
        if self.is_dual:
            return self.net.encode_image(pixels)
        return self.wrapped._encode_pixels(pixels)

    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled ``(B, D)`` and patch ``(B, P, D)`` embeddings (dual encoder only)."""
        if not self.is_dual:
            raise ConfigError(
                "loss.local_weight needs patch features, which dermfm exposes for its dual "
                "encoder (model.init: parts or a dual-encoder folder)"
            )
        return self.net.image_features(pixels)

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """Final image feature map ``(B, C, h, w)`` (dual encoder only)."""
        if not self.is_dual:
            raise ConfigError("loss.masked_latent_weight needs the dual encoder's image tower")
        return self.net.visual(pixels, self.net.frozen_blocks)

    def text_tower(self, texts: list[str]) -> torch.Tensor:
        """Text features before any trainable head (cacheable when the tower is frozen)."""
        if self.is_dual:
            return self.net.text(texts)
        return self.wrapped._encode_tokens(texts)

    def text_head(self, features: torch.Tensor) -> torch.Tensor:
        """The trainable head on top of :meth:`text_tower` (identity outside the dual encoder)."""
        return self.net.text_proj(features) if self.is_dual else features

    # ----------------------------------------------------------------- export
    def as_model(self, cache_key: str) -> DermModel:
        """A :class:`DermModel` view of the current weights (for validation); never cached."""
        if self.is_dual:
            card = ModelCard("training", "dual-encoder", "training run", "")
            model = DualEncoderModel(self.net, card, cache_key, str(self.wrapped.device))
        else:
            model = self.wrapped
            model.cache_key = cache_key
            model.logit_scale = float(self.logit_scale.detach().exp())
        model.cacheable = False
        return model

    def save(self, folder: str | Path, metadata: dict[str, Any]) -> Path:
        """Write the trained model in its own format so :func:`dermfm.load_model` reads it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.is_dual:
            partial = bool(self.trained_text_layers)
            return save_folder(
                self.net,
                folder,
                {
                    **metadata,
                    "text_tower_trained": not self.text_tower_frozen and not partial,
                    "text_trained_layers": self.trained_text_layers,
                },
            )
        if hasattr(self.net, "save_pretrained"):  # transformers
            self.net.save_pretrained(folder)
            self.wrapped.processor.save_pretrained(folder)
        else:  # open_clip: the hf-hub folder layout
            config = getattr(self.wrapped, "open_clip_config", None)
            if config is None:
                raise ConfigError("this open_clip model has no config to save with its weights")
            (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
            state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
            save_file(state, str(folder / "open_clip_model.safetensors"))
        (folder / "dermfm_training.json").write_text(json.dumps(metadata, indent=2, default=str))
        return folder


def build_trainable(section: ModelSection, device: str) -> Trainable:
    """The model a run starts from: fresh pretrained parts or any loadable model."""
    if section.init == "parts":
        config = DualEncoderConfig(
            image_size=section.image_size or 160, embed_dim=section.embed_dim
        )
        module = DualEncoder(config, pretrained=True).to(memory_format=torch.channels_last)
        card = ModelCard("parts", "dual-encoder", "pretrained towers", "Apache-2.0")
        wrapped: DermModel = DualEncoderModel(module, card, "parts", device)
    else:
        wrapped = load_model(section.init, device=device)
        if section.image_size and isinstance(wrapped, DualEncoderModel):
            wrapped.resize(section.image_size)
    return Trainable(wrapped, section).to(device)
