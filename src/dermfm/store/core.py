"""The embedding store: image embeddings of one model, as Parquet shards in a folder.

A store is the content-keyed embedding cache grown up; the cache (``DERMFM_CACHE/embeddings``)
is a store too, so everything that needs image embeddings (evaluation, SAE training, adapters,
indexes) reads one mechanism. A store folder holds:

* ``store.json``: the manifest: the model (name, weights key, dimension, precision), its
  preprocessing, the dermfm version, and (for ``dermfm embed``) the source it was filled from;
* ``shards/*.parquet``: rows of :data:`COLUMNS`: ``key`` (content key: model-independent hash of
  the image bytes, mask and test-time augmentation), image ``id``, ``path``, ``sha256`` of the
  bytes, ``label``, ``caption``, ``split``, source position ``row``, ``tta``, ``error`` (why an
  image could not be embedded, else null) and ``vector`` (float32, L2-normalised; null on error).

A shard is written to a temporary file, flushed to disk and renamed into place, so a shard
either exists whole or not at all: the shards present *are* the record of finished work, and a
run killed at any moment loses only the shard it was writing. Rows are never rewritten.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dermfm.cache import atomic_write_bytes, content_key
from dermfm.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa

    from dermfm.models.base import DermModel

FORMAT = "dermfm-embeddings"
#: Newest store format this dermfm reads and writes.
FORMAT_VERSION = 1
MANIFEST = "store.json"
SHARDS = "shards"
#: Columns of every shard, in order (``vector`` is a fixed-size list of float32).
COLUMNS = (
    "key",
    "id",
    "path",
    "sha256",
    "label",
    "caption",
    "split",
    "row",
    "tta",
    "error",
    "vector",
)
#: Test-time augmentation views as stored in content keys (quarter turns, mirrored).
_TTA_KEY = [[turns, mirrored] for mirrored in (False, True) for turns in range(4)]


class StoreError(SourceError):
    """An embedding store that cannot be used as asked (missing, of another model or format,
    filled from another source); the message names the folder and the problem."""


def image_key(digest: str, mask_box: Sequence[float] | None = None, tta: bool = False) -> str:
    """The content key of an image embedding: the image bytes' SHA-256, the region masked out
    before preprocessing, and whether test-time augmentation views were averaged. The model is
    not part of it: a store holds one model's vectors."""
    views = [("tta", _TTA_KEY)] if tta else []
    return content_key("image-v1", digest, list(mask_box) if mask_box else None, *views)


def model_identity(model: DermModel) -> dict[str, Any]:
    """What a store records of the model that wrote it (and checks against a reader)."""
    return {
        "name": model.name,
        "source": model.card.source,
        "checkpoint": model.card.checkpoint or None,
        "key": model.cache_key,
        "embed_dim": int(model.embed_dim),
        "precision": model.precision,
    }


def preprocessing(model: DermModel) -> dict[str, Any]:
    """How images become model inputs in every engine (recorded in the manifest)."""
    from dermfm.io import DEFAULT_MAX_PIXELS

    transform = type(model.preprocess)
    return {
        "decode": "full resolution, EXIF-upright, RGB (dermfm.io)",
        "max_pixels": DEFAULT_MAX_PIXELS,
        "mask_box": "filled before preprocessing (data.transforms.mask_region)",
        "transform": re.sub(r" at 0x[0-9a-f]+", "", f"{transform.__module__}.{transform.__name__}"),
        "image_size": int(model.image_size),
    }


def schema(dim: int) -> pa.Schema:
    """The Arrow schema of a store's shards for ``dim``-d vectors."""
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("id", pa.string()),
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("label", pa.string()),
            ("caption", pa.string()),
            ("split", pa.string()),
            ("row", pa.int64()),
            ("tta", pa.bool_()),
            ("error", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def rows_table(columns: dict[str, list[Any]], vectors: np.ndarray | None, dim: int) -> pa.Table:
    """A shard table from per-row ``columns`` (any of :data:`COLUMNS` but ``vector``; missing
    ones are null) and ``vectors`` ``(n, dim)`` (rows with an ``error`` get a null vector)."""
    import pyarrow as pa

    n = len(next(iter(columns.values()))) if columns else 0
    errors = columns.get("error") or [None] * n
    flat = np.zeros((n, dim), np.float32) if vectors is None else np.asarray(vectors, np.float32)
    values = pa.array(flat.reshape(-1), pa.float32())
    mask = pa.array([e is not None for e in errors], pa.bool_())
    vector = pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)
    arrays = [
        pa.array(columns.get(name, [None] * n), type=field.type)
        for name, field in zip(COLUMNS[:-1], schema(dim), strict=False)
    ]
    return pa.Table.from_arrays([*arrays, vector], schema=schema(dim))


