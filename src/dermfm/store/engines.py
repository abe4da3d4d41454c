"""Who computes the missing rows of a store: the local engine (decoding threads, batched model)
or Ray (Ray Data reads the source, one model per actor). Both embed through
:func:`embed_items`, so they write the same rows; only the scheduling differs.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dermfm.errors import ImageError
from dermfm.progress import progress
from dermfm.store.core import EmbeddingStore, StoreError, image_key, rows_table
from dermfm.store.sources import SourceItem, Unit, open_source

if TYPE_CHECKING:
    import pyarrow as pa

    from dermfm.models.base import DermModel

ENGINES = ("local", "ray")


@dataclass
class EmbedReport:
    """What an ``embed`` run did.

    Attributes:
        store: the store folder.
        units: shards the source is cut into.
        skipped: shards already finished before this run (not embedded again).
        written: shards this run wrote.
        images: images this run embedded or tried to (rows written).
        errors: rows written with an error (unreadable images), as ``(path, reason)``.
        seconds: wall time of the embedding part of the run.
    """

    store: Path
    units: int = 0
    skipped: int = 0
    written: int = 0
    images: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Throughput of this run."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {
            "store": str(self.store),
            "units": self.units,
            "skipped": self.skipped,
            "written": self.written,
            "images": self.images,
            "errors": [{"source": p, "error": r} for p, r in self.errors],
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
        }


def embed_items(
    model: DermModel,
    items: Sequence[SourceItem],
    *,
    batch_size: int = 32,
    workers: int = 4,
    tta: bool = False,
    rows: Sequence[int] | None = None,
    show_progress: bool | None = None,
) -> pa.Table:
    """Store rows (:data:`~dermfm.store.core.COLUMNS`) for ``items``, in order: each image read
    once (its bytes hashed for the content key), decoded at full resolution, masked, and
    embedded in batches; an image that cannot be read or decoded becomes a row with its
    ``error``. Every engine and the embedding cache compute rows here."""
    from dermfm.data.transforms import mask_region
    from dermfm.io import decode_image_bytes

    digests: list[str | None] = [None] * len(items)

    def prepare(i: int) -> Any:
        item = items[i]
        data = item.read()
        digests[i] = hashlib.sha256(data).hexdigest()
        image = mask_region(decode_image_bytes(data, item.path), item.mask_box)
        return model.prepare(image)

    embedded = model.embed_prepared(
        len(items),
        prepare,
        batch_size=batch_size,
        workers=workers,
        tta=tta,
        show_progress=show_progress,
    )
    vectors = np.zeros((len(items), model.embed_dim), np.float32)
    if embedded.ok:
        vectors[embedded.ok] = embedded.vectors.numpy()
    errors: list[str | None] = [None] * len(items)
    for i, exc in embedded.errors.items():
        errors[i] = exc.reason if isinstance(exc, ImageError) else str(exc)
    columns: dict[str, list[Any]] = {
        "key": [
            image_key(d, it.mask_box, tta) if d else None
            for d, it in zip(digests, items, strict=True)
        ],
        "id": [it.id for it in items],
        "path": [it.path for it in items],
        "sha256": digests,
        "label": [it.label for it in items],
        "caption": [it.caption for it in items],
        "split": [it.split for it in items],
        "row": list(rows) if rows is not None else list(range(len(items))),
        "tta": [tta] * len(items),
        "error": errors,
    }
    return rows_table(columns, vectors, model.embed_dim)


def _unit_rows(unit: Unit, n: int) -> list[int]:
    return [unit.start + i for i in range(n)] if unit.start >= 0 else list(range(n))


def embed_source(
    source: str | Path,
    store: str | Path,
    model: DermModel,
    *,
    engine: str = "local",
    root: str | Path | None = None,
    shard_size: int = 1000,
    batch_size: int = 32,
    workers: int = 4,
    address: str | None = None,
    actors: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    show_progress: bool | None = None,
    on_shard: Callable[[str, int], None] | None = None,
) -> EmbedReport:
    """Embed every image of ``source`` into the store folder ``store`` (created when missing).

    Resumable and idempotent: shards already in the store are skipped, each new shard is written
    whole or not at all, so a run killed at any moment and run again ends with every image
    exactly once. Images that cannot be read become rows with their error; the run goes on.

    Args:
        source: a folder, CSV/JSONL manifest, dataset spec or WebDataset shards
            (:func:`~dermfm.store.sources.open_source`).
        store: the store folder; an existing one must hold ``model``'s embeddings of the same
            source.
        engine: ``local`` (threads decode, one batched model here) or ``ray`` (a Ray cluster:
            Ray Data reads the source, ``actors`` actors each load the model with ``num_cpus``
            CPUs and ``num_gpus`` GPUs; ``address``: ``auto``, ``ray://host:port``, or ``None``
            for a local cluster started for this run).
        shard_size: images per store shard (list sources; WebDataset: one shard per tar).
        on_shard: called with each finished shard's name and row count.

    Raises:
        StoreError: the store holds another model's embeddings or another source's.
        ManifestError: the source cannot be read.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    src = open_source(source, root=root, shard_size=shard_size)
    opened = EmbeddingStore.open_or_create(store, model, source=src.describe())
    report = EmbedReport(store=Path(store), units=len(src.units))
    with opened.lock():
        todo = [u for u in src.units if not opened.has_shard(u.name)]
        report.skipped = len(src.units) - len(todo)
        start = time.perf_counter()

        def finished(name: str, table: pa.Table) -> None:
            opened.write_shard(name, table)
            report.written += 1
            report.images += table.num_rows
            paths, errs = table["path"].to_pylist(), table["error"].to_pylist()
            report.errors += [(p, e) for p, e in zip(paths, errs, strict=True) if e is not None]
            if on_shard is not None:
                on_shard(name, table.num_rows)

        if engine == "local":
            known = sum(u.size or 0 for u in todo)
            with progress("Embedding into store", known, show_progress) as advance:
                for unit in todo:
                    items = unit.load()
                    table = embed_items(
                        model,
                        items,
                        batch_size=batch_size,
                        workers=workers,
                        rows=_unit_rows(unit, len(items)),
                    )
                    finished(unit.name, table)
                    advance(len(items))
        elif todo:
            _embed_ray(
                todo,
                model,
                finished,
                address=address,
                actors=actors,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                batch_size=batch_size,
                workers=workers,
            )
        report.seconds = time.perf_counter() - start
    return report


