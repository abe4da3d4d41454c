"""Adapter for Hugging Face ``transformers`` CLIP and SigLIP models (MONET, MedSigLIP...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dermfm.errors import ModelNotSupportedError
from dermfm.models.base import DermModel, ModelCard

#: ``config.json`` model types this adapter understands.
SUPPORTED_TYPES = ("clip", "siglip", "siglip2")


def _features(output: Any) -> torch.Tensor:
    """transformers >= 5 returns a model output whose ``pooler_output`` is the projection."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class TransformersModel(DermModel):
    """A :class:`DermModel` around ``AutoModel`` + ``AutoProcessor`` of a CLIP/SigLIP folder."""

    def __init__(
        self,
        folder: Path,
        card: ModelCard,
        cache_key: str,
        device: str | torch.device = "cpu",
        mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    ) -> None:
        from transformers import AutoModel, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # library code stays silent
        self.device = torch.device(device)
        self.model = AutoModel.from_pretrained(folder).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(folder)
        if mean_std:
            self.processor.image_processor.image_mean = list(mean_std[0])
            self.processor.image_processor.image_std = list(mean_std[1])
        self.model_type = self.model.config.model_type
        self.card = card
        self.cache_key = cache_key
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        self.image_size = int(self.model.config.vision_config.image_size)

    def preprocess(self, image: Image.Image) -> torch.Tensor:  # type: ignore[override]
        """The model's own image processor, one image to a ``(3, H, W)`` tensor."""
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def tokenizer(self, texts: list[str]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Tokenise as the model was trained: SigLIP pads to full length, CLIP to the longest."""
        if self.model_type.startswith("siglip"):
            return self.processor(
                text=texts, padding="max_length", truncation=True, return_tensors="pt"
            )
        return self.processor(text=texts, padding=True, truncation=True, return_tensors="pt")

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _encode_tokens(self, texts: list[str]) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in self.tokenizer(texts).items()}
        return _features(self.model.get_text_features(**inputs))


def model_type(folder: Path) -> str | None:
    """The ``model_type`` of a transformers folder's ``config.json``, if readable."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def load_folder(
    folder: Path,
    card: ModelCard,
    cache_key: str,
    device: str = "cpu",
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> TransformersModel:
    """Load a local transformers CLIP/SigLIP folder."""
    kind = model_type(folder)
    if kind not in SUPPORTED_TYPES:
        raise ModelNotSupportedError(
            f"{folder}: transformers model_type '{kind}' is not a CLIP-style dual encoder "
            f"dermfm supports ({', '.join(SUPPORTED_TYPES)})"
        )
    return TransformersModel(folder, card, cache_key, device, mean_std)