class EmbeddingStore:
    """A folder of one model's image embeddings (see the module doc). Open with :meth:`open`,
    :meth:`create` or :meth:`open_or_create`."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self._keys: dict[str, tuple[Path, int]] = {}
        self._indexed: set[Path] = set()

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls, folder: str | Path, model: DermModel, *, source: dict[str, Any] | None = None
    ) -> EmbeddingStore:
        """A new, empty store for ``model``'s embeddings (refuses a folder holding a store)."""
        from dermfm import __version__

        folder = Path(folder)
        if (folder / MANIFEST).exists():
            raise StoreError(folder, "already holds an embedding store")
        if folder.is_file():
            raise StoreError(folder, "is a file, not a folder")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model_identity(model),
            "preprocessing": preprocessing(model),
            "dermfm_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source,
        }
        (folder / SHARDS).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=2).encode(), durable=True)
        return cls(folder, manifest)

    @classmethod
    def open(cls, folder: str | Path, model: DermModel | None = None) -> EmbeddingStore:
        """An existing store; with ``model``, checked to hold that model's embeddings."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise StoreError(folder, f"no embedding store here ({MANIFEST} missing)")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(path, f"unreadable store manifest ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(path, f"not a dermfm embedding store manifest (format {FORMAT!r})")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(
                folder,
                f"written in store format {version} by dermfm "
                f"{manifest.get('dermfm_version')}; this dermfm reads format {FORMAT_VERSION} "
                "at most: upgrade dermfm",
            )
        store = cls(folder, manifest)
        if model is not None:
            store.check_model(model)
        return store

    @classmethod
    def open_or_create(
        cls, folder: str | Path, model: DermModel, *, source: dict[str, Any] | None = None
    ) -> EmbeddingStore:
        """The store in ``folder`` (checked against ``model`` and ``source``), created when the
        folder holds none."""
        if (Path(folder) / MANIFEST).exists():
            store = cls.open(folder, model)
            store.check_source(source)
            return store
        return cls.create(folder, model, source=source)

    def check_model(self, model: DermModel) -> None:
        """Raise :class:`StoreError` unless ``model`` embeds as the model that wrote the store
        (same weights, precision and preprocessing), so their vectors may be mixed."""
        wrote = self.manifest.get("model") or {}
        mine = model_identity(model)
        if wrote.get("key") != mine["key"] or wrote.get("embed_dim") != mine["embed_dim"]:
            raise StoreError(
                self.folder,
                f"written by model {wrote.get('name')!r} ({wrote.get('embed_dim')}-d, weights "
                f"key {wrote.get('key')}); model {mine['name']!r} ({mine['embed_dim']}-d, "
                f"weights key {mine['key']}) embeds differently, so its vectors cannot be "
                f"mixed with these: use model {wrote.get('name')!r} or embed into a new store",
            )
        wanted = self.manifest.get("preprocessing")
        if wanted is not None and wanted != preprocessing(model):
            raise StoreError(
                self.folder,
                f"written with preprocessing {wanted}; model {mine['name']!r} now preprocesses "
                f"as {preprocessing(model)}: embed into a new store",
            )

    def check_source(self, source: dict[str, Any] | None) -> None:
        """Raise :class:`StoreError` when shards exist from another source (or the source
        changed since), since shard ``k`` would then hold other images than it should."""
        before = self.manifest.get("source")
        if source is None or before is None or before.get("digest") == source.get("digest"):
            return
        if self.shard_paths():
            raise StoreError(
                self.folder,
                f"was filled from {before.get('path')} ({before.get('items')} images then); "
                f"{source.get('path')} ({source.get('items')} images) is another source or "
                "has changed since: embed into a new store, or restore the original source",
            )
        self.manifest["source"] = source
        atomic_write_bytes(
            self.folder / MANIFEST, json.dumps(self.manifest, indent=2).encode(), durable=True
        )

    # ------------------------------------------------------------------ facts
    @property
    def embed_dim(self) -> int:
        """Dimension of the stored vectors."""
        return int(self.manifest["model"]["embed_dim"])

    @property
    def model_name(self) -> str:
        """Name of the model that wrote the store."""
        return str(self.manifest["model"]["name"])

    def shard_paths(self) -> list[Path]:
        """The finished shards, in name order (temporary files of unfinished ones excluded)."""
        return sorted(
            p for p in (self.folder / SHARDS).glob("*.parquet") if not p.name.startswith(".")
        )

    def has_shard(self, name: str) -> bool:
        """Whether shard ``name`` is finished."""
        return (self.folder / SHARDS / f"{name}.parquet").is_file()

    def counts(self) -> dict[str, int]:
        """Rows, rows with an error, and shards (from the shards' footers, no vector read)."""
        import pyarrow.parquet as pq

        rows = embedded = 0
        paths = self.shard_paths()
        for path in paths:
            rows += pq.ParquetFile(path).metadata.num_rows
            embedded += int(pq.read_table(path, columns=["error"])["error"].null_count)
        return {"rows": rows, "errors": rows - embedded, "shards": len(paths)}

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's writer lock (one ``dermfm embed`` run per store at a time)."""
        import fcntl

        with (self.folder / ".lock").open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise StoreError(
                    self.folder, "another run is writing this store; wait for it to finish"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def write_shard(self, name: str, table: pa.Table) -> Path:
        """Write ``table`` as shard ``name``: to a temporary file, flushed to disk, then renamed
        into place (never half-written, never overwriting a finished shard)."""
        import pyarrow.parquet as pq

        path = self.folder / SHARDS / f"{name}.parquet"
        if path.exists():
            raise StoreError(path, "shard already exists; shards are never rewritten")
        buffer = io.BytesIO()
        pq.write_table(table.cast(schema(self.embed_dim)), buffer, compression="zstd")
        atomic_write_bytes(path, buffer.getvalue(), durable=True)
        return path

    def append(self, table: pa.Table) -> Path | None:
        """Add rows as a new uniquely named shard (safe alongside other writers); ``None`` when
        there is nothing to add."""
        if table.num_rows == 0:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        return self.write_shard(f"add-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}", table)

    # ------------------------------------------------------------------ reading
    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every shard's rows (``columns`` only), in shard order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = list(columns) if columns else None
        tables = [pq.read_table(p, columns=cols) for p in self.shard_paths()]
        if not tables:
            full = schema(self.embed_dim)
            return full.empty_table() if cols is None else full.empty_table().select(cols)
        return pa.concat_tables(tables)

    def iter_vectors(
        self, columns: Sequence[str] = (), batch_rows: int = 65536
    ) -> Iterator[tuple[np.ndarray, dict[str, list[Any]]]]:
        """``(vectors (n, dim) float32, {column: values})`` of the embedded rows (rows with an
        error skipped), shard by shard in batches of at most ``batch_rows``: what an index
        build streams without holding the store in memory."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        for path in self.shard_paths():
            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(batch_rows, columns=["vector", "error", *columns]):
                batch = batch.filter(pc.is_null(batch.column("error")))
                if batch.num_rows == 0:
                    continue
                yield (
                    vectors_of(batch.column("vector"), self.embed_dim),
                    {c: batch.column(c).to_pylist() for c in columns},
                )

    def _index_keys(self) -> None:
        import pyarrow.parquet as pq

        for path in self.shard_paths():
            if path in self._indexed:
                continue
            table = pq.read_table(path, columns=["key", "error"])
            for row, (key, error) in enumerate(
                zip(table["key"].to_pylist(), table["error"].to_pylist(), strict=True)
            ):
                if key is not None and error is None:
                    self._keys.setdefault(key, (path, row))
            self._indexed.add(path)

    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those ``keys`` the store holds (embedded rows only)."""
        import pyarrow.parquet as pq

        self._index_keys()
        by_shard: dict[Path, list[tuple[str, int]]] = {}
        for key in keys:
            if key in self._keys:
                path, row = self._keys[key]
                by_shard.setdefault(path, []).append((key, row))
        found: dict[str, np.ndarray] = {}
        for path, wanted in by_shard.items():
            vectors = vectors_of(pq.read_table(path, columns=["vector"])["vector"], self.embed_dim)
            for key, row in wanted:
                found[key] = vectors[row]
        return found


def vectors_of(column: Any, dim: int) -> np.ndarray:
    """A fixed-size-list Arrow column (without nulls) as a ``(n, dim)`` float32 array."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.values.to_numpy(zero_copy_only=False)
    start = column.offset * dim
    return np.asarray(values[start : start + len(column) * dim], np.float32).reshape(-1, dim)


def cache_store(model: DermModel) -> EmbeddingStore | None:
    """The user's embedding cache for ``model`` (a store under ``DERMFM_CACHE/embeddings``),
    or ``None`` when the cache folder cannot be written (then nothing is cached)."""
    from dermfm.cache import cache_dir

    try:
        folder = cache_dir("embeddings", "stores") / content_key(model.cache_key)[:32]
        return EmbeddingStore.open_or_create(folder, model)
    except (OSError, StoreError):
        return None
