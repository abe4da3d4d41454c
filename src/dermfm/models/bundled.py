"""The bundled offline model: weights shipped inside the package.

This dermfm version does not ship it yet: it is produced by the training work (EfficientNet-Lite0
image tower + all-MiniLM-L6-v2 text tower, trained on public dermatology data). No placeholder
weights stand in for it; asking for it says so.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dermfm.errors import ModelNotAvailableError

#: File that marks a complete bundled model inside :func:`weights_dir`.
WEIGHTS_FILE = "model.safetensors"


def weights_dir() -> Path:
    """Folder inside the installed package where the bundled weights live."""
    return Path(str(resources.files("dermfm.models"))) / "bundled"


def is_available() -> bool:
    """Whether this installation ships the bundled model's weights."""
    return (weights_dir() / WEIGHTS_FILE).is_file()


def unavailable_message() -> str:
    """Why the bundled model cannot be used, and what to do instead."""
    return (
        "dermfm's bundled model ('dermfm-bundled') is not shipped in this version of dermfm: "
        "it is produced by dermfm's training work and no placeholder weights are shipped in "
        "its place. Meanwhile choose a model with --model: a registry name (list them with "
        "`dermfm models`), an open_clip 'hf-hub:org/name' id, or the path of a local open_clip "
        "or transformers CLIP/SigLIP folder."
    )


def require() -> Path:
    """The bundled weights folder, or a :class:`ModelNotAvailableError` explaining its absence."""
    if not is_available():
        raise ModelNotAvailableError(unavailable_message())
    raise ModelNotAvailableError(
        f"{weights_dir()}: bundled weights are present but this dermfm version has no loader "
        "for them; upgrade dermfm."
    )
