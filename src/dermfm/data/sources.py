"""Readers for the labelled dermatology folders (HAM10000, Derm7pt, DermNet NZ) into records.

What each folder holds and how it is split lives in ``sources.yaml`` next to this module; a user
adds a folder of the same shape (``labels.csv`` with a ``file`` column) with their own YAML file.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from dermfm.data.manifest import ManifestError, Record
from dermfm.knowledge import load_concepts, load_label_set
from dermfm.knowledge._files import read_document


def _sources_file() -> Path:
    return Path(str(resources.files("dermfm.data") / "sources.yaml"))


def source_specs(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The source definitions: the packaged ``sources.yaml`` or a user file of the same shape."""
    file = Path(path) if path else _sources_file()
    specs = read_document(file).get("sources")
    if not isinstance(specs, dict) or not specs:
        raise ManifestError(file, "expected a non-empty 'sources' mapping")
    return specs


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


def _split(row: dict[str, str], spec: dict[str, Any], group: str, where: str) -> str | None:
    rule = spec["split"]
    if rule["method"] == "hash":
        return hash_split(group, rule["fractions"], rule.get("salt", ""))
    if rule["method"] == "column":
        return rule["map"].get(row.get(rule["column"], ""))
    raise ManifestError(where, f"unknown split method {rule['method']!r}")


def _concepts(row: dict[str, str], vocabulary: str) -> dict[str, bool]:
    found: dict[str, bool] = {}
    for concept in load_concepts():
        rule = concept.derm7pt if vocabulary == "derm7pt" else None
        if rule and row.get(rule["column"]) not in (None, ""):
            found[concept.id] = row[rule["column"]] in rule["positive"]
    return found


def read_source(
    name: str, root: str | Path, *, specs: dict[str, dict[str, Any]] | None = None
) -> list[Record]:
    """Records of one source folder (``root/<folder>/labels.csv``).

    Rows whose label is not in the source's label set, or whose split maps to nothing, are left
    out. Labels become ontology node ids; the label set's prompt name is kept in
    ``metadata['class_name']`` and the dataset's own label in ``metadata['dataset_label']``.
    """
    specs = specs or source_specs()
    if name not in specs:
        raise ManifestError(name, f"unknown source; known: {', '.join(sorted(specs))}")
    spec = specs[name]
    folder = Path(root) / spec["folder"]
    labels_csv = folder / "labels.csv"
    if not labels_csv.is_file():
        raise ManifestError(labels_csv, "not found: a source folder needs labels.csv")
    classes = {c.label: c for c in load_label_set(spec["label_set"]).classes}
    box = tuple(spec["mask_box"]) if spec.get("mask_box") else None
    records = []
    with labels_csv.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), 2):
            cls = classes.get(row.get(spec["label_column"], ""))
            if cls is None:
                continue
            group = row.get(spec.get("group_column", ""), "") or row["file"]
            split = _split(row, spec, group, f"{labels_csv}:{number}")
            if split is None:
                continue
            metadata = {"modality": spec["modality"], "class_name": cls.name}
            metadata["dataset_label"] = cls.label
            for key, column in (spec.get("metadata_columns") or {}).items():
                if row.get(column) not in (None, "", "unknown"):
                    metadata[key] = row[column]
            records.append(
                Record(
                    image=str((folder / row["file"]).resolve()),
                    label=cls.node or cls.name,
                    split=split,
                    source=name,
                    group=f"{name}:{group}",
                    metadata=metadata,
                    concepts=_concepts(row, spec.get("concept_columns", "")),
                    mask_box=box,  # type: ignore[arg-type]
                )
            )
    return records


def read_sources(root: str | Path, names: Sequence[str] | None = None) -> list[Record]:
    """Records of several source folders under ``root`` (all packaged sources by default)."""
    specs = source_specs()
    return [r for name in names or list(specs) for r in read_source(name, root, specs=specs)]
