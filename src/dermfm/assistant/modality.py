"""The zero-shot modality check: is a photo dermoscopic or clinical? The consultation asks it
of each image (:mod:`~dermfm.assistant.consult`) and the calibration measures its accuracy
(:mod:`~dermfm.assistant.calibration`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from dermfm import cache as dcache
from dermfm.assistant.settings import load_settings

if TYPE_CHECKING:
    from dermfm.models.base import DermModel

#: The image modalities, in the column order of :func:`modality_scores`.
MODALITIES = ("dermoscopy", "clinical")


def modality_scores(
    model: DermModel, embeddings: torch.Tensor, settings: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """``(N, 2)`` zero-shot probabilities of (dermoscopy, clinical) for image embeddings."""
    prompts = (settings or load_settings())["modality"]
    key = dcache.content_key("modality", model.cache_key, [prompts[m] for m in MODALITIES])

    def compute() -> torch.Tensor:
        rows = [model.encode_texts(list(prompts[m])).mean(dim=0) for m in MODALITIES]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    weights = dcache.cached_tensor("classifiers", key, compute, model.cacheable)
    return (embeddings.float() @ weights.T * model.logit_scale).softmax(dim=-1)


__all__ = ["MODALITIES", "modality_scores"]
