"""The model registry: a YAML file of names -> backend, published id, licence, normalisation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from dermfm.errors import KnowledgeError
from dermfm.knowledge.files import read_document, require

BACKENDS = ("open_clip", "transformers", "bundled", "unsupported")


@dataclass(frozen=True)
class RegistryEntry:
    """One named model of the registry."""

    name: str
    backend: str
    id: str
    licence: str
    description: str = ""
    citation: str = ""
    pretrained: str | None = None
    normalisation: str | None = None
    gated: bool = False
    reason: str = ""
    default: bool = False


def _registry_paths() -> tuple[str, ...]:
    packaged = str(resources.files("dermfm.models") / "registry.yaml")
    extra = [p for p in os.environ.get("DERMFM_REGISTRY", "").split(os.pathsep) if p]
    return (packaged, *extra)


@lru_cache(maxsize=4)
def _load(paths: tuple[str, ...]) -> tuple[dict[str, RegistryEntry], dict[str, dict[str, Any]]]:
    entries: dict[str, RegistryEntry] = {}
    normalisations: dict[str, dict[str, Any]] = {}
    for path in paths:
        doc = read_document(path)
        normalisations.update(doc.get("normalisations") or {})
        for name, spec in (doc.get("models") or {}).items():
            where = f"model '{name}'"
            backend = require(spec, "backend", path, where)
            if backend not in BACKENDS:
                raise KnowledgeError(path, f"{where}: backend must be one of {BACKENDS}")
            norm = spec.get("normalisation")
            if norm is not None and norm not in normalisations:
                raise KnowledgeError(path, f"{where}: unknown normalisation '{norm}'")
            entries[name.lower()] = RegistryEntry(
                name=name,
                backend=backend,
                id=str(require(spec, "id", path, where)),
                licence=str(require(spec, "licence", path, where)),
                description=str(spec.get("description", "")).strip(),
                citation=str(spec.get("citation", "")),
                pretrained=spec.get("pretrained"),
                normalisation=norm,
                gated=bool(spec.get("gated", False)),
                reason=str(spec.get("reason", "")).strip(),
                default=bool(spec.get("default", False)),
            )
    return entries, normalisations


def registry() -> dict[str, RegistryEntry]:
    """All registry entries by lower-case name (the packaged file plus ``DERMFM_REGISTRY``)."""
    return _load(_registry_paths())[0]


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of a named normalisation (``imagenet``, ``openai``, ``half``)."""
    spec = _load(_registry_paths())[1][name]
    return tuple(spec["mean"]), tuple(spec["std"])


def default_model_name() -> str:
    """The name of the registry's default model (the bundled one)."""
    return next(e.name for e in registry().values() if e.default)


def lookup(name: str) -> RegistryEntry | None:
    """The entry registered under ``name`` (case-insensitive), if any."""
    return registry().get(name.strip().lower())
