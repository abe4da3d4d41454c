"""WebDataset tar shards: pack large corpora once, stream them with deterministic shuffling.

:func:`pack_shards` writes ``{prefix}-000000.tar``, ``{prefix}-000001.tar``... in the WebDataset
layout: every sample is two members, ``{key}.jpg`` (the image) and ``{key}.json`` (the record's
manifest row, see :meth:`~dermfm.data.manifest.Record.to_dict`), with keys ``000000000``,
``000000001``... numbering the packed samples. ``{prefix}-index.json`` lists the shards and their
sample counts. Any WebDataset reader can use the shards; :class:`ShardDataset` streams them for
training with an order that depends only on ``(seed, epoch, rank, worker)``, so runs and exact
mid-epoch resumes (:meth:`ShardDataset.set_skip`) are reproducible.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import posixpath
import random
import tarfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from dermfm.data.datasets import SampleBuilder
from dermfm.data.manifest import ManifestError, Record
from dermfm.errors import ImageError
from dermfm.io import decode_image_bytes, load_image
from dermfm.progress import progress

#: JPEG quality of re-encoded images.
JPEG_QUALITY = 92
#: Member extensions :class:`ShardDataset` accepts as the image of a sample, in preference order.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp")
_INDEX_FORMAT = "dermfm-shards"
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class PackReport:
    """What :func:`pack_shards` wrote.

    Attributes:
        shards: the shard files, in order.
        samples: number of samples packed (records minus ``errors``).
        errors: the records whose image could not be read; they are not in any shard.
    """

    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    errors: list[ImageError] = field(default_factory=list)


def record_from_json(row: Mapping[str, Any]) -> Record:
    """The :class:`Record` of a shard's ``.json`` member (the inverse of ``Record.to_dict``)."""
    box = row.get("mask_box")
    return Record(
        image=str(row["image"]),
        texts=tuple(str(t) for t in row.get("texts") or ()),
        label=row.get("label") or None,
        split=str(row.get("split") or "train"),
        source=str(row.get("source") or ""),
        group=str(row.get("group") or ""),
        metadata={str(k): str(v) for k, v in (row.get("metadata") or {}).items()},
        concepts={str(k): bool(v) for k, v in (row.get("concepts") or {}).items()},
        mask_box=tuple(float(x) for x in box) if box else None,  # type: ignore[arg-type]
    )


def _index_path(out_dir: Path, prefix: str) -> Path:
    return out_dir / f"{prefix}-index.json"


def _shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


def _image_bytes(record: Record, max_side: int | None) -> bytes:
    """The JPEG bytes to store for ``record``; raises :class:`ImageError` when unreadable."""
    image = load_image(record.image)  # validates: full decode, pixel limit, clear errors
    if max_side is None or max(image.size) <= max_side:
        try:
            data = Path(record.image).read_bytes()
        except OSError as exc:
            raise ImageError(record.image, f"cannot read file ({exc.strerror or exc})") from exc
        if data.startswith(_JPEG_MAGIC):
            return data  # already a small enough JPEG: keep the original bytes, no generation loss
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def _refuse_existing(out_dir: Path, prefix: str) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ManifestError(out_dir, "exists and is not a folder")
    pattern = str(out_dir / f"{glob.escape(prefix)}-*.tar")
    if glob.glob(pattern) or _index_path(out_dir, prefix).exists():
        raise ManifestError(
            out_dir,
            f"already holds shards with prefix {prefix!r}; choose another folder or prefix "
            "(existing shards are never overwritten)",
        )