# ---------------------------------------------------------------------------------- Ray engine


def model_reference(model: DermModel) -> dict[str, Any]:
    """How another process loads ``model`` again (``load_model(**reference)``)."""
    from dermfm.models.registry import lookup

    name = model.name if lookup(model.name) is not None else model.card.loaded_from or model.name
    return {
        "name_or_path": name,
        "checkpoint": model.card.checkpoint or None,
        "precision": model.precision,
    }


class RayEmbedder:
    """A Ray Data actor: loads the model once, then embeds batches of rows read by Ray Data
    (``map_batches`` calls it with columns of :meth:`SourceItem.to_row` plus ``data``)."""

    def __init__(
        self, reference: dict[str, Any], cache_key: str, batch_size: int, workers: int
    ) -> None:
        from dermfm.models import load_model

        self.model = load_model(**reference)
        if self.model.cache_key != cache_key:
            raise StoreError(
                str(reference["name_or_path"]),
                f"loads with weights key {self.model.cache_key} on this Ray worker, not "
                f"{cache_key} as on the driver: the workers must see the same model files",
            )
        self.batch_size = batch_size
        self.workers = workers

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Embed one batch; returns the store columns plus ``unit``, ``size`` and ``vector``
        (zeros where ``error`` is set)."""
        n = len(batch["id"])
        items = [
            SourceItem.from_row(
                {k: _plain(batch[k][i]) for k in ("id", "path", "label", "caption", "split")}
                | {"mask_box": _plain(batch["mask_box"][i])},
                data=bytes(batch["data"][i]) if _plain(batch["read_error"][i]) is None else None,
            )
            for i in range(n)
        ]
        table = embed_items(
            self.model,
            items,
            batch_size=self.batch_size,
            workers=self.workers,
            rows=[int(r) for r in batch["row"]],
        )
        out = {c: np.asarray(table[c].to_pylist(), dtype=object) for c in table.column_names}
        errors = list(out["error"])
        for i in range(n):
            if _plain(batch["read_error"][i]) is not None:  # Ray Data could not read the bytes
                errors[i] = str(batch["read_error"][i])
        out["error"] = np.asarray(errors, dtype=object)
        vectors = np.zeros((n, self.model.embed_dim), np.float32)
        ok = [i for i in range(n) if table["error"][i].as_py() is None]
        if ok:
            from dermfm.store.core import vectors_of

            vectors[ok] = vectors_of(table["vector"].take(ok), self.model.embed_dim)
        out["vector"] = vectors
        out["unit"] = batch["unit"]
        out["size"] = batch["size"]
        return out


def _plain(value: Any) -> Any:
    """A numpy scalar, ``None`` or a NaN standing for ``None`` (Ray Data's conversion of
    missing values) from a Ray batch as a plain Python value."""
    if value is None:
        return None
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _expand_unit(row: dict[str, Any], units: dict[str, Unit]) -> list[dict[str, Any]]:
    """Ray Data ``flat_map``: one unit row -> its items with their bytes read."""
    unit = units[row["unit"]]
    items = unit.load()
    out = []
    rows = _unit_rows(unit, len(items))
    for item, number in zip(items, rows, strict=True):
        try:
            data, error = item.read(), None
        except ImageError as exc:
            data, error = b"", exc.reason
        out.append(
            {
                **item.to_row(),
                "data": data,
                "read_error": error,
                "row": number,
                "unit": unit.name,
                "size": len(items),
            }
        )
    return out


def _embed_ray(
    todo: list[Unit],
    model: DermModel,
    finished: Callable[[str, pa.Table], None],
    *,
    address: str | None,
    actors: int,
    num_cpus: float,
    num_gpus: float,
    batch_size: int,
    workers: int,
) -> None:
    """Run the missing units on Ray; the driver writes each unit's shard once all its rows
    are back (so a killed run leaves only whole shards, as the local engine does)."""
    try:
        import ray
    except ImportError as exc:
        raise StoreError("--engine ray", "needs Ray: pip install 'dermfm[ray]'") from exc
    from functools import partial

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    by_name = {u.name: u for u in todo}
    dataset = (
        ray.data.from_items([{"unit": u.name} for u in todo], override_num_blocks=len(todo))
        .flat_map(partial(_expand_unit, units=by_name))
        .map_batches(
            RayEmbedder,
            fn_constructor_kwargs={
                "reference": model_reference(model),
                "cache_key": model.cache_key,
                "batch_size": batch_size,
                "workers": workers,
            },
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=actors,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
    )
    pending: dict[str, list[dict[str, Any]]] = {}
    dim = model.embed_dim
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["unit"])):
            name = str(batch["unit"][i])
            row = {c: _plain(batch[c][i]) for c in ("key", "id", "path", "sha256", "label")}
            row |= {c: _plain(batch[c][i]) for c in ("caption", "split", "row", "tta", "error")}
            row["vector"] = np.asarray(batch["vector"][i], np.float32)
            rows = pending.setdefault(name, [])
            rows.append(row)
            if len(rows) == int(batch["size"][i]):
                del pending[name]
                rows.sort(key=lambda r: r["row"])
                columns = {c: [r[c] for r in rows] for c in rows[0] if c != "vector"}
                finished(name, rows_table(columns, np.stack([r["vector"] for r in rows]), dim))
    if pending:
        raise StoreError(", ".join(sorted(pending)), "Ray returned only part of these shards' rows")
