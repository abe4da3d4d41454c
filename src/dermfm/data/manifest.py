"""Training manifests: one record per image, with texts, label, split and metadata.

Two file formats hold the same records:

* **JSONL**: one JSON object per line with the :class:`Record` field names (``texts`` a list,
  ``metadata`` / ``concepts`` objects, ``mask_box`` a list of four fractions).
* **CSV**: columns ``image`` (required), ``text`` (several captions separated by ``||``),
  ``label``, ``split``, ``source``, ``group``, ``mask_box`` (``x0,y0,x1,y1``), ``concept:<id>``
  columns (``1``/``0``/``true``/``false``/``present``/``absent``), and any other column as
  metadata (``modality``, ``body_site``, ``age``, ``sex``, ``skin_type``...).

Relative image paths are resolved against the manifest's folder. Bad rows raise a
:class:`ManifestError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermfm.errors import SourceError

#: Manifest columns that are record fields rather than metadata.
FIELDS = ("image", "texts", "label", "split", "source", "group", "mask_box")
_TRUE = {"1", "true", "yes", "present", "y"}
_FALSE = {"0", "false", "no", "absent", "n"}


class ManifestError(SourceError):
    """A manifest file or row that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Record:
    """One training or evaluation image.

    Attributes:
        image: absolute path of the image file.
        texts: real captions (may be empty: captions are then synthesised from the label).
        label: ontology node id of the diagnosis (``None`` when unknown).
        split: ``train``, ``val``, ``test`` or any name a config refers to.
        source: dataset name (``ham10000``...).
        group: unit that must not cross splits (e.g. a HAM10000 lesion id); the image path when
            empty.
        metadata: free-form facts: ``modality``, ``body_site``, ``age``, ``sex``, ``skin_type``,
            ``class_name`` (the label set's prompt name), ``dataset_label``...
        concepts: concept id -> present (from the packaged or a user concept vocabulary).
        mask_box: region ``(x0, y0, x1, y1)`` in fractions of width/height to blank out (e.g. a
            watermark) before any other transform.
    """

    image: str
    texts: tuple[str, ...] = ()
    label: str | None = None
    split: str = "train"
    source: str = ""
    group: str = ""
    metadata: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    concepts: dict[str, bool] = field(default_factory=dict, hash=False, compare=False)
    mask_box: tuple[float, float, float, float] | None = None

    @property
    def key(self) -> str:
        """Identity used to keep duplicates and groups together."""
        return self.group or self.image

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (the JSONL row)."""
        row: dict[str, Any] = {"image": self.image, "texts": list(self.texts)}
        for name in ("label", "split", "source", "group"):
            if getattr(self, name):
                row[name] = getattr(self, name)
        if self.metadata:
            row["metadata"] = dict(self.metadata)
        if self.concepts:
            row["concepts"] = dict(self.concepts)
        if self.mask_box:
            row["mask_box"] = list(self.mask_box)
        return row


def _mask_box(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value in (None, "", []):
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        box = tuple(float(p) for p in parts)
    except (TypeError, ValueError) as exc:
        raise ManifestError(where, f"mask_box {value!r} is not four numbers") from exc
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise ManifestError(
            where, f"mask_box {value!r} must be x0,y0,x1,y1 fractions, x0<x1, y0<y1"
        )
    return box  # type: ignore[return-value]


def _flag(value: Any, where: str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ManifestError(where, f"concept {name!r} value {value!r} is not true/false/present/absent")


def _record(row: dict[str, Any], base: Path, where: str) -> Record:
    image = row.get("image")
    if not image:
        raise ManifestError(where, "missing 'image'")
    texts = row.get("texts", row.get("text", ()))
    if isinstance(texts, str):
        texts = [t.strip() for t in texts.split("||")]
    if not isinstance(texts, (list, tuple)):
        raise ManifestError(where, "'texts' must be a list of strings")
    concepts = {
        k[8:]: v for k, v in row.items() if k.startswith("concept:") and v not in ("", None)
    }
    concepts.update(row.get("concepts") or {})
    metadata = {
        k: str(v)
        for k, v in row.items()
        if k not in (*FIELDS, "text", "metadata", "concepts")
        and not k.startswith("concept:")
        and v not in ("", None)
    }
    metadata.update({k: str(v) for k, v in (row.get("metadata") or {}).items()})
    path = Path(str(image)).expanduser()
    return Record(
        image=str(path if path.is_absolute() else (base / path).resolve()),
        texts=tuple(str(t) for t in texts if str(t).strip()),
        label=row.get("label") or None,
        split=str(row.get("split") or "train"),
        source=str(row.get("source") or ""),
        group=str(row.get("group") or ""),
        metadata=metadata,
        concepts={str(k): _flag(v, where, str(k)) for k, v in concepts.items()},
        mask_box=_mask_box(row.get("mask_box"), where),
    )


def read_manifest(path: str | Path, splits: Sequence[str] | None = None) -> list[Record]:
    """Read a CSV or JSONL manifest, optionally keeping only some splits.

    Raises:
        ManifestError: the file is missing or a row is malformed (file and line named).
    """
    path = Path(path)
    base = path.parent.resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(path, f"cannot read manifest ({exc})") from exc
    records: list[Record] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{number}", f"not valid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{number}", "each line must be a JSON object")
            records.append(_record(row, base, f"{path}:{number}"))
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "image" not in reader.fieldnames:
            raise ManifestError(path, "CSV manifest needs an 'image' column")
        for number, row in enumerate(reader, 2):
            records.append(_record(row, base, f"{path}:{number}"))
    if not records:
        raise ManifestError(path, "manifest has no records")
    return [r for r in records if splits is None or r.split in splits]


def write_manifest(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as JSONL (the lossless format); refuses to overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise ManifestError(path, "already exists; choose another path or delete it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
