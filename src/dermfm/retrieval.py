"""Persistent image retrieval over a case library, searchable by text or by image.

An index is a folder:

* ``items.sqlite`` — the source of truth: one row per image (path, content hash, label, caption,
  embedding). Rows are only ever added.
* ``vectors.faiss`` — a FAISS index derived from those rows (exact inner product by default;
  ``ivf`` or ``hnsw`` for large collections). It is rebuilt from SQLite whenever it is missing or
  out of step, so a crash can never lose stored items.
* ``index.json`` — which model built it and how, checked whenever the index is opened.

An index built from an embedding store (:meth:`Index.from_store`, ``dermfm index build
--from-store``) holds no vectors in SQLite: its rows are the store's embedded rows (metadata
only), ``vectors.faiss`` is any FAISS index (exact, IVF-Flat, IVF-PQ with OPQ, HNSW; chosen for
the size and a memory budget by :mod:`dermfm.ann`), or ``vectors-NNN.faiss`` parts searched
together (``shards``), opened memory-mapped and read-only, so server workers share one copy and
start without reading vectors. It grows by rebuilding from the store.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from dermfm import ann
from dermfm.cache import atomic_write_bytes
from dermfm.errors import ImageError, IndexStoreError
from dermfm.io import ImageInput, expand_frames, find_images, image_digest
from dermfm.models import DermModel, load_model
from dermfm.results import SearchHit

KINDS = ("flat", "ivf", "hnsw")
_PATH_COLUMNS = ("path", "image", "file", "filename", "image_path")
_CAPTION_COLUMNS = ("caption", "text", "description")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    label TEXT,
    caption TEXT,
    added_at TEXT NOT NULL,
    vector BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Item:
    """One image to index, with optional label and caption."""

    path: Path
    label: str | None = None
    caption: str | None = None


@dataclass
class AddReport:
    """What an add did: how many were added, skipped as already indexed, or failed."""

    added: int = 0
    duplicates: list[str] = field(default_factory=list)
    errors: list[ImageError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {
            "added": self.added,
            "duplicates": self.duplicates,
            "errors": [{"source": e.path, "error": e.reason} for e in self.errors],
        }


def read_items(source: str | Path) -> list[Item]:
    """Items from a folder (images found recursively; label = sub-folder name when nested),
    a CSV (a path column: path/image/file/filename, optional label and caption/text columns,
    relative paths resolved against the CSV's folder) or a single image."""
    source = Path(source)
    if source.is_dir():  # a multi-frame DICOM file is one item per frame
        found = [(p, Path(getattr(p, "path", p))) for p in expand_frames(find_images(source))]
        return [
            Item(p, label=f.parent.name if f.parent != source else None)  # type: ignore[arg-type]
            for p, f in found
        ]
    if source.suffix.lower() == ".csv" and source.is_file():
        return _read_csv(source)
    if source.is_file():
        return [Item(p) for p in expand_frames([source])]  # type: ignore[arg-type]
    raise IndexStoreError(f"{source}: not a folder, a CSV file or an image")


def _read_csv(path: Path) -> list[Item]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.lower(): c for c in reader.fieldnames or []}
        path_col = next((columns[c] for c in _PATH_COLUMNS if c in columns), None)
        if path_col is None:
            raise IndexStoreError(
                f"{path}: no image path column (expected one of {', '.join(_PATH_COLUMNS)})"
            )
        label_col = columns.get("label")
        caption_col = next((columns[c] for c in _CAPTION_COLUMNS if c in columns), None)
        items = []
        for row in reader:
            image = Path(row[path_col])
            items.append(
                Item(
                    image if image.is_absolute() else path.parent / image,
                    label=(row.get(label_col) or None) if label_col else None,
                    caption=(row.get(caption_col) or None) if caption_col else None,
                )
            )
    return items


