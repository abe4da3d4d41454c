"""The rows of a dataset's table, by layout: a CSV (with joined tables), ``<class>/<image>``
folders, or a CLIP_benchmark webdataset folder (:mod:`~dermfm.data.clip_benchmark`). What the
rows become is :mod:`~dermfm.data.sources`'s work."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermfm.data.clip_benchmark import read_wds_split, wds_classnames, wds_splits, wds_templates
from dermfm.data.dataset_spec import spec_split
from dermfm.data.manifest import ManifestError
from dermfm.io import find_images


@dataclass(frozen=True)
class Row:
    """One row of a dataset's table: where it is (for errors), its cells, its default group and
    its position."""

    where: str
    values: dict[str, str]
    group: str  # the default group: the row's first image, or a webdataset sample key
    position: int  # 0-based row number in the table


@dataclass(frozen=True)
class Table:
    """The rows of a dataset's table, the class order it declares and its shipped templates."""

    source: Path
    rows: list[Row]
    classes: list[str] | None = None  # declared class order (folders, classnames.txt)
    templates: tuple[str, ...] = ()


def _marker(spec: Mapping[str, Any]) -> str:
    layout = spec.get("layout", "csv")
    if layout == "csv":
        return str(spec.get("labels_file", "labels.csv"))
    if layout == "image_folder":
        return str(spec.get("images_dir", "."))
    return "classnames.txt"


def dataset_folder(spec: Mapping[str, Any], root: str | Path) -> Path:
    """``root/<folder>`` when it holds the dataset, else ``root`` itself."""
    root = Path(root).expanduser()
    candidates = [root / spec["folder"], root] if spec.get("folder") else [root]
    marker = _marker(spec)
    for folder in candidates:
        if (folder / marker).exists():
            return folder
    tried = " or ".join(str(c / marker) for c in candidates)
    raise ManifestError(tried, f"not found: dataset {spec.get('name', '')!r} needs {marker}")


def read_csv(path: Path, delimiter: str) -> tuple[list[str], list[dict[str, str]]]:
    """The column names and the rows (cells stripped) of a CSV table."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
            return list(reader.fieldnames or []), rows
    except OSError as exc:
        raise ManifestError(path, f"cannot read table ({exc.strerror or exc})") from exc


def require_columns(path: Path, columns: Sequence[str], needed: Iterable[tuple[str, str]]) -> None:
    """Raise :class:`ManifestError` naming the first ``(column, spec field)`` of ``needed``
    whose column the table lacks."""
    for column, spec_field in needed:
        if column not in columns:
            raise ManifestError(
                path, f"no column {column!r} (spec field {spec_field}); columns: {columns}"
            )


def _csv_table(spec: Mapping[str, Any], folder: Path) -> Table:
    path = folder / spec.get("labels_file", "labels.csv")
    delimiter = str(spec.get("delimiter", ","))
    columns, rows = read_csv(path, delimiter)
    for entry in spec.get("join") or []:
        other = folder / entry["file"]
        other_columns, other_rows = read_csv(other, delimiter)
        key = str(entry["key"])
        require_columns(path, columns, [(key, "join.key")])
        require_columns(other, other_columns, [(key, "join.key")])
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
    require_columns(path, columns, needed)
    images = image_columns or [str(spec.get("file_column", "file"))]
    out = []
    for position, row in enumerate(rows):
        first = next((row[c] for c in images if row.get(c)), "")
        out.append(Row(f"{path}:{position + 2}", row, first, position))
    return Table(path, out)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_table(spec: Mapping[str, Any], folder: Path) -> Table:
    base = folder / spec.get("images_dir", ".")
    by_split = spec_split(spec)["method"] == "folder"
    tops = _subfolders(base) if by_split else [base]
    rows: list[Row] = []
    classes: dict[str, None] = {}
    for top in tops:
        for class_dir in _subfolders(top):
            classes.setdefault(class_dir.name, None)
            for image in find_images(class_dir):
                file = image.relative_to(folder).as_posix()
                values = {"file": file, "label": class_dir.name, "folder": top.name}
                rows.append(Row(str(image), values, file, len(rows)))
    return Table(base, rows, list(classes))


def _wds_table(spec: Mapping[str, Any], folder: Path) -> Table:
    classnames = wds_classnames(folder)
    rows: list[Row] = []
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
            rows.append(Row(where, values, key, len(rows)))
    templates = tuple(t.replace("{c}", "{}") for t in wds_templates(folder))
    return Table(folder, rows, classnames, templates)


#: The table reader of each layout.
TABLES: dict[str, Callable[[Mapping[str, Any], Path], Table]] = {
    "csv": _csv_table,
    "image_folder": _folder_table,
    "clip_benchmark_wds": _wds_table,
}
