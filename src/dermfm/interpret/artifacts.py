"""Artifact latents and their suppression.

A classifier trained on dermatology images can learn an artifact (a ruler, purple ink, hair,
dark dermoscope corners, gel bubbles, a watermark, a sticker) instead of the lesion when the
artifact correlates with the label. A sparse autoencoder (SAE) on the model's image embeddings
gives such an artifact its own latents; switching them off removes the shortcut without
retraining the model:

* for a concept-bottleneck classifier, :func:`zero_latents` zeroes their activations;
* for zero-shot and linear classifiers on embeddings, :func:`project_out` removes the span of
  their decoder directions from the embeddings.

:class:`ArtifactSuppressor` holds the artifact latents and their directions, does both, and is
saved as JSON next to an SAE.

**Finding artifact latents.** Two ways, both returning, per artifact kind, the latent ids with
scores (:class:`LatentScore`, best first):

* :func:`by_contrast` (recommended): encode the same images with and without a drawn artifact
  (:func:`add_artifact`) and keep the latents whose activation rises most (standardised mean
  difference). It needs no text tower and works for weak models whose text embeddings name
  latents poorly.
* :func:`by_names`: the latents whose best-matching vocabulary term (latent naming) is an
  artifact term. Only as good as the model's image-text alignment.

**Synthetic artifacts** and the artifact kinds of ``artifacts.yaml`` are in
:mod:`~dermfm.interpret.synthetic`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from dermfm.errors import SourceError
from dermfm.evaluate.retrieval import as_matrix
from dermfm.interpret.synthetic import (
    artifact_kind,
    artifact_kinds,
    artifact_terms,
)

__all__ = [
    "ArtifactSuppressor",
    "LatentScore",
    "by_contrast",
    "by_names",
    "project_out",
    "zero_latents",
]


# --------------------------------------------------------------------------- suppression


def _host(x: Any) -> Any:
    """A torch tensor as a float64 numpy array (full precision); anything else unchanged."""
    return x.detach().double().cpu().numpy() if hasattr(x, "detach") else x


def _span_basis(directions: Any, dim: int) -> NDArray[np.float64]:
    """Orthonormal rows spanning ``directions`` (``(m, d)`` or one ``(d,)`` vector), from an SVD:
    singular values below the numerical-rank tolerance (as ``numpy.linalg.matrix_rank``) are
    dropped, so duplicate, dependent or zero directions add nothing."""
    raw = np.asarray(_host(directions), dtype=np.float64)
    d = as_matrix(raw.reshape(1, -1) if raw.ndim == 1 else raw, "directions", np.float64)
    if d.shape[1] != dim:
        raise ValueError(f"directions have {d.shape[1]} dimensions but the embeddings have {dim}")
    _, s, vt = np.linalg.svd(d, full_matrices=False)
    tol = s[0] * max(d.shape) * np.finfo(np.float64).eps if s.size else 0.0
    return vt[s > tol]


def project_out(embeddings: Any, directions: Any, *, normalize: bool = True) -> Any:
    """Remove the span of ``directions`` from ``embeddings``.

    Each row ``x`` becomes ``x - Q Q^T x``, where the rows of ``Q^T`` are an orthonormal basis of
    the directions' span (SVD, rank-revealing): the exact orthogonal projection onto the
    complement of the span, also for non-orthogonal, duplicate or linearly dependent directions.
    With ``normalize`` the rows are then re-normalised to unit length, like the model's own
    embeddings (a row lying entirely in the span stays zero).

    Args:
        embeddings: ``(n, d)`` numpy array or torch tensor.
        directions: ``(m, d)`` directions (need not be unit-norm or orthogonal), or one ``(d,)``.
        normalize: re-normalise the projected rows.

    Returns:
        The same type as ``embeddings``: a numpy array of its floating dtype (float64 for other
        dtypes), or a torch tensor of its dtype on its device.

    Raises:
        ValueError: a shape mismatch or NaN / infinite values.
    """
    tensor = embeddings if hasattr(embeddings, "detach") else None
    x = as_matrix(_host(embeddings), "embeddings", np.float64)
    basis = _span_basis(directions, x.shape[1])
    out = x - (x @ basis.T) @ basis
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 1e-12)
    if tensor is not None:
        import torch

        return torch.from_numpy(out).to(device=tensor.device, dtype=tensor.dtype)
    dtype = np.asarray(embeddings).dtype
    return out.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64, copy=False)


def _latent_ids(latents: Any, n_latents: int | None = None) -> list[int]:
    ids = [int(i) for i in np.asarray(list(latents), dtype=np.int64).reshape(-1)]
    bad = [i for i in ids if i < 0 or (n_latents is not None and i >= n_latents)]
    if bad:
        limit = f" (there are {n_latents} latents)" if n_latents is not None else ""
        raise ValueError(f"latent ids out of range: {bad}{limit}")
    return ids


def zero_latents(activations: Any, latents: Any) -> Any:
    """A copy of ``(n, n_latents)`` activations with the columns ``latents`` set to zero.

    Works on numpy arrays and torch tensors (same type, dtype and device back).

    Raises:
        ValueError: ``activations`` is not 2-D or a latent id is out of range.
    """
    if len(activations.shape) != 2:
        raise ValueError(f"activations must be 2-D (rows, latents), got shape {activations.shape}")
    ids = _latent_ids(latents, activations.shape[1])
    if hasattr(activations, "detach"):
        out = activations.detach().clone()
    else:
        out = np.array(activations, copy=True)
    out[:, ids] = 0
    return out


@dataclass(frozen=True, eq=False)
class ArtifactSuppressor:
    """The artifact latents of an SAE and their decoder directions, switched off together.

    Attributes:
        directions: ``(m, d)`` decoder directions of the latents in the embedding space.
        latents: the ``m`` latent ids.
        artifacts: the artifact kind of each latent.
    """

    directions: NDArray[np.float64]
    latents: tuple[int, ...]
    artifacts: tuple[str, ...]

    def __post_init__(self) -> None:
        directions = as_matrix(_host(self.directions), "directions", np.float64)
        object.__setattr__(self, "directions", directions)
        object.__setattr__(self, "latents", tuple(_latent_ids(self.latents)))
        object.__setattr__(self, "artifacts", tuple(str(a) for a in self.artifacts))
        m = self.directions.shape[0]
        if len(self.latents) != m or len(self.artifacts) != m:
            raise ValueError(
                f"{m} directions need as many latents and artifacts, got {len(self.latents)} "
                f"latents and {len(self.artifacts)} artifacts"
            )
        if len(set(self.latents)) != m:
            raise ValueError(f"latent ids repeat: {list(self.latents)}")

    @classmethod
    def from_latents(
        cls, found: Mapping[str, Sequence[LatentScore | int]], directions: Any
    ) -> ArtifactSuppressor:
        """The suppressor of the latents found per artifact kind (:func:`by_contrast` or
        :func:`by_names` output, or plain latent ids), taking their rows of ``directions``
        (all ``(n_latents, d)`` decoder directions, e.g. ``SparseAutoencoder.directions``).
        A latent found for several kinds is kept once, with the first kind.

        Raises:
            ValueError: no latent was found, or a latent id is out of range.
        """
        kinds: dict[int, str] = {}
        for kind, items in found.items():
            for item in items:
                kinds.setdefault(int(item[0] if isinstance(item, tuple) else item), kind)
        if not kinds:
            raise ValueError("no artifact latent was found: nothing to suppress")
        rows = np.asarray(_host(directions), dtype=np.float64)
        ids = _latent_ids(kinds, rows.shape[0])
        return cls(rows[ids], tuple(ids), tuple(kinds[i] for i in ids))

    def transform(self, embeddings: Any, *, normalize: bool = True) -> Any:
        """Embeddings with the artifact directions projected out (:func:`project_out`)."""
        return project_out(embeddings, self.directions, normalize=normalize)

    def zero_activations(self, activations: Any) -> Any:
        """SAE activations with the artifact latents zeroed (:func:`zero_latents`)."""
        return zero_latents(activations, self.latents)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping: ``latents``, ``artifacts`` and ``directions`` as lists."""
        return {
            "latents": list(self.latents),
            "artifacts": list(self.artifacts),
            "directions": self.directions.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactSuppressor:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: a key is missing or the lists do not fit together.
        """
        missing = [k for k in ("latents", "artifacts", "directions") if k not in data]
        if missing:
            raise ValueError(f"artifact suppressor data lacks {missing}")
        return cls(
            np.asarray(data["directions"], dtype=np.float64),
            tuple(data["latents"]),
            tuple(data["artifacts"]),
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; returns the path."""
        from dermfm.cache import atomic_write_bytes

        target = Path(path)
        atomic_write_bytes(target, json.dumps(self.to_dict(), indent=1).encode("utf-8"))
        return target

    @classmethod
    def load(cls, path: str | Path) -> ArtifactSuppressor:
        """Read a suppressor saved by :meth:`save`.

        Raises:
            SourceError: the file is missing, not JSON or not a suppressor (names the file).
        """
        source = Path(path)
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SourceError(source, "artifact suppressor file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(source, f"cannot read artifact suppressor ({exc})") from exc
        if not isinstance(data, dict):
            raise SourceError(source, "expected a JSON object")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise SourceError(source, str(exc)) from exc


# --------------------------------------------------------------------------- finding latents


class LatentScore(NamedTuple):
    """A latent found for an artifact and the score it was found with."""

    latent: int
    score: float


def _ranked(scores: Mapping[int, float], top: int | None) -> list[LatentScore]:
    order = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [LatentScore(int(i), float(s)) for i, s in order[:top]]


def by_contrast(
    acts_with: Mapping[str, Any],
    acts_without: Any,
    *,
    top: int = 3,
    min_effect: float = 0.8,
) -> dict[str, list[LatentScore]]:
    """Artifact latents from paired activations of the same images with and without an artifact.

    For each latent the effect of the artifact is the standardised mean difference (Cohen's d)
    ``(mean(with) - mean(without)) / sqrt((var(with) + var(without)) / 2)``: how far the
    artifact raises the latent's activation, in units of its spread. The denominator is floored
    at ``1e-6`` of the largest absolute activation, so a latent that is constant in both sets
    (e.g. never fires without the artifact and fires equally with it) gets a large finite score
    instead of a division by zero. Latents whose effect reaches ``min_effect`` (0.8 is a "large"
    effect in Cohen's convention) are kept, the ``top`` largest first.

    Args:
        acts_with: artifact kind -> ``(n, n_latents)`` activations of the images with that
            artifact drawn on (row ``i`` is the same image as row ``i`` of ``acts_without``).
        acts_without: ``(n, n_latents)`` activations of the clean images.
        top: latents kept per kind.
        min_effect: smallest effect size kept.

    Returns:
        Every kind of ``acts_with`` -> its latents with their effect sizes, best first (empty
        when none reaches ``min_effect``).

    Raises:
        ValueError: fewer than two images, shapes that differ, NaN values, or ``top < 1``.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    without = as_matrix(acts_without, "acts_without", np.float64)
    if without.shape[0] < 2:
        raise ValueError("by_contrast needs at least two images")
    found: dict[str, list[LatentScore]] = {}
    for kind, acts in acts_with.items():
        with_ = as_matrix(acts, f"acts_with[{kind!r}]", np.float64)
        if with_.shape != without.shape:
            raise ValueError(
                f"acts_with[{kind!r}] has shape {with_.shape} but acts_without {without.shape}: "
                "they must be the same images and latents"
            )
        pooled = np.sqrt((with_.var(axis=0, ddof=1) + without.var(axis=0, ddof=1)) / 2.0)
        floor = 1e-6 * max(float(np.abs(with_).max()), float(np.abs(without).max()), 1e-30)
        effect = (with_.mean(axis=0) - without.mean(axis=0)) / np.maximum(pooled, floor)
        kept = np.flatnonzero(effect >= min_effect)
        found[kind] = _ranked({int(j): float(effect[j]) for j in kept}, top)
    return found


def by_names(
    scores: Any,
    kinds: Sequence[str] | None = None,
    *,
    terms: Sequence[str] | None = None,
    min_score: float = 0.0,
    top: int | None = None,
) -> dict[str, list[LatentScore]]:
    """Artifact latents from latent-naming scores: the latents whose best-matching term names
    an artifact (:func:`artifact_terms`: a kind's id or name, or an id, name or synonym of its
    concepts; case-insensitive) with a score of at least ``min_score``.

    Args:
        scores: either a ``(n_latents, n_terms)`` score matrix (e.g. cosine similarities of
            decoder directions and term embeddings) with the column names in ``terms``, or a
            mapping latent id -> ``(term, score)`` pairs (e.g. from latent naming:
            ``{n.latent: [(s.source_id or s.term, s.score) for s in n.names] for n in names}``).
        kinds: artifact kinds to look for (default: all of ``artifacts.yaml``).
        terms: the matrix's column names (only with a matrix).
        min_score: smallest best-term score kept.
        top: latents kept per kind (default: all).

    Returns:
        Every kind of ``kinds`` -> its latents with their best-term scores, best first.

    Raises:
        ValueError: an unknown kind, ``terms`` missing or of the wrong length for a matrix, or
            a latent without any term.
    """
    wanted = list(artifact_kinds()) if kinds is None else [artifact_kind(k).id for k in kinds]
    words = artifact_terms()
    if isinstance(scores, Mapping):
        if terms is not None:
            raise ValueError("terms= goes with a score matrix, not a mapping")
        best: dict[int, tuple[str, float]] = {}
        for latent, pairs in scores.items():
            if not pairs:
                raise ValueError(f"latent {latent} has no named terms")
            term, score = max(pairs, key=lambda p: float(p[1]))
            best[int(latent)] = (str(term), float(score))
    else:
        matrix = as_matrix(scores, "scores", np.float64)
        if terms is None or len(terms) != matrix.shape[1]:
            raise ValueError(
                f"a score matrix needs terms= naming its {matrix.shape[1]} columns, got "
                f"{'none' if terms is None else len(terms)}"
            )
        columns = np.argmax(matrix, axis=1)
        best = {i: (str(terms[j]), float(matrix[i, j])) for i, j in enumerate(columns)}
    found: dict[str, dict[int, float]] = {kind: {} for kind in wanted}
    for latent, (term, score) in best.items():
        kind = words.get(term.strip().casefold())
        if kind in found and score >= min_score:
            found[kind][latent] = score
    return {kind: _ranked(found[kind], top) for kind in wanted}
