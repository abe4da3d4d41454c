"""Leakage audit: near-duplicates between an evaluation set and a training manifest.

Three methods look for each evaluation image's copies among the training images:

* ``exact``: identical file bytes (SHA-256 of the file).
* ``phash``: a 64-bit DCT perceptual hash (:func:`perceptual_hash`) within ``max_hamming`` bits.
  It survives re-encoding, resizing and brightness changes; crops of more than a few percent
  move it (2% off every side and 10% brighter stays within 6 bits for about 9 in 10 HAM10000
  images). Dermoscopy images share their low-frequency layout (a dark lesion in the middle of
  skin), so unrelated images collide more often than photographs do: with one image per lesion,
  half of HAM10000 against the other half, 6 bits flag 3.1% of the evaluation images that have
  no copy (4 bits: 1.0%; DermNet NZ 1.1%, Derm7pt 0.8% at 6 bits), and the rate grows with the
  size of the training set. Flagged pairs are candidates to review, not proof.
* ``embedding``: cosine similarity of image embeddings at least ``min_cosine``. The threshold is
  specific to the model: one tuned to dermatology packs distinct lesions close together (the
  bundled dermfm model puts the median HAM10000 image at cosine 0.98 from its nearest unrelated
  training image, while a JPEG re-encode of an image can fall to 0.9 from its original).
  :meth:`LeakageReport.warnings` says when ``min_cosine`` lies inside the bulk of unrelated
  pairs, and the report's nearest-neighbour cosine quantiles show where they lie.

:func:`audit_leakage` returns a :class:`LeakageReport` of the flagged pairs, which can drop the
flagged evaluation records (:meth:`LeakageReport.exclude`) and be written as CSV, Markdown or a
dict. Perceptual hashes are cached by file content under the dermfm cache folder.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from dermfm.errors import ImageError
from dermfm.evaluate.retrieval import as_matrix
from dermfm.io import ImageInput, image_digest, load_image
from dermfm.progress import progress

if TYPE_CHECKING:
    from dermfm.data.manifest import Record

__all__ = [
    "DuplicatePair",
    "LeakageReport",
    "audit_leakage",
    "hamming",
    "perceptual_hash",
]

#: The methods a pair can be flagged by, strongest evidence first.
METHODS = ("exact", "phash", "embedding")
#: Side of the grayscale thumbnail whose DCT gives the hash, and of the kept low-frequency block.
_THUMB, _BLOCK = 32, 8
#: JPEGs are decoded at the smallest DCT scale keeping this many pixels on the shorter side.
_DRAFT = 64
_CACHE_KIND = "phash"
_CACHE_VERSION = 1


def _phash_of(img: Image.Image) -> int:
    from scipy.fft import dctn

    gray = img.convert("L").resize((_THUMB, _THUMB), Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(gray, dtype=np.float64), type=2)[:_BLOCK, :_BLOCK]
    bits = (coeffs > np.median(coeffs)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _cache_path(digest: str) -> Path:
    from dermfm.cache import cache_dir, content_key

    return cache_dir(_CACHE_KIND) / f"{content_key(_CACHE_VERSION, _THUMB, _DRAFT, digest)}.txt"


def _file_phash(path: Path, digest: str) -> int:
    """The perceptual hash of an image file, from the cache when a valid entry exists."""
    from dermfm.cache import atomic_write_bytes

    entry = _cache_path(digest)
    with contextlib.suppress(OSError, ValueError):  # absent or corrupt: recompute
        text = entry.read_text(encoding="ascii").strip()
        if len(text) == 16:
            return int(text, 16)
    value = _phash_of(load_image(path, draft_size=_DRAFT))
    with contextlib.suppress(OSError):  # a read-only cache is not an error
        atomic_write_bytes(entry, f"{value:016x}".encode("ascii"))
    return value


def perceptual_hash(image: ImageInput) -> int:
    """64-bit DCT perceptual hash (pHash) of an image.

    The image (via :func:`dermfm.io.load_image`) is converted to grayscale, resized to 32x32
    (Lanczos), transformed with a 2-D type-II DCT, and each of the 8x8 lowest-frequency
    coefficients (DC included) becomes one bit: 1 when above their median. Bits are read row by
    row, the DC coefficient being the most significant, as in the ``imagehash`` package
    (``int(str(imagehash.phash(img)), 16)``). For a file path the hash is cached by the file's
    content (SHA-256) and large JPEGs are decoded at a reduced DCT scale first.

    Raises:
        ImageError: the file cannot be read or decoded.
    """
    if isinstance(image, Image.Image):
        return _phash_of(load_image(image))
    path = Path(image)
    return _file_phash(path, image_digest(path))


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    for h in (a, b):
        if isinstance(h, bool) or not isinstance(h, int | np.integer) or not 0 <= h < 1 << 64:
            raise ValueError(f"a perceptual hash is an integer in [0, 2**64), got {h!r}")
    return (int(a) ^ int(b)).bit_count()


@dataclass(frozen=True)
class DuplicatePair:
    """An evaluation image and a training image flagged as (near-)duplicates.

    Attributes:
        eval_image: path of the evaluation image.
        train_image: path of the training image.
        methods: the criteria the pair meets, in :data:`METHODS` order.
        hamming: Hamming distance of their perceptual hashes (``None`` when not computed).
        cosine: cosine similarity of their embeddings (``None`` without embeddings).
    """

    eval_image: str
    train_image: str
    methods: tuple[str, ...]
    hamming: int | None
    cosine: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {
            "eval_image": self.eval_image,
            "train_image": self.train_image,
            "methods": list(self.methods),
            "hamming": self.hamming,
            "cosine": self.cosine,
        }


@dataclass(frozen=True)
class LeakageReport:
    """Result of :func:`audit_leakage`.

    Attributes:
        pairs: flagged pairs, in evaluation-record order, strongest evidence first.
        n_eval: evaluation records audited.
        n_train: training records audited.
        max_hamming: perceptual-hash threshold (``None``: method not run).
        min_cosine: embedding threshold (``None``: no embeddings given).
        failed: images that could not be read or decoded (not fatal; they are audited by the
            methods that still apply, e.g. embeddings).
        nearest_cosine: per evaluation record, the cosine of its nearest training image (empty
            without embeddings): shows where unrelated images lie relative to ``min_cosine``.
    """

    pairs: list[DuplicatePair]
    n_eval: int
    n_train: int
    max_hamming: int | None
    min_cosine: float | None
    failed: list[ImageError] = field(default_factory=list)
    nearest_cosine: tuple[float, ...] = ()

    def duplicates(self, methods: Sequence[str] = METHODS) -> set[str]:
        """Paths of the evaluation images flagged by any of ``methods`` (default: all)."""
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
        return {p.eval_image for p in self.pairs if set(p.methods) & set(methods)}

    @property
    def counts(self) -> dict[str, int]:
        """Pairs flagged by each method, all pairs, and flagged evaluation images."""
        out = {m: sum(m in p.methods for p in self.pairs) for m in METHODS}
        out["pairs"] = len(self.pairs)
        out["eval_images_flagged"] = len(self.duplicates())
        return out

    def exclude(self, records: Sequence[Record], methods: Sequence[str] = METHODS) -> list[Record]:
        """A new list of ``records`` without the evaluation images flagged by any of
        ``methods`` (order kept; e.g. ``methods=("exact", "phash")`` when
        :meth:`warnings` says the embedding threshold does not separate)."""
        flagged = self.duplicates(methods)
        return [r for r in records if r.image not in flagged]

    def cosine_quantiles(self) -> dict[str, float]:
        """Median, 95th, 99th percentile and maximum of :attr:`nearest_cosine` (empty without
        embeddings)."""
        if not self.nearest_cosine:
            return {}
        values = np.asarray(self.nearest_cosine)
        qs = np.quantile(values, [0.5, 0.95, 0.99, 1.0])
        return {k: float(v) for k, v in zip(("median", "p95", "p99", "max"), qs, strict=True)}

    def warnings(self) -> list[str]:
        """Signs that a threshold does not separate duplicates from unrelated images: the
        embedding threshold is at or below the median nearest-training cosine, so at least half
        of the evaluation images are flagged by a criterion that unrelated images meet."""
        median = self.cosine_quantiles().get("median")
        if self.min_cosine is None or median is None or median < self.min_cosine:
            return []
        return [
            f"min_cosine {self.min_cosine:g} is at or below the median cosine ({median:.3f}) "
            "between an evaluation image and its nearest training image: these embeddings do "
            "not separate duplicates from unrelated images at this threshold; raise min_cosine "
            "or rely on the exact and phash methods"
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping: thresholds, counts, warnings, nearest-cosine quantiles, failures
        and pairs."""
        return {
            "n_eval": self.n_eval,
            "n_train": self.n_train,
            "max_hamming": self.max_hamming,
            "min_cosine": self.min_cosine,
            "counts": self.counts,
            "warnings": self.warnings(),
            "nearest_cosine": self.cosine_quantiles(),
            "failed": [{"image": e.path, "reason": e.reason} for e in self.failed],
            "pairs": [p.to_dict() for p in self.pairs],
        }

    def to_csv(self, path: str | Path) -> Path:
        """Write the pairs as CSV (``eval_image, train_image, methods, hamming, cosine``;
        methods joined by ``+``, empty cells for values not computed)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["eval_image", "train_image", "methods", "hamming", "cosine"])
            for p in self.pairs:
                writer.writerow(
                    [
                        p.eval_image,
                        p.train_image,
                        "+".join(p.methods),
                        "" if p.hamming is None else p.hamming,
                        "" if p.cosine is None else f"{p.cosine:.6f}",
                    ]
                )
        return out

    def to_markdown(self, max_rows: int = 50) -> str:
        """A Markdown summary: thresholds, counts, failures and the first ``max_rows`` pairs."""
        counts = self.counts
        lines = [
            "## Leakage audit",
            "",
            f"{self.n_eval} evaluation images against {self.n_train} training images; "
            f"{counts['eval_images_flagged']} evaluation images flagged in {counts['pairs']} "
            "pairs.",
            "",
            f"- exact (identical bytes): {counts['exact']} pairs",
            f"- phash (Hamming <= {self.max_hamming}): {counts['phash']} pairs"
            if self.max_hamming is not None
            else "- phash: not run",
            f"- embedding (cosine >= {self.min_cosine:g}): {counts['embedding']} pairs"
            if self.min_cosine is not None
            else "- embedding: no embeddings given",
        ]
        quantiles = self.cosine_quantiles()
        if quantiles:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in quantiles.items())
            lines.append(f"- nearest training image cosine per evaluation image: {shown}")
        lines += [f"- **warning**: {w}" for w in self.warnings()]
        if self.failed:
            lines.append(
                f"- {len(self.failed)} unreadable images: "
                + "; ".join(str(e) for e in self.failed[:10])
                + (" ..." if len(self.failed) > 10 else "")
            )
        if self.pairs:
            lines += [
                "",
                "| evaluation image | training image | methods | Hamming | cosine |",
                "|---|---|---|---|---|",
            ]
            for p in self.pairs[:max_rows]:
                ham = "—" if p.hamming is None else str(p.hamming)
                cos = "—" if p.cosine is None else f"{p.cosine:.4f}"
                cells = [p.eval_image, p.train_image, " + ".join(p.methods), ham, cos]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            if len(self.pairs) > max_rows:
                lines.append(f"\n... and {len(self.pairs) - max_rows} more pairs (see the CSV).")
        return "\n".join(lines) + "\n"


@dataclass
class _Fingerprint:
    digest: str | None = None
    phash: int | None = None
    error: ImageError | None = None


def _fingerprint(path: str, with_phash: bool) -> _Fingerprint:
    out = _Fingerprint()
    try:
        out.digest = image_digest(path)
        if with_phash:
            out.phash = _file_phash(Path(path), out.digest)
    except ImageError as exc:
        out.error = exc
    return out


def _best_matches(
    score: Callable[[slice, slice], NDArray[np.float32]],
    n_eval: int,
    n_train: int,
    chunk: int,
    top_k: int,
    advance: Callable[[int], None],
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float32]]:
    """The ``top_k`` highest-scoring training rows of every evaluation row.

    ``score(eval_rows, train_rows)`` gives a block of scores; blocks are ``chunk`` x ``chunk``,
    so memory stays bounded whatever the sizes. Returns ``(eval_row, train_row, score)`` arrays
    with ``min(top_k, n_train)`` entries per evaluation row.
    """
    k = min(top_k, n_train)
    rows, cols, vals = [], [], []
    for e0 in range(0, n_eval, chunk):
        e = slice(e0, min(e0 + chunk, n_eval))
        n_rows = e.stop - e.start
        best = np.empty((n_rows, 0), dtype=np.float32)
        best_idx = np.empty((n_rows, 0), dtype=np.intp)
        for t0 in range(0, n_train, chunk):
            t = slice(t0, min(t0 + chunk, n_train))
            cand = np.concatenate([best, score(e, t)], axis=1)
            cand_idx = np.concatenate(
                [best_idx, np.broadcast_to(np.arange(t.start, t.stop), (n_rows, t.stop - t.start))],
                axis=1,
            )
            top = np.argpartition(-cand, k - 1, axis=1)[:, :k]
            best = np.take_along_axis(cand, top, axis=1)
            best_idx = np.take_along_axis(cand_idx, top, axis=1)
        rows.append(np.repeat(np.arange(e.start, e.stop), k))
        cols.append(best_idx.ravel())
        vals.append(best.ravel())
        advance(n_rows)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _unit_rows(x: Any, what: str) -> NDArray[np.float32]:
    arr = as_matrix(x, what)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{what} has all-zero rows (no direction to compare)")
    return arr / norms


def audit_leakage(
    eval_records: Sequence[Record],
    train_records: Sequence[Record],
    *,
    eval_embeddings: Any | None = None,
    train_embeddings: Any | None = None,
    max_hamming: int | None = 6,
    min_cosine: float = 0.97,
    chunk: int = 4096,
    top_k: int = 5,
    workers: int = 4,
    show_progress: bool | None = None,
) -> LeakageReport:
    """Find evaluation images that duplicate or nearly duplicate training images.

    Every pair found is described by all the criteria it meets: identical bytes (``exact``),
    perceptual-hash Hamming distance ``<= max_hamming`` (``phash``) and embedding cosine
    ``>= min_cosine`` (``embedding``); its Hamming distance and cosine are filled in whenever
    they can be computed. Each method contributes at most the ``top_k`` closest training images
    of each evaluation image (exact copies are all kept).

    Args:
        eval_records: the evaluation images (:class:`~dermfm.data.Record`, ``.image`` paths).
        train_records: the training images to search.
        eval_embeddings: optional ``(len(eval_records), D)`` image embeddings, row-aligned with
            ``eval_records`` (numpy or torch); pass together with ``train_embeddings``.
        train_embeddings: optional ``(len(train_records), D)`` embeddings.
        max_hamming: perceptual-hash threshold in bits (0..64); ``None`` skips the hashing
            (exact duplicates are still found).
        min_cosine: embedding cosine threshold (see the module notes: it is model-specific).
        chunk: block size of the pairwise searches (memory grows with ``chunk**2``).
        top_k: pairs kept per evaluation image and method.
        workers: threads hashing images (decoding releases the GIL).
        show_progress: progress bars (``None``: only on a terminal).

    Raises:
        ValueError: invalid thresholds, embeddings given for one side only, or embedding rows
            not matching the records.
    """
    if max_hamming is not None and not (
        isinstance(max_hamming, int | np.integer) and 0 <= max_hamming <= 64
    ):
        raise ValueError(f"max_hamming must be an integer in 0..64 or None, got {max_hamming!r}")
    if not -1.0 <= min_cosine <= 1.0:
        raise ValueError(f"min_cosine must be in [-1, 1], got {min_cosine!r}")
    for name, value in (("chunk", chunk), ("top_k", top_k), ("workers", workers)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if (eval_embeddings is None) != (train_embeddings is None):
        raise ValueError("pass both eval_embeddings and train_embeddings, or neither")
    if not eval_records or not train_records:
        raise ValueError(
            f"nothing to audit: {len(eval_records)} evaluation and {len(train_records)} "
            "training records"
        )
    ev_paths = [r.image for r in eval_records]
    tr_paths = [r.image for r in train_records]
    emb: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None
    if eval_embeddings is not None:
        emb = (
            _unit_rows(eval_embeddings, "eval_embeddings"),
            _unit_rows(train_embeddings, "train_embeddings"),
        )
        for name, arr, n in (("eval", emb[0], len(ev_paths)), ("train", emb[1], len(tr_paths))):
            if arr.shape[0] != n:
                raise ValueError(f"{name}_embeddings has {arr.shape[0]} rows for {n} records")
        if emb[0].shape[1] != emb[1].shape[1]:
            raise ValueError(
                f"eval_embeddings has {emb[0].shape[1]} dimensions, "
                f"train_embeddings {emb[1].shape[1]}"
            )

    unique = list(dict.fromkeys(ev_paths + tr_paths))
    with (
        progress("reading images", len(unique), show_progress) as advance,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        prints: dict[str, _Fingerprint] = {}
        for path, fp in zip(
            unique,
            pool.map(lambda p: _fingerprint(p, max_hamming is not None), unique),
            strict=True,
        ):
            prints[path] = fp
            advance(1)
    failed = [fp.error for fp in prints.values() if fp.error is not None]

    found: set[tuple[str, str]] = set()
    by_digest: dict[str, list[str]] = {}
    for path in dict.fromkeys(tr_paths):
        if prints[path].digest is not None:
            by_digest.setdefault(prints[path].digest, []).append(path)  # type: ignore[arg-type]
    for path in ev_paths:
        found.update((path, t) for t in by_digest.get(prints[path].digest or "", []))

    if max_hamming is not None:
        ev_h = [p for p in dict.fromkeys(ev_paths) if prints[p].phash is not None]
        tr_h = [p for p in dict.fromkeys(tr_paths) if prints[p].phash is not None]
        if ev_h and tr_h:
            eh = np.array([prints[p].phash for p in ev_h], dtype=np.uint64)
            th = np.array([prints[p].phash for p in tr_h], dtype=np.uint64)
            with progress("perceptual-hash search", len(ev_h), show_progress) as advance:
                rows, cols, score = _best_matches(
                    lambda e, t: -np.bitwise_count(eh[e, None] ^ th[None, t]).astype(np.float32),
                    len(ev_h),
                    len(tr_h),
                    chunk,
                    top_k,
                    advance,
                )
            keep = -score <= max_hamming
            found.update(
                zip([ev_h[i] for i in rows[keep]], [tr_h[j] for j in cols[keep]], strict=True)
            )

    nearest: tuple[float, ...] = ()
    cosines: dict[tuple[str, str], float] = {}
    if emb is not None:
        e_vec, t_vec = emb
        with progress("embedding search", len(ev_paths), show_progress) as advance:
            rows, cols, score = _best_matches(
                lambda e, t: e_vec[e] @ t_vec[t].T,
                len(ev_paths),
                len(tr_paths),
                chunk,
                top_k,
                advance,
            )
        best = np.full(len(ev_paths), -np.inf)
        np.maximum.at(best, rows, score)
        nearest = tuple(float(v) for v in best)
        for i, j, s in zip(rows, cols, score, strict=True):
            cosines.setdefault((ev_paths[i], tr_paths[j]), float(s))
        found.update(pair for pair, s in cosines.items() if s >= min_cosine)

    pairs = _describe(found, prints, emb, cosines, ev_paths, tr_paths, max_hamming, min_cosine)
    return LeakageReport(
        pairs=pairs,
        n_eval=len(eval_records),
        n_train=len(train_records),
        max_hamming=max_hamming,
        min_cosine=min_cosine if emb is not None else None,
        failed=failed,
        nearest_cosine=nearest,
    )


def _describe(
    found: set[tuple[str, str]],
    prints: dict[str, _Fingerprint],
    emb: tuple[NDArray[np.float32], NDArray[np.float32]] | None,
    cosines: dict[tuple[str, str], float],
    ev_paths: list[str],
    tr_paths: list[str],
    max_hamming: int | None,
    min_cosine: float,
) -> list[DuplicatePair]:
    """Every criterion, Hamming distance and cosine of each found pair, sorted for reading.

    ``cosines`` holds the similarities the embedding search computed (reused so that a pair it
    kept is labelled by the very value it was kept for); others are computed here.
    """
    ev_row = {p: i for i, p in reversed(list(enumerate(ev_paths)))}
    tr_row = {p: i for i, p in reversed(list(enumerate(tr_paths)))}
    pairs = []
    for ev, tr in found:
        a, b = prints[ev], prints[tr]
        methods = []
        if a.digest is not None and a.digest == b.digest:
            methods.append("exact")
        ham = None
        if a.phash is not None and b.phash is not None:
            ham = hamming(a.phash, b.phash)
            if max_hamming is not None and ham <= max_hamming:
                methods.append("phash")
        cos = None
        if emb is not None:
            cos = cosines.get((ev, tr))
            if cos is None:
                cos = float(emb[0][ev_row[ev]] @ emb[1][tr_row[tr]])
            if cos >= min_cosine:
                methods.append("embedding")
        pairs.append(DuplicatePair(ev, tr, tuple(methods), ham, cos))
    return sorted(
        pairs,
        key=lambda p: (
            ev_row[p.eval_image],
            "exact" not in p.methods,
            64 if p.hamming is None else p.hamming,
            -(p.cosine if p.cosine is not None else -math.inf),
            p.train_image,
        ),
    )
