"""Shared plumbing of the task modules: resolving models and normalising image inputs."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image

from dermfm.io import DicomFrame, ImageInput, expand_frames
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


def _frames(items: Sequence[ImageInput]) -> list[ImageInput]:
    """The inputs with each multi-frame DICOM file replaced by its frames."""
    out: list[ImageInput] = []
    for item in items:
        out.extend([item] if isinstance(item, Image.Image) else expand_frames([item]))
    return out


def as_batch(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """``(list of inputs, whether a single input was given)``; a multi-frame DICOM file is one
    input per frame (so a single such file gives a list, one result per frame)."""
    if isinstance(images, (str, Path, Image.Image, DicomFrame)):
        batch = _frames([images])
        return batch, len(batch) == 1
    return _frames(list(images)), False
