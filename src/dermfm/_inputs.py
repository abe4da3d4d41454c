"""Shared plumbing of the task modules: resolving models and normalising image inputs."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image

from dermfm.io import ImageInput
from dermfm.models import DermModel, load_model

ModelSpec = DermModel | str | Path | None


@lru_cache(maxsize=2)
def _cached_model(name: str | None) -> DermModel:
    return load_model(name)


def resolve_model(model: ModelSpec) -> DermModel:
    """A loaded model: passed through, or loaded once per process by name/path."""
    if isinstance(model, DermModel):
        return model
    return _cached_model(str(model) if model is not None else None)


def as_batch(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """``(list of inputs, whether a single input was given)``."""
    if isinstance(images, (str, Path, Image.Image)):
        return [images], True
    return list(images), False
