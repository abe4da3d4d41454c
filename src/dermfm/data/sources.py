"""Dataset specs and readers: labelled image collections into :class:`Record` lists.

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

import ast
import csv
import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from dermfm.data.manifest import ManifestError, Record, _mask_box
from dermfm.io import find_images
from dermfm.knowledge import LabelClass, LabelSet, load_concepts, load_label_set, load_ontology
from dermfm.knowledge._files import read_document
from dermfm.progress import progress

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
_LABEL_PARSERS: dict[str, Callable[[str], str]] = {"list_first": _list_first}
_UNMAPPED = object()


def _sources_file() -> Path:
    return Path(str(resources.files("dermfm.data") / "sources.yaml"))


def _datasets_dir() -> Path:
    return Path(str(resources.files("dermfm.data") / "specs"))


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
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
            return _checked(next(iter(entries.values())), path)
        body = {k: v for k, v in doc.items() if k not in ("schema_version", "version")}
        return _checked({"name": path.stem, **body, "spec_file": str(path)}, path)
    sources = source_specs()
    if text in sources:
        return _checked(sources[text], _sources_file())
    packaged = _datasets_dir() / f"{text}.yaml"
    if packaged.is_file():
        return load_dataset_spec(packaged)
    raise ManifestError(
        text, f"not a spec file nor a packaged dataset (known: {', '.join(dataset_names())})"
    )


def _field_error(file: str | Path, name: str, problem: str) -> ManifestError:
    return ManifestError(file, f"field '{name}': {problem}")


def _checked(spec: dict[str, Any], file: str | Path) -> dict[str, Any]:
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
        if spec.get("label_parse") not in (None, *_LABEL_PARSERS):
            raise _field_error(file, "label_parse", f"must be one of {list(_LABEL_PARSERS)}")
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
    known_maps = {**(_defaults().get("value_maps") or {}), **(spec.get("value_maps") or {})}
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
    _check_split(_split_of(spec), layout, file)
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


def _split_of(spec: Mapping[str, Any]) -> dict[str, Any]:
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


@dataclass(frozen=True)
class _Row:
    where: str
    values: dict[str, str]
    group: str  # the default group: the row's first image, or a webdataset sample key
    position: int  # 0-based row number in the table


@dataclass(frozen=True)
class _Table:
    source: Path
    rows: list[_Row]
    classes: list[str] | None = None  # declared class order (folders, classnames.txt)
    templates: tuple[str, ...] = ()


def _marker(spec: Mapping[str, Any]) -> str:
    layout = spec.get("layout", "csv")
    if layout == "csv":
        return str(spec.get("labels_file", "labels.csv"))
    if layout == "image_folder":
        return str(spec.get("images_dir", "."))
    return "classnames.txt"


def _dataset_folder(spec: Mapping[str, Any], root: str | Path) -> Path:
    """``root/<folder>`` when it holds the dataset, else ``root`` itself."""
    root = Path(root).expanduser()
    candidates = [root / spec["folder"], root] if spec.get("folder") else [root]
    marker = _marker(spec)
    for folder in candidates:
        if (folder / marker).exists():
            return folder
    tried = " or ".join(str(c / marker) for c in candidates)
    raise ManifestError(tried, f"not found: dataset {spec.get('name', '')!r} needs {marker}")


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
            return list(reader.fieldnames or []), rows
    except OSError as exc:
        raise ManifestError(path, f"cannot read table ({exc.strerror or exc})") from exc


def _require_columns(path: Path, columns: Sequence[str], needed: Iterable[tuple[str, str]]) -> None:
    for column, spec_field in needed:
        if column not in columns:
            raise ManifestError(
                path, f"no column {column!r} (spec field {spec_field}); columns: {columns}"
            )


def _csv_table(spec: Mapping[str, Any], folder: Path) -> _Table:
    path = folder / spec.get("labels_file", "labels.csv")
    delimiter = str(spec.get("delimiter", ","))
    columns, rows = _read_csv(path, delimiter)
    for entry in spec.get("join") or []:
        other = folder / entry["file"]
        other_columns, other_rows = _read_csv(other, delimiter)
        key = str(entry["key"])
        _require_columns(path, columns, [(key, "join.key")])
        _require_columns(other, other_columns, [(key, "join.key")])
        index: dict[str, dict[str, str]] = {}
        for number, row in enumerate(other_rows, 2):
            if row[key] in index:
                raise ManifestError(f"{other}:{number}", f"{key} {row[key]!r} appears twice")
            index[row[key]] = row
        rows = [{**index.get(row[key], {}), **row} for row in rows]
        columns = [*columns, *(c for c in other_columns if c not in columns)]
    image_columns = [str(e["column"]) for e in spec.get("image_columns") or []]
    needed = [(c, "image_columns") for c in image_columns] or [
        (str(spec.get("file_column", "file")), "file_column")
    ]
    needed += [(c, "label_onehot") for c in spec.get("label_onehot") or []]
    if "label_column" in spec:
        needed.append((str(spec["label_column"]), "label_column"))
    _require_columns(path, columns, needed)
    images = image_columns or [str(spec.get("file_column", "file"))]
    out = []
    for position, row in enumerate(rows):
        first = next((row[c] for c in images if row.get(c)), "")
        out.append(_Row(f"{path}:{position + 2}", row, first, position))
    return _Table(path, out)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_table(spec: Mapping[str, Any], folder: Path) -> _Table:
    base = folder / spec.get("images_dir", ".")
    by_split = _split_of(spec)["method"] == "folder"
    tops = _subfolders(base) if by_split else [base]
    rows: list[_Row] = []
    classes: dict[str, None] = {}
    for top in tops:
        for class_dir in _subfolders(top):
            classes.setdefault(class_dir.name, None)
            for image in find_images(class_dir):
                file = image.relative_to(folder).as_posix()
                values = {"file": file, "label": class_dir.name, "folder": top.name}
                rows.append(_Row(str(image), values, file, len(rows)))
    return _Table(base, rows, list(classes))


def _wds_table(spec: Mapping[str, Any], folder: Path) -> _Table:
    from dermfm.data.clip_benchmark import read_wds_split, wds_classnames, wds_splits, wds_templates

    classnames = wds_classnames(folder)
    rows: list[_Row] = []
    for split in spec.get("splits") or wds_splits(folder):
        for sample in read_wds_split(folder, split, spec.get("extract_to")):
            if not 0 <= sample.label < len(classnames):
                raise ManifestError(
                    f"{sample.shard}:{sample.key}",
                    f"class {sample.label} is outside classnames.txt ({len(classnames)} names)",
                )
            values = {"file": str(sample.image), "label": classnames[sample.label]}
            values["folder"] = split
            where, key = f"{sample.shard}:{sample.key}", f"{split}/{sample.key}"
            rows.append(_Row(where, values, key, len(rows)))
    templates = tuple(t.replace("{c}", "{}") for t in wds_templates(folder))
    return _Table(folder, rows, classnames, templates)


_TABLES: dict[str, Callable[[Mapping[str, Any], Path], _Table]] = {
    "csv": _csv_table,
    "image_folder": _folder_table,
    "clip_benchmark_wds": _wds_table,
}


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

    def report(self, name: str, table: _Table, records: int) -> ReadReport:
        return ReadReport(
            dataset=name,
            source=str(table.source),
            rows=len(table.rows),
            records=records,
            skipped={k: dict(v) for k, v in self.skipped.items()},
            missing_images=tuple(self.missing),
            dropped_values={k: dict(v) for k, v in self.dropped.items()},
        )


def _raw_label(spec: Mapping[str, Any], row: _Row) -> tuple[str | None, str]:
    """The row's label, or ``None`` and the reason it has none."""
    if spec.get("label_onehot"):
        scores: dict[str, float] = {}
        for column in spec["label_onehot"]:
            try:
                scores[column] = float(row.values.get(column) or 0)
            except ValueError:
                raise ManifestError(
                    row.where, f"one-hot column {column!r} holds {row.values[column]!r}"
                ) from None
        best = max(scores.values())
        winners = [c for c, v in scores.items() if v == best]
        if best <= 0:
            return None, "no label"
        return (winners[0], "") if len(winners) == 1 else (None, "ambiguous label")
    value = row.values.get(str(spec.get("label_column", "label")), "")
    if value and spec.get("label_parse"):
        value = _LABEL_PARSERS[spec["label_parse"]](value)
    return (value, "") if value else (None, "no label")


