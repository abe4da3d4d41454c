"""The assistant's settings: the packaged ``consult.yaml`` (modality prompts, context prompts,
retrieval and report options), updated key by key with a user file."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from dermfm.knowledge.files import read_document


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


@cache
def _packaged_settings() -> dict[str, Any]:
    return read_document(Path(__file__).with_name("consult.yaml"))


def load_settings(path: str | Path | None = None) -> dict[str, Any]:
    """The packaged ``consult.yaml``, updated key by key with a user file when given."""
    settings = _packaged_settings()
    return _merge(settings, read_document(path)) if path else dict(settings)


__all__ = ["load_settings"]
