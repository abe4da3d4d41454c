"""Image-text retrieval metrics on precomputed embeddings: recall@k and median rank.

Both directions are scored on one similarity matrix (dot products of the embeddings, i.e. cosine
similarity for the L2-normalised vectors dermfm's models return):

* ``image_to_text``: each image queries all texts; its correct items are its captions.
* ``text_to_image``: each text queries all images; its correct items are the images it captions.

The **rank** of a query is the 1-based position of its first correct item when the gallery is
sorted by decreasing similarity; an incorrect item scoring the same as the best correct one is
counted ahead of it (ties never help a query). ``R@k`` is the fraction of queries whose rank is at
most ``k``, so a query with several correct items is a hit when any of them is in the top ``k``:
the definition of CLIP-style papers, CLIP_benchmark (``recall@k > 0`` per query) and open_clip
(``R@k``); ``median_rank`` is ``floor(median(rank))``, as open_clip computes it. Queries without
any correct item (a caption of no image, an image without a caption) stay in the gallery as
distractors but are not scored. Each metric carries a 95% bootstrap interval over its queries
(:func:`dermfm.evaluate.metrics.bootstrap`; with ``groups``, a cluster bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from dermfm.evaluate.metrics import Estimate, bootstrap

__all__ = ["as_matrix", "pairs_from_texts", "retrieval_metrics"]

#: Queries scored per block of the similarity matrix (bounds memory on large galleries).
_QUERY_BLOCK = 1024


def as_matrix(x: Any, what: str, dtype: DTypeLike = np.float32) -> NDArray[Any]:
    """A non-empty, finite 2-D numpy array from a numpy array, torch tensor or nested list.

    Raises:
        ValueError: ``x`` is not 2-D, is empty, or holds NaN or infinite values (``what`` names
            it in the message).
    """
    if hasattr(x, "detach"):  # a torch tensor (any device or dtype, bf16 included)
        x = x.detach().float().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a numeric matrix: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows, features), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return np.ascontiguousarray(arr)


def pairs_from_texts(
    texts_per_image: Sequence[Sequence[str]],
) -> tuple[list[str], list[list[int]]]:
    """Deduplicate captions: the distinct strings and, per image, the indices of its captions.

    Identical strings (exact match) become one text, so a caption shared by several images is
    embedded once and counts as correct for each of them; a caption repeated for one image is
    kept once. Texts are numbered in first-seen order.

    Raises:
        ValueError: an entry is a bare string (not a list of captions) or holds a non-string.
    """
    index: dict[str, int] = {}
    image_to_texts: list[list[int]] = []
    for i, texts in enumerate(texts_per_image):
        if isinstance(texts, str):
            raise ValueError(f"captions of image {i} must be a list of strings, got one string")
        ids: list[int] = []
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"captions of image {i} must be strings, got {text!r}")
            j = index.setdefault(text, len(index))
            if j not in ids:
                ids.append(j)
        image_to_texts.append(ids)
    return list(index), image_to_texts


def _positives(
    image_to_texts: Sequence[Sequence[int]], n_images: int, n_texts: int
) -> list[NDArray[np.intp]]:
    if len(image_to_texts) != n_images:
        raise ValueError(
            f"image_to_texts has {len(image_to_texts)} entries but there are {n_images} images"
        )
    out = []
    for i, ids in enumerate(image_to_texts):
        arr = np.unique(np.asarray(list(ids), dtype=np.int64))
        if arr.size and (arr[0] < 0 or arr[-1] >= n_texts):
            raise ValueError(
                f"image {i} refers to text {int(arr[0] if arr[0] < 0 else arr[-1])}, "
                f"outside 0..{n_texts - 1}"
            )
        out.append(arr.astype(np.intp))
    return out


def _invert(positives: Sequence[NDArray[np.intp]], n_texts: int) -> list[NDArray[np.intp]]:
    by_text: list[list[int]] = [[] for _ in range(n_texts)]
    for i, ids in enumerate(positives):
        for t in ids:
            by_text[t].append(i)
    return [np.asarray(v, dtype=np.intp) for v in by_text]


def _first_hit_ranks(
    queries: NDArray[Any],
    gallery: NDArray[Any],
    positives: Sequence[NDArray[np.intp]],
    query_ids: NDArray[np.intp],
) -> NDArray[np.int64]:
    """1-based rank of the first correct gallery item of each query (ties count against it)."""
    ranks = np.empty(query_ids.shape[0], dtype=np.int64)
    for start in range(0, query_ids.shape[0], _QUERY_BLOCK):
        ids = query_ids[start : start + _QUERY_BLOCK]
        scores = queries[ids] @ gallery.T
        correct = np.zeros(scores.shape, dtype=bool)
        cols = [positives[q] for q in ids]
        rows = np.repeat(np.arange(ids.shape[0]), [c.shape[0] for c in cols])
        correct[rows, np.concatenate(cols)] = True
        best = np.where(correct, scores, -np.inf).max(axis=1)
        ahead = ((scores >= best[:, None]) & ~correct).sum(axis=1)
        ranks[start : start + ids.shape[0]] = ahead + 1
    return ranks


def _median_rank(ranks: NDArray[np.int64]) -> float:
    return float(math.floor(np.median(ranks)))


def retrieval_metrics(
    image_emb: Any,
    text_emb: Any,
    image_to_texts: Sequence[Sequence[int]],
    ks: Iterable[int] = (1, 5, 10),
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, Estimate]:
    """Recall@k and median rank of image->text and text->image retrieval.

    Args:
        image_emb: ``(N_images, D)`` image embeddings (numpy or torch).
        text_emb: ``(N_texts, D)`` text embeddings, e.g. of :func:`pairs_from_texts`' strings.
        image_to_texts: for each image, the indices of its correct texts (several captions per
            image and one caption shared by several images are both allowed).
        ks: the ``k`` of each ``R@k``.
        n_boot: bootstrap resamples of the queries (0: no interval).
        seed: seed of the resampling (the same resamples for every metric of a direction).
        groups: one id per image (e.g. a lesion): whole groups are resampled. A text query
            belongs to the group of the first image it captions.

    Returns:
        ``image_to_text_R@k`` and ``text_to_image_R@k`` for each ``k``, then
        ``image_to_text_median_rank`` and ``text_to_image_median_rank``; each an
        :class:`Estimate` whose ``n`` is the number of queries of its direction.

    Raises:
        ValueError: mismatched shapes, non-finite embeddings, text indices out of range, an
            invalid ``k``, or no image with a caption.
    """
    images = as_matrix(image_emb, "image_emb")
    texts = as_matrix(text_emb, "text_emb")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"image_emb has {images.shape[1]} dimensions but text_emb has {texts.shape[1]}"
        )
    ks = sorted(set(ks))
    if not ks or any(
        isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 for k in ks
    ):
        raise ValueError(f"ks must be integers >= 1, got {ks}")
    image_positives = _positives(image_to_texts, images.shape[0], texts.shape[0])
    text_positives = _invert(image_positives, texts.shape[0])
    if groups is not None and len(groups) != images.shape[0]:
        raise ValueError(f"groups has {len(groups)} entries but there are {images.shape[0]} images")

    recalls: dict[str, Estimate] = {}
    medians: dict[str, Estimate] = {}
    for direction, queries, gallery, positives in (
        ("image_to_text", images, texts, image_positives),
        ("text_to_image", texts, images, text_positives),
    ):
        query_ids = np.flatnonzero([p.shape[0] > 0 for p in positives])
        if query_ids.shape[0] == 0:
            raise ValueError("no image has a caption: image_to_texts lists no text")
        ranks = _first_hit_ranks(queries, gallery, positives, query_ids)
        query_groups = None
        if groups is not None:
            owners = (
                query_ids if direction == "image_to_text" else [positives[q][0] for q in query_ids]
            )
            query_groups = [groups[i] for i in owners]
        for k in ks:
            name = f"{direction}_R@{k}"
            recalls[name] = bootstrap(
                lambda r, k=k: float(np.mean(r <= k)),
                ranks,
                n_boot=n_boot,
                seed=seed,
                groups=query_groups,
                name=name,
            )
        name = f"{direction}_median_rank"
        medians[name] = bootstrap(
            _median_rank, ranks, n_boot=n_boot, seed=seed, groups=query_groups, name=name
        )
    return {**recalls, **medians}