def _slug_words(text: str) -> str:
    """``Acute_Eczema`` -> ``Acute Eczema``; text with spaces keeps its hyphens."""
    if " " in text.strip():
        return " ".join(text.split())
    return " ".join(text.replace("_", " ").replace("-", " ").split())


def _automatic_label_set(
    name: str, labels: Sequence[str], declared: Sequence[str] | None, spec: Mapping[str, Any]
) -> LabelSet:
    """Classes of the labels found: declared order first, then sorted; linked to the ontology."""
    ontology = load_ontology()
    order = list(dict.fromkeys(declared or []))
    order += sorted(set(labels) - set(order))
    classes = []
    for label in order:
        text = _slug_words(label)
        node = ontology.lookup(label) or ontology.lookup(text)
        classes.append(LabelClass(label=label, name=text, node=node.id if node else None))
    return LabelSet(
        name=name,
        classes=tuple(classes),
        description=f"automatic: the labels found in dataset {name!r}",
        modality=str(spec.get("modality", "mixed")),
        source=str(spec.get("spec_file", "")),
    )


def _label_set(spec: Mapping[str, Any]) -> LabelSet:
    value = str(spec["label_set"])
    beside = Path(spec.get("spec_file", "")).parent / value
    return load_label_set(beside if beside.is_file() else value)


