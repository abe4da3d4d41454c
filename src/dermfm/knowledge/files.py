"""Reading and checking the YAML/JSON knowledge files."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dermfm.errors import KnowledgeError

#: libyaml's safe loader where PyYAML was built with it (same documents, ~10x faster to read the
#: ontology and label sets on every start-up), else the pure-Python one
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

SUPPORTED_SCHEMA = 1


def packaged(name: str) -> Path:
    """Path of a knowledge file shipped inside the package (``dermfm/knowledge/data``)."""
    return Path(str(resources.files("dermfm.knowledge") / "data" / name))


def read_document(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping and check its ``schema_version``; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise KnowledgeError(path, "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise KnowledgeError(path, f"cannot read file ({exc})") from exc
    try:
        data = (
            json.loads(text)
            if path.suffix.lower() == ".json"
            else yaml.load(text, Loader=SAFE_LOADER)
        )
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise KnowledgeError(path, f"not valid YAML/JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise KnowledgeError(path, "expected a mapping at the top level")
    version = data.get("schema_version", SUPPORTED_SCHEMA)
    if version != SUPPORTED_SCHEMA:
        raise KnowledgeError(
            path, f"schema_version {version!r} is not supported (expected {SUPPORTED_SCHEMA})"
        )
    return data


def require(entry: dict[str, Any], key: str, source: Path | str, where: str) -> Any:
    """``entry[key]``, or a :class:`KnowledgeError` naming the file and the entry."""
    if not isinstance(entry, dict):
        raise KnowledgeError(source, f"{where}: expected a mapping, got {type(entry).__name__}")
    value = entry.get(key)
    if value is None or value == "":
        raise KnowledgeError(source, f"{where}: missing required field '{key}'")
    return value


def string_list(value: Any, source: Path | str, where: str) -> tuple[str, ...]:
    """A list of non-empty strings (``None`` is the empty list)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise KnowledgeError(source, f"{where}: expected a list of non-empty strings")
    return tuple(v.strip() for v in value)