def pack_shards(
    records: Sequence[Record],
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    max_side: int | None = None,
    prefix: str = "shard",
    show_progress: bool | None = None,
) -> PackReport:
    """Pack records and their images into WebDataset tar shards.

    Args:
        records: the records to pack, in order (sample keys number them as packed).
        out_dir: the folder to write into (created if needed).
        shard_size: samples per shard (the last shard may hold fewer).
        max_side: when set, images whose longer side exceeds it are shrunk to it and
            re-encoded as JPEG (quality 92). JPEG files that need no shrinking are always
            stored byte for byte; other formats are re-encoded as JPEG.
        prefix: shard file name prefix.
        show_progress: progress bar (``None``: only on a terminal).

    Returns:
        The shards written, the sample count, and the records skipped for unreadable images.

    Raises:
        ManifestError: ``out_dir`` already holds shards or an index with this prefix.
        ValueError: a bad ``shard_size``, ``max_side`` or ``prefix``.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    if not prefix or "/" in prefix or os.sep in prefix:
        raise ValueError(f"prefix must be a non-empty file name part, not {prefix!r}")
    out = Path(out_dir)
    _refuse_existing(out, prefix)
    out.mkdir(parents=True, exist_ok=True)

    report = PackReport()
    counts: list[int] = []
    tar: tarfile.TarFile | None = None
    tmp: Path | None = None
    mtime = time.time()

    def finish() -> None:
        nonlocal tar, tmp
        assert tar is not None and tmp is not None
        tar.close()
        final = out / _shard_name(prefix, len(report.shards))
        if final.exists():
            raise ManifestError(final, "appeared while packing; it is not overwritten")
        tmp.replace(final)
        report.shards.append(final)
        tar, tmp = None, None

    try:
        with progress("Packing shards", len(records), show_progress) as advance:
            for record in records:
                try:
                    data = _image_bytes(record, max_side)
                except ImageError as exc:
                    report.errors.append(exc)
                    advance()
                    continue
                if tar is None:
                    tmp = out / (_shard_name(prefix, len(report.shards)) + ".tmp")
                    tar = tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
                    counts.append(0)
                key = f"{report.samples:09d}"
                row = record.to_dict()
                row["image"] = record.image
                _add_member(tar, f"{key}.jpg", data, mtime)
                _add_member(tar, f"{key}.json", json.dumps(row, ensure_ascii=False).encode(), mtime)
                report.samples += 1
                counts[-1] += 1
                if counts[-1] == shard_size:
                    finish()
                advance()
        if tar is not None:
            finish()
    except BaseException:
        if tar is not None:
            tar.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise

    index = {
        "format": _INDEX_FORMAT,
        "version": 1,
        "prefix": prefix,
        "max_side": max_side,
        "samples": report.samples,
        "shards": [
            {"name": p.name, "samples": n} for p, n in zip(report.shards, counts, strict=True)
        ],
        "skipped": [{"image": e.path, "reason": e.reason} for e in report.errors],
    }
    index_file = _index_path(out, prefix)
    tmp_index = index_file.with_name(index_file.name + ".tmp")
    tmp_index.write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp_index.replace(index_file)
    return report


def read_shard_index(
    out_dir_or_index_file: str | Path, prefix: str = "shard"
) -> tuple[list[Path], int]:
    """The shard files and total sample count recorded by :func:`pack_shards`.

    Args:
        out_dir_or_index_file: the shard folder (its ``{prefix}-index.json`` is read) or the
            index file itself.
        prefix: shard prefix, used only when a folder is given.

    Raises:
        ManifestError: the index is missing or malformed, or a shard it lists is missing.
    """
    path = Path(out_dir_or_index_file)
    if path.is_dir():
        path = _index_path(path, prefix)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(path, f"cannot read shard index ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(path, f"shard index is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("shards"), list):
        raise ManifestError(path, "not a shard index (no 'shards' list)")
    shards: list[Path] = []
    total = 0
    for entry in doc["shards"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ManifestError(path, f"bad shard entry {entry!r}")
        shards.append(path.parent / entry["name"])
        total += int(entry.get("samples", 0))
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise ManifestError(path, f"listed shards are missing: {', '.join(missing[:5])}")
    return shards, total


def resolve_shards(shards: str | Path | Sequence[str | Path]) -> tuple[list[Path], int | None]:
    """Shard paths (and the indexed sample count, when known) from any accepted form."""
    if not isinstance(shards, (str, Path)):
        paths = [Path(p) for p in shards]
        total = None
    elif "{" in str(shards):
        from braceexpand import braceexpand

        paths, total = [Path(p) for p in braceexpand(str(shards))], None
    else:
        path = Path(shards)
        if path.is_dir():
            indexes = sorted(path.glob("*-index.json"))
            default = _index_path(path, "shard")
            if default.is_file():
                return read_shard_index(default)
            if len(indexes) != 1:
                raise ManifestError(
                    path, "holds no single '*-index.json'; pass the index file or shard paths"
                )
            return read_shard_index(indexes[0])
        if path.suffix == ".json":
            return read_shard_index(path)
        paths, total = [path], None
    if not paths:
        raise ManifestError(str(shards), "no shards given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ManifestError(missing[0], f"shard not found ({len(missing)} missing)")
    return paths, total


def _mix(*parts: object) -> int:
    """A 63-bit integer determined by ``parts`` (stable across processes and runs)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class _Item:
    shard: Path
    key: str
    record: Record
    data: bytes
    index: int