def _faiss_index(kind: str, vectors: np.ndarray, dim: int) -> Any:
    """A FAISS inner-product index of ``kind`` holding ``vectors`` (row i has id i)."""
    import faiss

    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    elif kind == "ivf" and len(vectors) >= 2:
        nlist = max(1, min(int(4 * math.sqrt(len(vectors))), len(vectors) // 39 or 1))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, nlist // 4)
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(vectors)
    return index


class Index:
    """A persistent, incrementally growing image index. Open with :meth:`build` or :meth:`open`."""

    def __init__(self, folder: Path, model: DermModel, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.model = model
        self.meta = meta
        # one index may serve many threads (the server): one connection, used under a lock
        self._db = sqlite3.connect(folder / "items.sqlite", check_same_thread=False)
        self._lock = threading.RLock()
        self._db.executescript(_SCHEMA)
        #: FAISS row -> item id (``None``: the same numbers, as in a store-built index)
        self._ids: np.ndarray | None = np.empty(0, dtype=np.int64)
        self._faiss: Any = None
        #: Opened parts of a store-built index ``(index, parameter, value)``, kept referenced
        #: while a combined index searches them.
        self._parts: list[tuple[Any, str | None, int | None]] = []
        self._trained_size = 0
        self._sync_faiss()

    # ------------------------------------------------------------------ creation
    @classmethod
    def build(
        cls,
        folder: str | Path,
        source: str | Path | Sequence[str | Path],
        model: DermModel | str | None = None,
        kind: str = "flat",
        overwrite: bool = False,
        batch_size: int = 32,
        show_progress: bool | None = None,
    ) -> tuple[Index, AddReport]:
        """Create an index in ``folder`` from a folder, CSV or list of images.

        Refuses to touch an existing index unless ``overwrite`` is set.
        """
        if kind not in KINDS:
            raise IndexStoreError(f"unknown index kind '{kind}' (choose from {', '.join(KINDS)})")
        folder = Path(folder)
        cls._clear(folder, overwrite)
        folder.mkdir(parents=True, exist_ok=True)
        loaded = model if isinstance(model, DermModel) else load_model(model)
        meta = {
            "format": 1,
            "model": loaded.name,
            "model_source": loaded.card.source,
            "checkpoint": loaded.card.checkpoint or None,
            "model_key": loaded.cache_key,
            "embed_dim": loaded.embed_dim,
            "precision": loaded.precision,
            "kind": kind,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_bytes(folder / "index.json", json.dumps(meta, indent=2).encode())
        index = cls(folder, loaded, meta)
        report = index.add(source, batch_size=batch_size, show_progress=show_progress)
        return index, report

    @classmethod
    def open(cls, folder: str | Path, model: DermModel | str | None = None) -> Index:
        """Open an existing index; the model defaults to the one that built it."""
        folder = Path(folder)
        meta_path = folder / "index.json"
        if not meta_path.is_file():
            raise IndexStoreError(f"{folder}: no dermfm index here (index.json missing)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise IndexStoreError(f"{meta_path}: unreadable index metadata ({exc})") from exc
        if isinstance(model, DermModel):
            loaded = model
        else:
            loaded = load_model(
                model or meta["model"],
                checkpoint=None if model else meta.get("checkpoint"),
                precision=meta.get("precision", "fp32"),
            )
        if loaded.cache_key != meta.get("model_key"):
            raise IndexStoreError(
                f"{folder}: built with model '{meta['model']}' ({meta.get('model_key')}); "
                f"'{loaded.name}' has other weights, so its embeddings would not match"
            )
        return cls(folder, loaded, meta)

    @classmethod
    def from_store(
        cls,
        folder: str | Path,
        store: str | Path,
        model: DermModel | str | None = None,
        *,
        kind: str = "auto",
        memory: int | None = None,
        factory: str | None = None,
        queries: int = 1000,
        shards: int = 1,
        overwrite: bool = False,
    ) -> tuple[Index, Any]:
        """Build an index in ``folder`` over the embedded rows of an embedding store.

        The FAISS index is ``factory`` when given, else chosen by
        :func:`~dermfm.ann.plan_index` from ``kind`` and the ``memory`` budget (bytes); it is
        trained on a sample, its search parameter tuned on held-aside queries, and the
        returned :class:`~dermfm.ann.BuildReport` gives recall@10 against exact search.
        Vectors stream from the store shard by shard; the index folder keeps metadata only.
        ``model`` (default: the store's) must be the model that wrote the store.

        ``shards`` > 1 splits the index into that many parts over consecutive store rows, each
        planned for its own size (``memory`` is the budget of all of them), built, tuned and
        written in turn, so a build holds one part in memory; opened, the parts are searched
        in parallel and merged as one index (:func:`~dermfm.ann.open_shards`), and the report
        combines theirs (:func:`~dermfm.ann.combine_reports`).
        """
        import faiss

        from dermfm.store import EmbeddingStore

        folder = Path(folder)
        cls._clear(folder, overwrite)
        opened = EmbeddingStore.open(store)
        if isinstance(model, DermModel):
            loaded = model
        else:
            wrote = opened.manifest["model"]
            loaded = load_model(
                model or wrote["name"],
                checkpoint=None if model else wrote.get("checkpoint"),
                precision=wrote.get("precision", "fp32"),
            )
        opened.check_model(loaded)
        dim = opened.embed_dim
        n = sum(len(v) for v, _ in opened.iter_vectors())
        if n == 0:
            raise IndexStoreError(f"{store}: the store holds no embedded image")
        if not 1 <= shards <= n:
            raise IndexStoreError(f"{store}: shards must be between 1 and {n}, got {shards}")
        bounds = [n * k // shards for k in range(shards + 1)]
        if factory:
            plan = ann.IndexPlan(factory, ann.factory_kind(factory), 0, "given")
        else:
            budget = memory // shards if memory is not None else None
            plan = ann.plan_index(bounds[1], dim, kind, budget)
        cls._remove_files(folder)  # left by a build that did not finish
        folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(folder / "items.sqlite")
        db.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, path TEXT NOT NULL, sha256 TEXT, "
            "label TEXT, caption TEXT, added_at TEXT NOT NULL, vector BLOB)"
        )
        now = datetime.now(UTC).isoformat(timespec="seconds")
        columns = ("path", "sha256", "label", "caption")
        row = 0
        for _, meta in opened.iter_vectors(columns):
            chunk = list(zip(*(meta[c] for c in columns), strict=True))
            db.executemany(
                "INSERT INTO items (id, path, sha256, label, caption, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(row + i, *values, now) for i, values in enumerate(chunk)],
            )
            row += len(chunk)
        db.commit()
        db.close()
        parts, reports = [], []
        for k, (lo, hi) in enumerate(pairwise(bounds)):
            name = "vectors.faiss" if shards == 1 else f"vectors-{k:03d}.faiss"
            try:
                built, part = ann.build(
                    lambda lo=lo, hi=hi: ann.row_range(
                        (v for v, _ in opened.iter_vectors()), lo, hi
                    ),
                    hi - lo,
                    dim,
                    plan,
                    queries=queries,
                )
            except RuntimeError as exc:  # FAISS refusing a factory string or its training data
                raise IndexStoreError(f"{folder}: cannot build {plan.factory!r} ({exc})") from None
            faiss.write_index(built, str(folder / name))
            del built
            part.index_bytes = (folder / name).stat().st_size
            reports.append(part)
            parts.append({"file": name, "first_row": lo, "rows": hi - lo, "build": part.to_dict()})
        report = reports[0] if shards == 1 else ann.combine_reports(reports)
        meta = {
            "format": 2,
            "model": loaded.name,
            "model_source": loaded.card.source,
            "checkpoint": loaded.card.checkpoint or None,
            "model_key": loaded.cache_key,
            "embed_dim": dim,
            "precision": loaded.precision,
            "kind": plan.kind,
            "factory": plan.factory,
            "reason": plan.reason,
            "parameter": report.parameter,
            "value": report.value,
            "store": str(Path(store).resolve()),
            "build": report.to_dict(),
            "parts": parts,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_bytes(folder / "index.json", json.dumps(meta, indent=2).encode())
        return cls(folder, loaded, meta), report

    @staticmethod
    def _clear(folder: Path, overwrite: bool) -> None:
        """Refuse an existing index unless ``overwrite``; then remove its files."""
        if (folder / "index.json").exists():
            if not overwrite:
                raise IndexStoreError(
                    f"{folder}: an index already exists here; use add to extend it or "
                    "overwrite=True (--overwrite) to replace it"
                )
            Index._remove_files(folder)
            (folder / "index.json").unlink()

    @staticmethod
    def _remove_files(folder: Path) -> None:
        """Remove an index's data files (not its index.json): rows, vectors and their parts."""
        for path in (folder / "items.sqlite", *folder.glob("vectors*.faiss")):
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ storage
    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sync_faiss(self) -> None:
        """Load ``vectors.faiss`` if it matches the stored rows, else rebuild it from SQLite
        (a store-built index: memory-mapped, read-only, never rebuilt here)."""
        import faiss

        if self.meta.get("store"):
            # format 2 indexes before sharding: one part, its parameter at the top level
            parts = self.meta.get("parts") or [
                {"file": "vectors.faiss", "build": self.meta.get("build", {})}
            ]
            self._parts = [
                (
                    self._read_store_part(self.folder / p["file"]),
                    p["build"].get("parameter", self.meta.get("parameter")),
                    p["build"].get("value", self.meta.get("value")),
                )
                for p in parts
            ]
            if len(self._parts) == 1:
                self._faiss, parameter, value = self._parts[0]
                ann.set_parameter(self._faiss, parameter, value)
            else:
                self._faiss = ann.open_shards(self._parts)
            self._ids = None
            return
        ids = np.array(
            [r[0] for r in self._db.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64
        )
        path = self.folder / "vectors.faiss"
        if path.is_file():
            try:
                index = faiss.read_index(str(path))
                if index.ntotal == len(ids):
                    self._faiss, self._ids, self._trained_size = index, ids, len(ids)
                    return
            except RuntimeError:
                pass  # unreadable derived file: rebuilt below from the source of truth
        self._rebuild(ids)

    def _read_store_part(self, path: Path) -> Any:
        """One written part of a store-built index, memory-mapped where FAISS can."""
        import faiss

        try:
            return ann.read_mapped(str(path), self.meta["factory"])
        except RuntimeError:
            try:  # an index type FAISS cannot map: read into memory
                return faiss.read_index(str(path))
            except RuntimeError as exc:
                raise IndexStoreError(
                    f"{path}: unreadable ({exc}); rebuild it with dermfm index build "
                    f"--from-store {self.meta['store']}"
                ) from None

    def _rebuild(self, ids: np.ndarray) -> None:
        import faiss

        dim = int(self.meta["embed_dim"])
        rows = self._db.execute("SELECT vector FROM items ORDER BY id").fetchall()
        vectors = (
            np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows])
            if rows
            else np.empty((0, dim), dtype=np.float32)
        )
        self._faiss = _faiss_index(self.meta["kind"], vectors, dim)
        self._ids = ids
        self._trained_size = len(ids)
        atomic_write_bytes(
            self.folder / "vectors.faiss", faiss.serialize_index(self._faiss).tobytes()
        )

    # ------------------------------------------------------------------ adding
    def add(
        self,
        source: str | Path | Sequence[str | Path] | Iterable[Item],
        batch_size: int = 32,
        show_progress: bool | None = None,
    ) -> AddReport:
        """Embed and add images; already indexed files (same content) are skipped."""
        import faiss

        if self.meta.get("store"):
            raise IndexStoreError(
                f"{self.folder}: built from the embedding store {self.meta['store']}; add the "
                "images to the store (dermfm embed) and rebuild (dermfm index build --from-store)"
            )

        items = (
            read_items(source)
            if isinstance(source, (str, Path))
            else [x if isinstance(x, Item) else Item(Path(x)) for x in source]
        )
        report = AddReport()
        todo: list[tuple[Item, str]] = []
        known = {r[0] for r in self._db.execute("SELECT sha256 FROM items")}
        for item in items:
            try:
                digest = image_digest(item.path)
            except ImageError as exc:
                report.errors.append(exc)
                continue
            if digest in known:
                report.duplicates.append(str(item.path))
                continue
            known.add(digest)
            todo.append((item, digest))
        embedded = self.model.embed_images(
            [i.path for i, _ in todo], batch_size=batch_size, show_progress=show_progress
        )
        report.errors.extend(embedded.errors[i] for i in sorted(embedded.errors))
        now = datetime.now(UTC).isoformat(timespec="seconds")
        vectors = embedded.vectors.numpy().astype(np.float32)
        rows = [
            (
                str(todo[i][0].path),
                todo[i][1],
                todo[i][0].label,
                todo[i][0].caption,
                now,
                vectors[r].tobytes(),
            )
            for r, i in enumerate(embedded.ok)
        ]
        with self._db:
            self._db.executemany(
                "INSERT INTO items (path, sha256, label, caption, added_at, vector) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        report.added = len(rows)
        if rows:
            ids = np.array(
                [r[0] for r in self._db.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64
            )
            if self.meta["kind"] == "ivf" and len(ids) >= 2 * max(self._trained_size, 1):
                self._rebuild(ids)  # retrain the coarse quantiser once the collection doubled
            else:
                self._faiss.add(vectors)
                self._ids = ids
                atomic_write_bytes(
                    self.folder / "vectors.faiss", faiss.serialize_index(self._faiss).tobytes()
                )
        return report

    # ------------------------------------------------------------------ search
    def search(self, query: str | ImageInput, k: int = 10) -> list[SearchHit]:
        """Nearest items to a text query (a ``str`` that is not an existing file) or an image."""
        if isinstance(query, str) and not Path(query).is_file():
            return self.search_text(query, k)
        return self.search_image(query, k)

    def search_text(self, text: str, k: int = 10) -> list[SearchHit]:
        """Nearest items to a text query."""
        return self.search_vector(self.model.encode_texts([text])[0].numpy(), k)

    def search_image(self, image: ImageInput, k: int = 10) -> list[SearchHit]:
        """Nearest items to a query image; an unreadable image raises :class:`ImageError`."""
        embedded = self.model.embed_images([image])
        if embedded.errors:
            raise embedded.errors[0]
        return self.search_vector(embedded.vectors[0].numpy(), k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[SearchHit]:
        """Nearest items to an L2-normalised embedding, best first."""
        total = int(self._faiss.ntotal)
        if total == 0:
            return []
        k = min(k, total)
        scores, rows = self._faiss.search(np.asarray(vector, dtype=np.float32)[None, :], k)
        hits = []
        for rank, (score, row) in enumerate(zip(scores[0], rows[0], strict=True), start=1):
            if row < 0:
                continue
            item_id = int(row if self._ids is None else self._ids[row])
            with self._lock:
                path, label, caption = self._db.execute(
                    "SELECT path, label, caption FROM items WHERE id = ?", (item_id,)
                ).fetchone()
            hits.append(SearchHit(rank, item_id, path, float(score), label, caption))
        return hits
