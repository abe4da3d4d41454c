"""Dataset specs: the packaged ones (``sources.yaml``, ``specs/*.yaml``) and a user's files,
checked field by field against the schema documented at the top of ``sources.yaml``; the
deterministic hash split. :mod:`~dermfm.data.sources` reads the datasets they describe."""

from __future__ import annotations

import ast
import hashlib
import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from dermfm.data.manifest import ManifestError, _mask_box
from dermfm.knowledge.files import read_document

#: Spec fields by layout (``name`` and ``spec_file`` are set by :func:`load_dataset_spec`).
_COMMON_FIELDS = frozenset(
    {
        "name",
        "spec_file",
        "description",
        "folder",
        "layout",
        "modality",
        "label_set",
        "label_map",
        "exclude",
        "group_column",
        "near_duplicates",
        "group_link",
        "metadata_columns",
        "value_maps",
        "missing_values",
        "malignant",
        "concept_columns",
        "mask_box",
        "split",
    }
)
_LAYOUT_FIELDS = {
    "csv": frozenset(
        {
            "labels_file",
            "delimiter",
            "join",
            "file_column",
            "file_template",
            "image_dirs",
            "image_columns",
            "label_column",
            "label_onehot",
            "label_parse",
        }
    ),
    "image_folder": frozenset({"images_dir"}),
    "clip_benchmark_wds": frozenset({"splits", "extract_to"}),
}
_SPLIT_FIELDS = {
    "hash": ({"fractions"}, {"salt"}),
    "column": ({"column"}, {"map", "default"}),
    "all": (set(), {"name"}),
    "index_files": ({"files"}, {"column"}),
    "folder": (set(), {"map"}),
}


def _list_first(value: str) -> str:
    """First entry of a list literal (``"['Eczema', 'Psoriasis']"`` -> ``Eczema``)."""
    try:
        items = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    if isinstance(items, (list, tuple)):
        return str(items[0]).strip() if items else ""
    return str(items)


#: ``label_parse`` options: how a label cell becomes a label.
LABEL_PARSERS: dict[str, Callable[[str], str]] = {"list_first": _list_first}


def _sources_file() -> Path:
    return Path(str(resources.files("dermfm.data") / "sources.yaml"))


def _datasets_dir() -> Path:
    return Path(str(resources.files("dermfm.data") / "specs"))


@lru_cache(maxsize=1)
def spec_defaults() -> dict[str, Any]:
    """The ``defaults`` of the packaged ``sources.yaml`` (missing values, value maps...)."""
    return read_document(_sources_file()).get("defaults") or {}


