"""Prompt templates for diagnosis ensembles and the MONET concept protocol."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dermfm.errors import KnowledgeError
from dermfm.knowledge.files import packaged, read_document, require


@dataclass(frozen=True)
class ConceptProtocol:
    """Target templates, their reference prompts and the softmax temperature (MONET)."""

    name: str
    targets: tuple[str, ...]
    references: tuple[tuple[str, ...], ...]
    temperature: float


def _fill(template: str, text: str) -> str:
    return template.replace("{}", text)


@lru_cache(maxsize=4)
def _document(path: str) -> dict:
    return read_document(path)


def _path(path: str | Path | None) -> str:
    return str(Path(path).resolve()) if path else str(packaged("templates.yaml"))


def diagnosis_templates(name: str = "skin8", path: str | Path | None = None) -> tuple[str, ...]:
    """The named diagnosis template ensemble (each template contains ``{}``)."""
    source = _path(path)
    sets = _document(source).get("diagnosis") or {}
    if name not in sets:
        raise KnowledgeError(source, f"no diagnosis template set '{name}' (have: {list(sets)})")
    templates = tuple(require(sets[name], "templates", source, f"diagnosis '{name}'"))
    for t in templates:
        if "{}" not in t:
            raise KnowledgeError(source, f"diagnosis '{name}': template {t!r} has no '{{}}'")
    return templates


def concept_protocol(name: str = "monet", path: str | Path | None = None) -> ConceptProtocol:
    """The named concept-scoring protocol."""
    source = _path(path)
    protocols = _document(source).get("concepts") or {}
    if name not in protocols:
        raise KnowledgeError(source, f"no concept protocol '{name}' (have: {list(protocols)})")
    spec = protocols[name]
    where = f"concepts '{name}'"
    entries = require(spec, "templates", source, where)
    log_inv = float(require(spec, "log_inverse_temperature", source, where))
    return ConceptProtocol(
        name=name,
        targets=tuple(str(require(e, "target", source, where)) for e in entries),
        references=tuple(tuple(require(e, "reference", source, where)) for e in entries),
        temperature=1.0 / math.exp(log_inv),
    )


def fill(templates: tuple[str, ...], text: str) -> list[str]:
    """Each template with ``{}`` replaced by ``text``."""
    return [_fill(t, text) for t in templates]
