"""Model registry and loading: one :class:`DermModel` interface for every backend.

``load_model`` accepts a registry name (``dermlip-vit-b16``), an open_clip ``hf-hub:org/name`` id,
a Hub repository id of a transformers CLIP/SigLIP model, the path of a local open_clip folder
(``open_clip_config.json`` + weights) or transformers folder (``config.json`` + weights), or an
open_clip architecture name or model-config JSON together with ``checkpoint=``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dermfm.errors import ModelNotAvailableError, ModelNotSupportedError
from dermfm.models import bundled, hf, hub, openclip
from dermfm.models.base import DermModel, ImageEmbeddings, ModelCard
from dermfm.models.registry import (
    RegistryEntry,
    default_model_name,
    lookup,
    normalisation,
    registry,
)

__all__ = [
    "DermModel",
    "ImageEmbeddings",
    "ModelCard",
    "ModelInfo",
    "RegistryEntry",
    "default_model_name",
    "list_models",
    "load_model",
]

_LOCAL_LICENCE = "unknown (local files: check the licence of their source)"


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry and where it would load from on this machine."""

    name: str
    backend: str
    id: str
    licence: str
    location: str
    description: str
    default: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-ready mapping."""
        return dict(self.__dict__)


def describe_location(entry: RegistryEntry) -> str:
    """Where ``entry`` would load from on this machine, without loading or downloading."""
    if entry.backend == "unsupported":
        return "not loadable by dermfm (see reason)"
    if entry.backend == "bundled":
        path = bundled.weights_dir()
        return str(path) if bundled.is_available() else "not shipped in this dermfm version"
    repo = hub.repo_for(entry)
    local = hub.local_snapshot(repo)
    return str(local) if local else f"Hugging Face Hub {repo} (not downloaded)"


def list_models() -> list[ModelInfo]:
    """Every registered model with the place it would load from (nothing is downloaded)."""
    return [
        ModelInfo(
            name=e.name,
            backend=e.backend,
            id=e.id + (f" (pretrained={e.pretrained})" if e.pretrained else ""),
            licence=e.licence,
            location=describe_location(e),
            description=e.description,
            default=e.default,
        )
        for e in registry().values()
    ]


def _folder_key(backend: str, folder: Path) -> str:
    stamps = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()
    )
    return f"{backend}:{folder.resolve()}:{stamps}"


def _mean_std(entry: RegistryEntry) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    return normalisation(entry.normalisation) if entry.normalisation else None


def _load_entry(entry: RegistryEntry, device: str) -> DermModel:
    if entry.backend == "unsupported":
        raise ModelNotSupportedError(
            f"dermfm does not load '{entry.name}' ({entry.id}): {entry.reason}"
        )
    if entry.backend == "bundled":
        folder = bundled.require()
        card = ModelCard(
            name=entry.name,
            backend=entry.backend,
            source=entry.id,
            licence=entry.licence,
            description=entry.description,
            citation=entry.citation,
            loaded_from=str(folder),
        )
        return bundled.load_folder(folder, card, device)
    repo = hub.repo_for(entry)
    folder = hub.ensure_snapshot(entry.name, repo, entry.gated)
    card = ModelCard(
        name=entry.name,
        backend=entry.backend,
        source=entry.id + (f" (pretrained={entry.pretrained})" if entry.pretrained else ""),
        licence=entry.licence,
        description=entry.description,
        citation=entry.citation,
        loaded_from=str(folder),
    )
    key = f"{entry.backend}:{repo}@{folder.name}"
    if entry.backend == "transformers":
        return hf.load_folder(folder, card, key, device, _mean_std(entry))
    if entry.pretrained:
        weights = openclip.weight_file(folder)
        if weights is None:
            raise ModelNotAvailableError(f"{folder}: no open_clip weights for '{entry.name}'")
        return openclip.load_architecture(
            entry.id, weights, card, key, device, entry.pretrained, _mean_std(entry)
        )
    return openclip.load_folder(folder, card, key, device, _mean_std(entry))


def _load_folder(folder: Path, label: str, device: str) -> DermModel:
    if (folder / bundled.CONFIG_FILE).is_file():
        card = ModelCard(
            label, "dual-encoder", str(folder), _LOCAL_LICENCE, loaded_from=str(folder)
        )
        return bundled.load_folder(folder, card, device)
    if (folder / "open_clip_config.json").is_file():
        card = ModelCard(label, "open_clip", str(folder), _LOCAL_LICENCE, loaded_from=str(folder))
        return openclip.load_folder(folder, card, _folder_key("open_clip", folder), device)
    if (folder / "config.json").is_file():
        card = ModelCard(
            label, "transformers", str(folder), _LOCAL_LICENCE, loaded_from=str(folder)
        )
        return hf.load_folder(folder, card, _folder_key("transformers", folder), device)
    raise ModelNotAvailableError(
        f"{folder}: not a model folder (expected open_clip_config.json for open_clip or "
        "config.json for a transformers CLIP/SigLIP model)"
    )


def load_model(
    name_or_path: str | Path | None = None,
    *,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> DermModel:
    """Load a model by registry name, Hub id or local path; ``None`` means the default model.

    Args:
        name_or_path: see the module docstring for every accepted form.
        checkpoint: weights for an open_clip architecture name or model-config JSON
            (e.g. ``load_model("ViT-B-16", checkpoint="epoch_15.pt")``).
        device: torch device to run on.
        precision: ``fp32`` (default) or ``bf16`` weights (about 2x faster on CPUs with bf16
            units, embeddings within about 1e-2 of fp32).

    Raises:
        ModelNotAvailableError: weights are not on this machine and cannot be fetched; the
            message says how to obtain them and how to point at a local copy.
        ModelNotSupportedError: a known model dermfm deliberately refuses (reason included).
    """
    return _load(name_or_path, checkpoint, device).set_precision(precision)


def _load(name_or_path: str | Path | None, checkpoint: str | Path | None, device: str) -> DermModel:
    name = str(name_or_path) if name_or_path is not None else default_model_name()
    entry = lookup(name)
    if entry is not None and checkpoint is None:
        return _load_entry(entry, device)
    if name.startswith("hf-hub:") and checkpoint is None:
        return _load_entry(
            RegistryEntry(name=name, backend="open_clip", id=name, licence="see the model page"),
            device,
        )
    path = Path(name).expanduser()
    if checkpoint is not None:
        weights = Path(checkpoint).expanduser()
        if not weights.is_file():
            raise ModelNotAvailableError(f"{weights}: checkpoint file not found")
        card = ModelCard(
            name,
            "open_clip",
            f"{name} + {weights}",
            _LOCAL_LICENCE,
            loaded_from=str(weights),
            checkpoint=str(weights.resolve()),
        )
        stat = weights.stat()
        key = f"open_clip:{name}:{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return openclip.load_architecture(name, weights, card, key, device)
    if path.is_dir():
        return _load_folder(path, name, device)
    if path.is_file():
        raise ModelNotAvailableError(
            f"{path}: a single weights file needs its architecture; pass the open_clip "
            "architecture (e.g. ViT-B-16) or a model-config JSON as the model and this file as "
            "the checkpoint"
        )
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        folder = hub.ensure_snapshot(name, name)
        return _load_folder(folder, name, device)
    raise ModelNotAvailableError(
        f"'{name}' is not a registered model, an existing path, or a Hub id "
        f"(registered: {', '.join(e.name for e in registry().values())})"
    )