def source_specs(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The source definitions: the packaged ``sources.yaml`` or a user file of the same shape."""
    file = Path(path) if path else _sources_file()
    specs = read_document(file).get("sources")
    if not isinstance(specs, dict) or not specs:
        raise ManifestError(file, "expected a non-empty 'sources' mapping")
    return {
        name: {**spec, "name": name, "spec_file": str(file)} if isinstance(spec, dict) else spec
        for name, spec in specs.items()
    }


def dataset_names() -> list[str]:
    """Names of the packaged dataset specs (training sources and published datasets)."""
    published = sorted(p.stem for p in _datasets_dir().glob("*.yaml"))
    return [*source_specs(), *published]


def load_dataset_spec(spec: str | Path) -> dict[str, Any]:
    """A checked dataset spec: a packaged one by name, or a user's YAML/JSON file by path.

    A user file holds one spec at its top level (like the files in ``specs/``), or a
    ``sources`` mapping with exactly one entry. Its ``name`` defaults to the file's stem.

    Raises:
        ManifestError: unknown name, or a spec field that is missing or invalid (the message
            names the file and the field).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
        doc = read_document(path)
        if "sources" in doc:
            entries = source_specs(path)
            if len(entries) != 1:
                raise ManifestError(
                    path,
                    f"holds {len(entries)} specs under 'sources' ({', '.join(entries)}); "
                    "pass one name with read_source(name, root, specs=source_specs(path))",
                )
            return checked_spec(next(iter(entries.values())), path)
        body = {k: v for k, v in doc.items() if k not in ("schema_version", "version")}
        return checked_spec({"name": path.stem, **body, "spec_file": str(path)}, path)
    sources = source_specs()
    if text in sources:
        return checked_spec(sources[text], _sources_file())
    packaged = _datasets_dir() / f"{text}.yaml"
    if packaged.is_file():
        return load_dataset_spec(packaged)
    raise ManifestError(
        text, f"not a spec file nor a packaged dataset (known: {', '.join(dataset_names())})"
    )


def _field_error(file: str | Path, name: str, problem: str) -> ManifestError:
    return ManifestError(file, f"field '{name}': {problem}")


def checked_spec(spec: dict[str, Any], file: str | Path) -> dict[str, Any]:
    """``spec`` after checking its fields (names, types, split rule); errors name the field."""
    if not isinstance(spec, dict):
        raise ManifestError(file, "a dataset spec must be a mapping")
    layout = spec.get("layout", "csv")
    if layout not in _LAYOUT_FIELDS:
        raise _field_error(file, "layout", f"{layout!r} is not one of {list(_LAYOUT_FIELDS)}")
    for key in spec:
        if key not in _COMMON_FIELDS | _LAYOUT_FIELDS[layout]:
            other = [name for name, keys in _LAYOUT_FIELDS.items() if key in keys]
            hint = f"applies to layout {other[0]} only" if other else "unknown field"
            raise _field_error(file, key, hint)
    if layout == "csv":
        if ("label_column" in spec) == ("label_onehot" in spec):
            raise _field_error(file, "label_column", "give exactly one of it and label_onehot")
        if spec.get("label_parse") not in (None, *LABEL_PARSERS):
            raise _field_error(file, "label_parse", f"must be one of {list(LABEL_PARSERS)}")
        for entry in spec.get("image_columns") or []:
            if not isinstance(entry, dict) or not entry.get("column"):
                raise _field_error(file, "image_columns", "each entry needs a 'column'")
        for entry in spec.get("join") or []:
            if not isinstance(entry, dict) or not entry.get("file") or not entry.get("key"):
                raise _field_error(file, "join", "each entry needs 'file' and 'key'")
        if "{}" not in spec.get("file_template", "{}"):
            raise _field_error(file, "file_template", "must contain '{}' (the column's value)")
    for key in ("metadata_columns", "value_maps", "label_map", "exclude", "malignant"):
        if key in spec and not isinstance(spec[key], dict):
            raise _field_error(file, key, "must be a mapping")
    known_maps = {**(spec_defaults().get("value_maps") or {}), **(spec.get("value_maps") or {})}
    for key, value in (spec.get("value_maps") or {}).items():
        if not isinstance(value, dict) and not isinstance(known_maps.get(str(value)), dict):
            raise _field_error(file, "value_maps", f"{key}: {value!r} is neither a map nor a key")
    if "malignant" in spec and not spec["malignant"].get("column"):
        raise _field_error(file, "malignant", "needs a 'column' (and 'positive' values)")
    _check_grouping(spec, file)
    if spec.get("concept_columns") not in (None, "derm7pt"):
        raise _field_error(file, "concept_columns", "only 'derm7pt' is known")
    try:
        _mask_box(spec.get("mask_box"), str(file))
    except ManifestError as exc:
        raise _field_error(file, "mask_box", exc.problem) from None
    _check_split(spec_split(spec), layout, file)
    return spec


def _check_grouping(spec: Mapping[str, Any], file: str | Path) -> None:
    columns = spec.get("group_column", [])
    if not isinstance(columns, str) and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        raise _field_error(file, "group_column", "must be a column name or a list of them")
    near = spec.get("near_duplicates")
    if near is not None and (
        not isinstance(near, dict)
        or not isinstance(near.get("max_distance"), int)
        or not 0 <= near["max_distance"] < 64
    ):
        raise _field_error(file, "near_duplicates", "needs 'max_distance': 0..63 bits of pHash")
    link = spec.get("group_link")
    if link is not None and (
        not isinstance(link, dict) or not link.get("column") or not link.get("source")
    ):
        raise _field_error(file, "group_link", "needs 'column' and 'source'")


def spec_split(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's split rule; by default every row is a test row (webdatasets: their folders)."""
    default = "folder" if spec.get("layout") == "clip_benchmark_wds" else "all"
    return spec.get("split") or {"method": default}


def _check_split(rule: Any, layout: str, file: str | Path) -> None:
    method = rule.get("method") if isinstance(rule, dict) else None
    if method not in _SPLIT_FIELDS:
        raise _field_error(file, "split", f"'method' must be one of {list(_SPLIT_FIELDS)}")
    required, optional = _SPLIT_FIELDS[method]
    if required - set(rule):
        raise _field_error(file, "split", f"method {method} needs {sorted(required - set(rule))}")
    if set(rule) - required - optional - {"method"}:
        unknown = sorted(set(rule) - required - optional - {"method"})
        raise _field_error(file, "split", f"method {method} has no option {unknown}")
    if method == "folder" and layout == "csv":
        raise _field_error(file, "split", "method folder needs layout image_folder or a webdataset")
    if method == "hash":
        fractions = rule["fractions"]
        if not isinstance(fractions, dict) or not math.isclose(
            sum(float(f) for f in fractions.values()), 1.0, abs_tol=1e-6
        ):
            raise _field_error(file, "split", "hash fractions must sum to 1")


def hash_split(group: str, fractions: dict[str, float], salt: str) -> str:
    """Deterministic split of ``group``: a salted SHA-1 mapped to [0, 1) and cut by fractions."""
    digest = hashlib.sha1(f"{salt}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in fractions.items():
        edge += float(fraction)
        if u < edge:
            return name
    return next(reversed(fractions))
