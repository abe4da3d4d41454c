"""Dataset readers: labelled image collections into :class:`Record` lists.

A dataset *spec* (YAML) says where a dataset's table and images are, which column holds the label
and how labels map onto a label set (or an automatic one built from the labels found), which
columns are subgroups (skin type, sex, age, body site), the group kept together (lesion,
patient) and the split. The schema is documented at the top of ``sources.yaml`` next to this
module. Three layouts are read:

* ``csv``: a table with one row per case (joined tables, one-hot label columns, several images
  per row, images searched in several folders: the published HAM10000, PAD-UFES-20,
  Fitzpatrick17k, DDI, Derm7pt, ISIC 2019/2020 and SCIN layouts);
* ``image_folder``: ``<class>/<image>`` folders, optionally below ``<split>/`` folders (SD-198,
  DermNet-style folders);
* ``clip_benchmark_wds``: CLIP_benchmark's webdataset folders (:mod:`dermfm.data.clip_benchmark`).

Ready specs: the training sources in ``sources.yaml`` (the folders of ``../shared/data``) and one
file per published dataset in ``specs/``; :func:`load_dataset_spec` finds them by name and
reads a user's file by path. :func:`read_dataset` returns the records, the label set and a
:class:`ReadReport` that counts every row left out and why (label missing or outside the label
set, no split, image missing), so a caller can say what was skipped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dermfm.data.dataset_spec import (
    checked_spec,
    hash_split,
    load_dataset_spec,
    source_specs,
    spec_defaults,
    spec_split,
)
from dermfm.data.labels import automatic_label_set, class_finder, raw_label, spec_label_set
from dermfm.data.manifest import ManifestError, Record, _mask_box
from dermfm.data.tables import TABLES, Row, Table, dataset_folder, read_csv, require_columns
from dermfm.knowledge import LabelClass, LabelSet, load_concepts
from dermfm.knowledge.files import read_document
from dermfm.progress import progress

_UNMAPPED = object()


@dataclass(frozen=True)
class ReadReport:
    """What a reader did with a dataset's rows: nothing is left out without being counted.

    Attributes:
        dataset: the spec's name.
        source: the table (or folder) read.
        rows: rows of the table (image files of an image folder, samples of a webdataset).
        records: records returned (a row with several images gives several).
        skipped: reason -> value -> rows left out (reasons: ``excluded``, ``no label``,
            ``ambiguous label``, ``excluded label``, ``unknown label``, ``no split``,
            ``missing image``; the value is the label, split value or column value concerned).
        missing_images: image files the table names that do not exist.
        dropped_values: metadata key -> value -> count of values that had no normalised form
            (e.g. a skin type outside the value map) and were left out of the metadata.
    """

    dataset: str
    source: str
    rows: int
    records: int
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_images: tuple[str, ...] = ()
    dropped_values: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def rows_skipped(self) -> int:
        """Rows left out, all reasons together."""
        return sum(sum(values.values()) for values in self.skipped.values())

    def summary(self) -> str:
        """One paragraph: rows read, rows left out by reason and value, missing files."""
        text = f"{self.dataset}: {self.rows} rows read, {self.records} records"
        if self.skipped:
            parts = []
            for reason, values in self.skipped.items():
                for value, n in sorted(values.items(), key=lambda kv: (-kv[1], kv[0])):
                    parts.append(f"{reason} {value!r} ({n})" if value else f"{reason} ({n})")
            text += f"; {self.rows_skipped} rows skipped: {', '.join(parts)}"
        if self.missing_images:
            text += (
                f"; {len(self.missing_images)} image files missing "
                f"(first: {self.missing_images[0]})"
            )
        if self.dropped_values:
            parts = [
                f"{key}={value!r} ({n})"
                for key, values in self.dropped_values.items()
                for value, n in values.items()
            ]
            text += f"; metadata values without a normalised form dropped: {', '.join(parts)}"
        return text

    def to_dict(self, max_listed: int = 20) -> dict[str, Any]:
        """JSON-ready mapping (with ``summary``), listing at most ``max_listed`` missing files."""
        return {
            "dataset": self.dataset,
            "source": self.source,
            "rows": self.rows,
            "records": self.records,
            "rows_skipped": self.rows_skipped,
            "skipped": {k: dict(v) for k, v in self.skipped.items()},
            "missing_image_count": len(self.missing_images),
            "missing_images": list(self.missing_images[:max_listed]),
            "dropped_values": {k: dict(v) for k, v in self.dropped_values.items()},
            "summary": self.summary(),
        }


@dataclass(frozen=True)
class DatasetRecords:
    """A dataset read by :func:`read_dataset`.

    Attributes:
        name: the spec's name (also each record's ``source``).
        records: the records, in table order.
        label_set: the classes: the spec's label set, or the automatic one built from the
            labels found; ``metadata['dataset_label']`` of each record is one of its labels.
        report: what was read and what was left out.
        templates: prompt templates shipped with the dataset (``{}`` marks the class name; a
            CLIP_benchmark webdataset's ``zeroshot_classification_templates.txt``), else empty.
    """

    name: str
    records: list[Record]
    label_set: LabelSet
    report: ReadReport
    templates: tuple[str, ...] = ()

    @cached_property
    def splits(self) -> dict[str, list[Record]]:
        """The records grouped by split (table order kept within each)."""
        grouped: dict[str, list[Record]] = {}
        for record in self.records:
            grouped.setdefault(record.split, []).append(record)
        return grouped


class _Tally:
    """Counters behind a :class:`ReadReport`."""

    def __init__(self) -> None:
        self.skipped: dict[str, Counter[str]] = {}
        self.missing: list[str] = []
        self.dropped: dict[str, Counter[str]] = {}

    def skip(self, reason: str, value: str = "") -> None:
        self.skipped.setdefault(reason, Counter())[value] += 1

    def drop(self, key: str, value: str) -> None:
        self.dropped.setdefault(key, Counter())[value] += 1

    def report(self, name: str, table: Table, records: int) -> ReadReport:
        return ReadReport(
            dataset=name,
            source=str(table.source),
            rows=len(table.rows),
            records=records,
            skipped={k: dict(v) for k, v in self.skipped.items()},
            missing_images=tuple(self.missing),
            dropped_values={k: dict(v) for k, v in self.dropped.items()},
        )


class _Normaliser:
    """Metadata values in their standard form (maps and lists from the YAML files)."""

    def __init__(self, spec: Mapping[str, Any], tally: _Tally) -> None:
        defaults = spec_defaults()
        missing = spec.get("missing_values", defaults.get("missing_values", []))
        self.missing = {str(v).casefold() for v in missing}
        self.numeric = set(defaults.get("numeric_metadata") or [])
        raw_maps = {**(defaults.get("value_maps") or {})}
        for key, value in (spec.get("value_maps") or {}).items():
            if isinstance(value, dict):
                raw_maps[key] = {**(raw_maps.get(key) or {}), **value}
            else:
                raw_maps[key] = raw_maps.get(str(value)) or {}
        self.maps = {
            key: {str(k).casefold(): v for k, v in values.items()}
            for key, values in raw_maps.items()
        }
        self.tally = tally

    def __call__(self, key: str, value: str) -> str | None:
        if value.casefold() in self.missing:
            return None
        if key in self.numeric:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                self.tally.drop(key, value)
                return None
            return f"{number:g}" if number != int(number) else str(int(number))
        if key in self.maps:
            mapped = self.maps[key].get(value.casefold(), _UNMAPPED)
            if mapped is _UNMAPPED:
                self.tally.drop(key, value)
                return None
            return None if mapped is None else str(mapped)
        return value


def _split_rule(spec: Mapping[str, Any], folder: Path) -> Callable[[Row, str], str | None]:
    """The row -> split function of the spec's split rule."""
    rule = spec_split(spec)
    method = rule["method"]
    if method == "hash":
        fractions, salt = rule["fractions"], str(rule.get("salt", ""))
        return lambda row, group: hash_split(group, fractions, salt)
    if method == "all":
        name = str(rule.get("name", "test"))
        return lambda row, group: name
    if method == "index_files":
        where: dict[int, str] = {}
        column = str(rule.get("column", "indexes"))
        for split, file in rule["files"].items():
            path = folder / file
            columns, rows = read_csv(path, ",")
            require_columns(path, columns, [(column, "split.column")])
            for number, row in enumerate(rows, 2):
                try:
                    position = int(row[column])
                except ValueError:
                    raise ManifestError(
                        f"{path}:{number}", f"{row[column]!r} is not a row number"
                    ) from None
                if where.setdefault(position, split) != split:
                    raise ManifestError(f"{path}:{number}", f"row {position} is in two splits")
        return lambda row, group: where.get(row.position)
    column = "folder" if method == "folder" else str(rule["column"])
    mapping, default = rule.get("map"), rule.get("default")

    def by_column(row: Row, group: str) -> str | None:
        value = row.values.get(column) or default
        if value is None or mapping is None:
            return value
        return mapping.get(value)

    return by_column


def _concepts(row: dict[str, str], vocabulary: str) -> dict[str, bool]:
    found: dict[str, bool] = {}
    if vocabulary != "derm7pt":
        return found
    for concept in load_concepts():
        rule = concept.derm7pt
        if rule and row.get(rule["column"]) not in (None, ""):
            found[concept.id] = row[rule["column"]] in rule["positive"]
    return found


def _locate(value: str, spec: Mapping[str, Any], folder: Path) -> tuple[Path, bool]:
    """The image file a table value names (searched in ``image_dirs``) and whether it exists."""
    name = str(spec.get("file_template", "{}")).replace("{}", value)
    if Path(name).is_absolute():
        return Path(name), Path(name).is_file()
    dirs = [str(d) for d in spec.get("image_dirs") or ["."]]
    for directory in dirs:
        path = folder / directory / name
        if path.is_file():
            return path.resolve(), True
    return (folder / dirs[0] / name).resolve(), False


def _labelled_rows(
    spec: Mapping[str, Any], table: Table, label_map: Mapping[str, Any], tally: _Tally
) -> list[tuple[Row, str, str]]:
    """(row, table label, mapped label) of the rows not excluded and carrying a label."""
    exclude = {str(k): {str(v) for v in vs} for k, vs in (spec.get("exclude") or {}).items()}
    labelled = []
    for row in table.rows:
        hit = next((c for c, vs in exclude.items() if row.values.get(c, "") in vs), None)
        if hit is not None:
            tally.skip("excluded", f"{hit}={row.values[hit]}")
            continue
        raw, reason = raw_label(spec, row.values, row.where)
        if raw is None:
            tally.skip(reason)
            continue
        mapped = label_map.get(raw, raw)
        if mapped is None:
            tally.skip("excluded label", raw)
            continue
        labelled.append((row, raw, str(mapped)))
    return labelled


def _row_images(
    spec: Mapping[str, Any], row: Row, folder: Path, tally: _Tally
) -> list[tuple[Path, str | None]]:
    """(image file, modality) of each image of a row that exists; missing ones are tallied."""
    columns = spec.get("image_columns") or [{"column": spec.get("file_column", "file")}]
    images = []
    for entry in columns:
        value = row.values.get(str(entry["column"]), "")
        if value:
            path, found = _locate(value, spec, folder)
            if found:
                images.append((path, entry.get("modality") or spec.get("modality")))
            else:
                tally.missing.append(str(path))
    return images


def _row_metadata(
    spec: Mapping[str, Any], row: Row, cls: LabelClass, raw: str, normalise: _Normaliser
) -> dict[str, str]:
    """Class name and label, the normalised subgroup columns and the malignancy flag."""
    metadata = {"class_name": cls.name, "dataset_label": cls.label}
    if raw != cls.label:
        metadata["raw_label"] = raw
    for key, column in (spec.get("metadata_columns") or {}).items():
        value = normalise(key, row.values.get(column, ""))
        if value is not None:
            metadata[key] = value
    if spec.get("malignant"):
        rule = spec["malignant"]
        flag = row.values.get(str(rule["column"]), "").casefold()
        if flag not in normalise.missing:
            positive = {str(v).casefold() for v in rule.get("positive", ["1", "true"])}
            metadata["malignant"] = "1" if flag in positive else "0"
    return metadata


class _Groups:
    """Union-find over group keys: rows sharing any key end in one group."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller key names the group, so a lone key keeps its own name
            self.parent[max(ra, rb)] = min(ra, rb)


def _near_duplicate_pairs(paths: Sequence[Path], max_distance: int) -> list[tuple[int, int]]:
    """Index pairs of images whose perceptual hashes differ in at most ``max_distance`` bits."""
    import numpy as np

    from dermfm.evaluate.leakage import perceptual_hash

    values = []
    with progress("perceptual hashes", len(paths)) as advance:
        for path in paths:
            values.append(perceptual_hash(path))
            advance()
    hashes = np.array(values, dtype=np.uint64)
    pairs = []
    for i in range(len(hashes) - 1):
        close = np.flatnonzero(np.bitwise_count(hashes[i + 1 :] ^ hashes[i]) <= max_distance)
        pairs.extend((i, i + 1 + int(j)) for j in close)
    return pairs


def _linked_spec(name: str, spec: Mapping[str, Any]) -> str | dict[str, Any]:
    """A ``group_link`` source: a source of the spec's own sources file, else any spec name."""
    file = spec.get("spec_file")
    if file and Path(str(file)).suffix in (".yaml", ".yml", ".json") and Path(str(file)).is_file():
        doc = read_document(Path(str(file)))
        if isinstance(doc.get("sources"), dict) and name in doc["sources"]:
            return source_specs(file)[name]
    return name


def _row_groups(
    spec: Mapping[str, Any], table: Table, folder: Path, root: str | Path
) -> dict[int, str]:
    """The group (kept in one split) of every row, by row position.

    A row's keys are the values of its ``group_column`` columns (default: its first image);
    rows sharing a key, images that are near duplicates (``near_duplicates``) and rows linked
    to another source's image (``group_link``) end in one group. A linked group takes the other
    source's group name, so with the same salt and fractions it lands in the same split there.
    """
    columns = spec.get("group_column") or []
    columns = [columns] if isinstance(columns, str) else list(columns)
    keys = {
        row.position: [row.values[c] for c in columns if row.values.get(c)] or [row.group]
        for row in table.rows
    }
    union = _Groups()
    for row_keys in keys.values():
        for key in row_keys:
            union.union(row_keys[0], key)
    near = spec.get("near_duplicates")
    if near:
        located = [(row, _locate(row.group, spec, folder)) for row in table.rows if row.group]
        found = [(row, path) for row, (path, exists) in located if exists]
        for i, j in _near_duplicate_pairs([p for _, p in found], int(near["max_distance"])):
            union.union(keys[found[i][0].position][0], keys[found[j][0].position][0])
    linked: dict[str, str] = {}
    link = spec.get("group_link")
    if link:
        other = read_dataset(_linked_spec(str(link["source"]), spec), root).records
        by_file = {Path(r.image).name: r.group.split(":", 1)[1] for r in other}
        for row in table.rows:
            target = by_file.get(Path(row.values.get(str(link["column"]), "")).name)
            if target:
                root_key = union.find(keys[row.position][0])
                linked[root_key] = min(target, linked.get(root_key, target))
    return {
        position: linked.get(union.find(k[0]), union.find(k[0])) for position, k in keys.items()
    }


def read_dataset(spec: str | Path | Mapping[str, Any], root: str | Path) -> DatasetRecords:
    """Records of a dataset: a packaged spec name, a spec file, or a spec mapping.

    ``root`` is the folder holding the dataset's folder (``root/<folder>``) or the dataset
    folder itself. Labels become ontology node ids (``Record.label``; the class name when the
    class has no node), ``metadata['dataset_label']`` is the label-set label, ``class_name`` its
    prompt name, ``raw_label`` the table's own label when it differs; subgroup values are
    normalised (``skin_type``, ``sex``, ``age``). Rows that cannot be used are counted in the
    report, never silently dropped.

    Raises:
        ManifestError: an invalid spec, a missing table or column, or a malformed row.
    """
    if isinstance(spec, Mapping):
        spec = checked_spec(dict(spec), str(spec.get("spec_file", "<spec>")))
    else:
        spec = load_dataset_spec(spec)
    name = str(spec.get("name") or "dataset")
    folder = dataset_folder(spec, root)
    table = TABLES[spec.get("layout", "csv")](spec, folder)
    tally = _Tally()
    label_map = {str(k): v for k, v in (spec.get("label_map") or {}).items()}
    labelled = _labelled_rows(spec, table, label_map, tally)
    if spec.get("label_set"):
        label_set = spec_label_set(spec)
    else:
        declared = [str(label_map.get(c, c)) for c in table.classes or [] if label_map.get(c, c)]
        label_set = automatic_label_set(name, [m for _, _, m in labelled], declared, spec)
    find_class = class_finder(label_set)
    split_of = _split_rule(spec, folder)
    rule = spec_split(spec)
    split_column = "folder" if rule["method"] == "folder" else str(rule.get("column", ""))
    normalise = _Normaliser(spec, tally)
    groups = _row_groups(spec, table, folder, root)
    box = _mask_box(spec.get("mask_box"), name)

    records: list[Record] = []
    for row, raw, mapped in labelled:
        cls = find_class(mapped)
        if cls is None:
            tally.skip("unknown label", raw)
            continue
        group = groups[row.position]
        split = split_of(row, group)
        if split is None:
            tally.skip("no split", row.values.get(split_column, ""))
            continue
        images = _row_images(spec, row, folder, tally)
        if not images:
            tally.skip("missing image")
            continue
        metadata = _row_metadata(spec, row, cls, raw, normalise)
        concepts = _concepts(row.values, spec.get("concept_columns", ""))
        for path, modality in images:
            records.append(
                Record(
                    image=str(path),
                    label=cls.node or cls.name,
                    split=split,
                    source=name,
                    group=f"{name}:{group}",
                    metadata={"modality": modality, **metadata} if modality else dict(metadata),
                    concepts=dict(concepts),
                    mask_box=box,
                )
            )
    return DatasetRecords(
        name, records, label_set, tally.report(name, table, len(records)), table.templates
    )


def read_source(
    name: str, root: str | Path, *, specs: dict[str, dict[str, Any]] | None = None
) -> list[Record]:
    """Records of one packaged dataset (or of ``specs[name]``) under ``root``.

    The records of :func:`read_dataset`; use that for the label set and the report of rows
    left out (labels outside the label set, rows without a split, missing images).
    """
    if specs is None:
        return read_dataset(name, root).records
    if name not in specs:
        raise ManifestError(name, f"unknown source; known: {', '.join(sorted(specs))}")
    return read_dataset({"name": name, **specs[name]}, root).records


def read_sources(root: str | Path, names: Sequence[str] | None = None) -> list[Record]:
    """Records of several datasets under ``root`` (all training sources by default)."""
    return [r for name in names or list(source_specs()) for r in read_source(name, root)]


def read_clip_benchmark_wds(
    folder: str | Path, split: str | None = None, *, extract_to: str | Path | None = None
) -> DatasetRecords:
    """Records of a CLIP_benchmark webdataset folder (one split, or all of them).

    Each record's ``split`` is its split folder's name, ``group`` the split and sample key,
    ``metadata['dataset_label']`` and ``class_name`` its class name; the label set holds the
    class names in ``classnames.txt`` order, linked to the ontology where a name is known.
    ``templates`` are the dataset's zero-shot templates with ``{}`` for the class name.
    """
    folder = Path(folder)
    spec: dict[str, object] = {"name": folder.name, "layout": "clip_benchmark_wds"}
    if split is not None:
        spec["splits"] = [split]
    if extract_to is not None:
        spec["extract_to"] = str(extract_to)
    return read_dataset(spec, folder)