def _class_finder(label_set: LabelSet) -> Callable[[str], LabelClass | None]:
    """Label-set class of a label: by label, else by ontology node when only one class has it."""
    by_label = {c.label: c for c in label_set.classes}
    nodes = Counter(c.node for c in label_set.classes if c.node)
    by_node = {c.node: c for c in label_set.classes if c.node and nodes[c.node] == 1}
    return lambda label: by_label.get(label) or by_node.get(label)


class _Normaliser:
    """Metadata values in their standard form (maps and lists from the YAML files)."""

    def __init__(self, spec: Mapping[str, Any], tally: _Tally) -> None:
        defaults = _defaults()
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


def _split_rule(spec: Mapping[str, Any], folder: Path) -> Callable[[_Row, str], str | None]:
    """The row -> split function of the spec's split rule."""
    rule = _split_of(spec)
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
            columns, rows = _read_csv(path, ",")
            _require_columns(path, columns, [(column, "split.column")])
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

    def by_column(row: _Row, group: str) -> str | None:
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
    spec: Mapping[str, Any], table: _Table, label_map: Mapping[str, Any], tally: _Tally
) -> list[tuple[_Row, str, str]]:
    """(row, table label, mapped label) of the rows not excluded and carrying a label."""
    exclude = {str(k): {str(v) for v in vs} for k, vs in (spec.get("exclude") or {}).items()}
    labelled = []
    for row in table.rows:
        hit = next((c for c, vs in exclude.items() if row.values.get(c, "") in vs), None)
        if hit is not None:
            tally.skip("excluded", f"{hit}={row.values[hit]}")
            continue
        raw, reason = _raw_label(spec, row)
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
    spec: Mapping[str, Any], row: _Row, folder: Path, tally: _Tally
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
    spec: Mapping[str, Any], row: _Row, cls: LabelClass, raw: str, normalise: _Normaliser
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
    spec: Mapping[str, Any], table: _Table, folder: Path, root: str | Path
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
        spec = _checked(dict(spec), str(spec.get("spec_file", "<spec>")))
    else:
        spec = load_dataset_spec(spec)
    name = str(spec.get("name") or "dataset")
    folder = _dataset_folder(spec, root)
    table = _TABLES[spec.get("layout", "csv")](spec, folder)
    tally = _Tally()
    label_map = {str(k): v for k, v in (spec.get("label_map") or {}).items()}
    labelled = _labelled_rows(spec, table, label_map, tally)
    if spec.get("label_set"):
        label_set = _label_set(spec)
    else:
        declared = [str(label_map.get(c, c)) for c in table.classes or [] if label_map.get(c, c)]
        label_set = _automatic_label_set(name, [m for _, _, m in labelled], declared, spec)
    find_class = _class_finder(label_set)
    split_of = _split_rule(spec, folder)
    rule = _split_of(spec)
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
