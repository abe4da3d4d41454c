"""Content-keyed caches in one user-configurable folder (``DERMFM_CACHE``, default
``~/.cache/dermfm``). Keys hash everything that determines the value (model + inputs).

Image embeddings are rows of embedding stores (:func:`dermfm.store.cache_store`, a store per
model under ``embeddings/stores``), the same mechanism ``dermfm embed`` fills.

Tensors (:func:`cached_tensor`) are looked up first in the read-only files that ship with model
weights (:data:`shipped_files`, e.g. the bundled model's ``class_embeddings.safetensors``), then in
the user's folder. A shipped file maps content keys to tensors, so an entry serves exactly the
model content and inputs it was computed from; when either changes, its key changes and the value
is computed (and cached in the user's folder) as if nothing had shipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def cache_dir(*parts: str) -> Path:
    """The cache folder (created on demand), or a sub-folder of it."""
    root = Path(os.environ.get("DERMFM_CACHE") or Path.home() / ".cache" / "dermfm")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_key(*parts: Any) -> str:
    """A stable SHA-256 hex digest of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes (the content identity of model weights)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def atomic_write_bytes(path: Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written).

    ``durable``: also flush the file and the folder entry to disk before returning, for files
    that must outlive a crash or power loss once the caller acknowledges them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk (after creating, renaming or removing something in it),
    so that they outlive a crash or power loss."""
    folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load_tensor(kind: str, key: str) -> torch.Tensor | None:
    """A cached tensor, or ``None`` when absent or unreadable (then it is recomputed)."""
    from safetensors.torch import load_file

    path = cache_dir(kind) / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        return load_file(path)["value"]
    except Exception:  # a corrupt cache entry is recomputed, never trusted
        return None


def save_tensor(kind: str, key: str, value: torch.Tensor) -> None:
    """Store a tensor under ``key`` (best effort: a read-only cache is not an error)."""
    from safetensors.torch import save

    with contextlib.suppress(OSError):
        atomic_write_bytes(
            cache_dir(kind) / f"{key}.safetensors", save({"value": value.contiguous().cpu()})
        )


#: Read-only safetensors files of tensors by content key that ship with model weights, consulted
#: before the user's cache; a model loader adds its folder's file (:func:`add_shipped`).
shipped_files: list[Path] = []


def add_shipped(path: Path) -> None:
    """Consult ``path`` (a shipped file: tensors named by their content keys) from now on."""
    if path not in shipped_files:
        shipped_files.append(path)


def shipped_tensor(key: str) -> torch.Tensor | None:
    """The tensor stored under ``key`` in a shipped file, or ``None`` when none holds it (an
    unreadable shipped file is skipped, so its values are computed, never trusted)."""
    from safetensors import safe_open

    for path in shipped_files:
        try:
            with safe_open(str(path), "pt") as fh:
                if key in fh.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    return fh.get_tensor(key)
        except Exception:  # missing or corrupt file: the value is computed instead
            continue
    return None


def stored_tensors(kind: str) -> dict[str, torch.Tensor]:
    """Every readable tensor in the user's cache under ``kind``, by key (what a script gathers
    into a shipped file after computing it)."""
    found = {p.stem: load_tensor(kind, p.stem) for p in cache_dir(kind).glob("*.safetensors")}
    return {key: value for key, value in sorted(found.items()) if value is not None}


def cached_tensor(
    kind: str, key: str, compute: Callable[[], torch.Tensor], enabled: bool = True
) -> torch.Tensor:
    """The tensor stored under ``key``: from a shipped file (:data:`shipped_files`) when one holds
    it, else from the user's cache under ``kind/key``, computing and storing it there when missing.

    ``enabled=False`` (a model whose weights are still changing, e.g. during training) always
    computes and neither reads nor stores.
    """
    if not enabled:
        return compute()
    value = shipped_tensor(key)
    if value is None:
        value = load_tensor(kind, key)
    if value is None:
        value = compute()
        save_tensor(kind, key, value)
    return value