def read_tar(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` groups of consecutive members of one tar, in file order."""
    key: str | None = None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                base = posixpath.basename(member.name)
                if not member.isfile() or base.startswith(".") or "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                name = posixpath.join(posixpath.dirname(member.name), stem)
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if name != key:
                    if key is not None:
                        yield key, files
                    key, files = name, {}
                files[ext.lower()] = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        warnings.warn(
            f"{path}: shard is unreadable from here on ({exc}); its remaining samples are skipped",
            RuntimeWarning,
            stacklevel=2,
        )
    if key is not None:
        yield key, files


class ShardDataset(IterableDataset):
    """Stream samples from WebDataset shards written by :func:`pack_shards`.

    Args:
        shards: a shard folder or index file (see :func:`read_shard_index`), a brace pattern
            (``dir/shard-{000000..000009}.tar``), one tar, or a list of tar paths.
        builder: turns a record and its decoded image into a sample.
        seed: shuffling seed (shard order and the sample buffer).
        rank: this process's rank among ``world`` data-parallel processes.
        world: number of data-parallel processes; each takes every ``world``-th shard.
        shuffle_buffer: samples held for shuffling (``<= 1``: no sample shuffling).
        splits: keep only records of these splits (``None``: all).

    Each epoch, the shard list is shuffled from ``(seed, epoch)``; rank ``r`` takes shards
    ``r, r + world, ...`` of that order, and DataLoader worker ``w`` of ``W`` takes every ``W``-th
    of those. Samples then pass a shuffle buffer seeded by ``(seed, epoch, rank, w, W)``. The
    ``index`` handed to the builder is the sample's key as an integer (its position in the
    packed corpus), so augmentation does not depend on rank or worker. Images that fail to decode
    are skipped with a warning naming the shard and key.

    Use ``persistent_workers=False`` (the default) so workers see :meth:`set_epoch` and
    :meth:`set_skip`. Samples are spread over ranks by shard, so ranks may get slightly
    different sample counts; give each rank several shards.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        builder: SampleBuilder,
        *,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle_buffer: int = 256,
        splits: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        self.shards, self.total = resolve_shards(shards)
        if len(self.shards) < world:
            raise ValueError(
                f"{len(self.shards)} shard(s) cannot be split over {world} ranks; "
                "pack with a smaller shard_size"
            )
        self.builder = builder
        self.seed = seed
        self.rank = rank
        self.world = world
        self.shuffle_buffer = shuffle_buffer
        self.splits = None if splits is None else frozenset(splits)
        self.epoch = 0
        self.skip = 0
        self.skip_batch_size = 1

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (shard order, shuffling, augmentation); resets :meth:`set_skip`."""
        self.epoch = epoch
        self.builder.epoch = epoch
        self.skip, self.skip_batch_size = 0, 1

    def set_skip(self, n: int, *, batch_size: int = 1) -> None:
        """Skip the first ``n`` samples this rank would yield this epoch (exact resume).

        Skipped samples are read but not decoded. Call after :meth:`set_epoch`. With DataLoader
        workers, pass the loader's ``batch_size``: the loader takes batches from its workers in
        turn, which decides how many of the ``n`` samples each worker had produced (exact while
        no worker has run out of samples within the first ``n``, and ``n`` is a multiple of
        ``batch_size``). Resume with the same ``num_workers``, ``world`` and seed as the
        interrupted run. A sample whose image turns out unreadable is not yielded, but skipped
        samples are not decoded, so such a sample counts towards ``n`` only where it was seen.
        """
        if n < 0 or batch_size < 1:
            raise ValueError(f"need n >= 0 and batch_size >= 1, got {n}, {batch_size}")
        self.skip, self.skip_batch_size = n, batch_size

    def assigned_shards(self, worker: int = 0, workers: int = 1) -> list[Path]:
        """The shards this rank's worker ``worker`` of ``workers`` reads this epoch, in order."""
        order = list(self.shards)
        random.Random(_mix("shards", self.seed, self.epoch)).shuffle(order)
        return order[self.rank :: self.world][worker::workers]

    def _worker_skip(self, worker: int, workers: int) -> int:
        size = self.skip_batch_size
        batches, rest = divmod(self.skip, size)
        turns, extra = divmod(batches, workers)
        skip = size * (turns + (worker < extra))
        return skip + (rest if worker == extra else 0)

    def _items(self, shards: Iterable[Path]) -> Iterator[_Item]:
        for shard in shards:
            for key, files in read_tar(shard):
                ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
                if ext is None or "json" not in files:
                    warnings.warn(
                        f"{shard}:{key}: sample lacks an image or json member; skipped",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
                try:
                    record = record_from_json(json.loads(files["json"]))
                except (ValueError, TypeError, KeyError) as exc:
                    warnings.warn(
                        f"{shard}:{key}: bad json member ({exc}); skipped",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
                if self.splits is not None and record.split not in self.splits:
                    continue
                stem = posixpath.basename(key)
                index = int(stem) if stem.isdigit() else _mix("key", shard.name, key)
                yield _Item(shard, key, record, files[ext], index)

    def _shuffled(self, items: Iterator[_Item], rng: random.Random) -> Iterator[_Item]:
        if self.shuffle_buffer <= 1:
            yield from items
            return
        buffer: list[_Item] = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            slot = rng.randrange(len(buffer))
            yield buffer[slot]
            buffer[slot] = item
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # a fresh DataLoader asks worker 0 first: on resume, worker 0 plays the worker whose
        # turn was next in the interrupted run, worker 1 the one after it, and so on
        worker = (worker + self.skip // self.skip_batch_size) % workers
        self.builder.epoch = self.epoch
        rng = random.Random(_mix("buffer", self.seed, self.epoch, self.rank, worker, workers))
        skip = self._worker_skip(worker, workers)
        stream = self._shuffled(self._items(self.assigned_shards(worker, workers)), rng)
        for position, item in enumerate(stream):
            if position < skip:
                continue
            try:
                image = decode_image_bytes(item.data, f"{item.shard}:{item.key}")
            except ImageError as exc:
                warnings.warn(f"{exc}; sample skipped", RuntimeWarning, stacklevel=2)
                continue
            yield self.builder(item.record, image, item.index)
