"""What ``dermfm embed`` reads: a folder of images, a CSV or JSONL manifest, a dataset spec, or
WebDataset tar shards, cut into numbered *units* (one store shard each).

A list source (folder, manifest, spec) is cut into units of ``shard_size`` images in a fixed
order, a WebDataset source into one unit per tar, so unit ``k`` always covers the same images and
a re-run can skip the units whose shard exists. The source's ``digest`` (image ids, or tar names
and sizes) tells a store when it is asked to continue from another source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermfm.data.manifest import ManifestError, Record
from dermfm.errors import ImageError

_MANIFEST_SUFFIXES = (".jsonl", ".json")
_SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SourceItem:
    """One image to embed.

    Attributes:
        id: identity within the source (path relative to a folder, manifest path, tar#key).
        path: where the image is (a file, or ``tar#key`` for a WebDataset sample).
        label, caption, split: what the source says of it, when it says.
        mask_box: region (fractions x0, y0, x1, y1) filled before preprocessing.
        data: the encoded bytes when the source holds them (WebDataset); else read from ``path``.
    """

    id: str
    path: str
    label: str | None = None
    caption: str | None = None
    split: str | None = None
    mask_box: tuple[float, float, float, float] | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)

    def read(self) -> bytes:
        """The image's encoded bytes (raises :class:`ImageError` naming the file)."""
        if self.data is not None:
            return self.data
        try:
            return Path(self.path).read_bytes()
        except FileNotFoundError as exc:
            raise ImageError(self.path, "file not found") from exc
        except IsADirectoryError as exc:
            raise ImageError(self.path, "is a directory, not an image file") from exc
        except OSError as exc:
            raise ImageError(self.path, f"cannot read file ({exc.strerror or exc})") from exc

    def to_row(self) -> dict[str, Any]:
        """A plain mapping (what travels between Ray tasks); the inverse of :meth:`from_row`."""
        return {
            "id": self.id,
            "path": self.path,
            "label": self.label,
            "caption": self.caption,
            "split": self.split,
            "mask_box": json.dumps(self.mask_box) if self.mask_box else None,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any], data: bytes | None = None) -> SourceItem:
        """The item of a :meth:`to_row` mapping, with its bytes when already read."""
        box = row.get("mask_box")
        return cls(
            id=str(row["id"]),
            path=str(row["path"]),
            label=row.get("label"),
            caption=row.get("caption"),
            split=row.get("split"),
            mask_box=tuple(json.loads(box)) if box else None,  # type: ignore[arg-type]
            data=data,
        )


def item_of(record: Record) -> SourceItem:
    """The :class:`SourceItem` of a dataset or manifest record."""
    return SourceItem(
        id=record.image,
        path=record.image,
        label=record.label,
        caption=record.texts[0] if record.texts else None,
        split=record.split,
        mask_box=record.mask_box,
    )


@dataclass(frozen=True)
class Unit:
    """A numbered part of a source, embedded into one store shard of the same ``name``."""

    name: str
    #: First source position of the unit (store ``row`` = ``start`` + position in the unit).
    start: int
    size: int | None
    _load: Callable[[], list[SourceItem]] = field(repr=False, compare=False)

    def load(self) -> list[SourceItem]:
        """The unit's items (a WebDataset unit reads its tar)."""
        return self._load()


@dataclass
class Source:
    """A source cut into units, and what a store records of it."""

    kind: str
    path: str
    units: list[Unit]
    items: int | None
    digest: str

    def describe(self) -> dict[str, Any]:
        """The store manifest's ``source`` entry."""
        return {
            "kind": self.kind,
            "path": self.path,
            "items": self.items,
            "units": len(self.units),
            "digest": self.digest,
        }


def _list_source(kind: str, path: str, items: Sequence[SourceItem], shard_size: int) -> Source:
    digest = hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest()
    units = []
    for number, start in enumerate(range(0, len(items), shard_size)):
        part = list(items[start : start + shard_size])
        units.append(
            Unit(f"part-{number:06d}", start, len(part), lambda part=part: list(part))  # type: ignore[misc]
        )
    return Source(kind, path, units, len(items), f"{shard_size}:{digest}")


def _is_webdataset(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".tar" or path.name.endswith("-index.json")
    if "{" in str(path):
        return True
    return path.is_dir() and (
        any(path.glob("*-index.json")) or (any(path.glob("*.tar")) and not _has_images(path))
    )


def _has_images(folder: Path) -> bool:
    from dermfm.io.images import IMAGE_SUFFIXES

    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())


def _tar_items(tar: Path) -> list[SourceItem]:
    """The samples of one WebDataset tar, with their bytes (a sample without an image member
    becomes an item whose read fails with a clear error)."""
    from dermfm.data.shards import IMAGE_EXTENSIONS, read_tar, record_from_json

    items = []
    for key, files in read_tar(tar):
        where = f"{tar}#{key}"
        ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
        label = caption = split = None
        box = None
        if "json" in files:
            try:
                record = record_from_json(json.loads(files["json"]))
            except (ValueError, KeyError, TypeError):
                record = None
            if record is not None:
                label, split, box = record.label, record.split, record.mask_box
                caption = record.texts[0] if record.texts else None
        if "cls" in files:
            label = label or files["cls"].decode("utf-8", "replace").strip()
        if "txt" in files:
            caption = caption or files["txt"].decode("utf-8", "replace").strip()
        items.append(
            SourceItem(
                id=f"{tar.name}#{key}",
                path=where,
                label=label,
                caption=caption,
                split=split,
                mask_box=box,
                data=files[ext] if ext else b"",
            )
        )
    return items


def _webdataset_source(path: Path) -> Source:
    from dermfm.data.shards import resolve_shards

    tars, total = resolve_shards(path)
    digest = hashlib.sha256(
        "\n".join(f"{t.name}:{t.stat().st_size}" for t in tars).encode()
    ).hexdigest()
    units = [
        Unit(f"part-{n:06d}", -1, None, lambda t=t: _tar_items(t))  # type: ignore[misc]
        for n, t in enumerate(tars)
    ]
    return Source("webdataset", str(path), units, total, f"wds:{digest}")


def open_source(
    source: str | Path, *, root: str | Path | None = None, shard_size: int = 1000
) -> Source:
    """The units of ``source``: a folder of images (label = sub-folder name when nested), a CSV
    (a dermfm manifest with an ``image`` column, or a case-library CSV with a path column and
    optional label and caption), a JSONL manifest, a dataset spec (packaged name or YAML, read
    under ``root``), or WebDataset shards (a ``.tar``, a ``{000..009}`` pattern, a shard index
    ``*-index.json`` or a folder of tars).

    Raises:
        ManifestError: the source cannot be read (the message names the file and the problem).
    """
    from dermfm.data import read_dataset, read_manifest
    from dermfm.retrieval import read_items

    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    path = Path(source)
    text = str(source)
    if _is_webdataset(path):
        return _webdataset_source(path)
    if path.is_dir():
        found = [
            SourceItem(
                id=str(i.path.relative_to(path)),
                path=str(i.path.resolve()),
                label=i.label,
                caption=i.caption,
            )
            for i in read_items(path)
        ]
        if not found:
            raise ManifestError(path, "no images found in this folder")
        return _list_source("folder", str(path.resolve()), found, shard_size)
    suffix = path.suffix.lower()
    if suffix == ".csv" and path.is_file():
        header = path.open(encoding="utf-8-sig").readline().strip().lower().split(",")
        if "image" in header:
            items = [item_of(r) for r in read_manifest(path)]
        else:
            items = [
                SourceItem(str(i.path), str(i.path.resolve()), i.label, i.caption)
                for i in read_items(path)
            ]
        return _list_source("manifest", str(path.resolve()), items, shard_size)
    if suffix in _MANIFEST_SUFFIXES and path.is_file():
        items = [item_of(r) for r in read_manifest(path)]
        return _list_source("manifest", str(path.resolve()), items, shard_size)
    if suffix in _SPEC_SUFFIXES or not path.exists():
        if root is None:
            raise ManifestError(text, "a dataset spec needs --root (the folder holding the data)")
        data = read_dataset(text, root)
        items = [item_of(r) for r in data.records]
        return _list_source("dataset", f"{text} under {Path(root).resolve()}", items, shard_size)
    raise ManifestError(
        text,
        "not a folder of images, a CSV/JSONL manifest, a dataset spec or WebDataset shards",
    )
