"""Artifact latents and their suppression, and synthetic artifacts drawn onto real images.

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

**Synthetic artifacts** (:func:`add_artifact`; PIL only, deterministic for a seed, drawings scaled
to the image size) serve both the contrast and the measurement of shortcut removal. Those at an
edge or corner (ruler, watermark, sticker) are drawn inside the image's central square, the part
a CLIP-style centre crop keeps: a ruler along the left edge of a landscape HAM10000 image would be
cropped away before the model saw it. :func:`shortcut_split` draws an artifact on a share ``p`` of
one class's images and ``1 - p`` of the other's, so a classifier trained on them can learn the
artifact as a shortcut.

The artifact kinds, the concepts of the ``artifact`` group of the concept vocabulary they stand
for, and their drawing parameters are data: ``artifacts.yaml`` next to this module.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from dermfm.errors import KnowledgeError, SourceError
from dermfm.evaluate.retrieval import as_matrix
from dermfm.io import ImageInput, load_image
from dermfm.knowledge import load_concepts
from dermfm.knowledge._files import read_document, require, string_list

if TYPE_CHECKING:
    from dermfm.data.manifest import Record

__all__ = [
    "ArtifactKind",
    "ArtifactSuppressor",
    "LatentScore",
    "add_artifact",
    "artifact_kinds",
    "artifact_terms",
    "by_contrast",
    "by_names",
    "dark_corners",
    "draw_hair",
    "draw_ink",
    "draw_ruler",
    "draw_sticker",
    "gel_bubbles",
    "project_out",
    "shortcut_image",
    "shortcut_split",
    "watermark",
    "zero_latents",
]

#: Concept group of the concept vocabulary whose concepts the artifact kinds link to.
ARTIFACT_GROUP = "artifact"


# --------------------------------------------------------------------------- artifacts.yaml


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of image artifact (an entry of ``artifacts.yaml``).

    Attributes:
        id: the kind's key (``ruler``, ``ink``...), as :func:`add_artifact` takes it.
        name: a readable name.
        concepts: ids of the concepts (``artifact`` group of the concept vocabulary) it stands for.
        params: the parameters of its synthetic drawing.
        source: the file it comes from (named in errors about its parameters).
    """

    id: str
    name: str
    concepts: tuple[str, ...]
    params: Mapping[str, Any] = field(hash=False, compare=False)
    source: str = ""

    def _value(self, key: str) -> Any:
        if key not in self.params:
            raise KnowledgeError(self.source, f"artifact '{self.id}': missing draw.{key}")
        return self.params[key]

    def number(self, key: str) -> float:
        """A drawing parameter that is one number.

        Raises:
            KnowledgeError: missing or not a number (the message names the file).
        """
        value = self._value(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KnowledgeError(self.source, f"artifact '{self.id}': draw.{key} must be a number")
        return float(value)

    def span(self, key: str) -> tuple[float, float]:
        """A drawing parameter that is a ``[low, high]`` range.

        Raises:
            KnowledgeError: missing, not two numbers, or ``low > high``.
        """
        value = self._value(key)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or value[0] > value[1]
        ):
            raise KnowledgeError(
                self.source, f"artifact '{self.id}': draw.{key} must be [low, high] numbers"
            )
        return float(value[0]), float(value[1])

    def text(self, key: str) -> str:
        """A drawing parameter that is a string.

        Raises:
            KnowledgeError: missing or not a string.
        """
        value = self._value(key)
        if not isinstance(value, str):
            raise KnowledgeError(self.source, f"artifact '{self.id}': draw.{key} must be a string")
        return value

    def colour(self, key: str) -> tuple[int, int, int]:
        """A drawing parameter that is an RGB colour.

        Raises:
            KnowledgeError: missing or not three integers in ``[0, 255]``.
        """
        value = self._value(key)
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or not all(0 <= v <= 255 for v in value)
        ):
            raise KnowledgeError(
                self.source, f"artifact '{self.id}': draw.{key} must be [r, g, b] in 0-255"
            )
        return int(value[0]), int(value[1]), int(value[2])


def _packaged_kinds() -> Path:
    return Path(str(resources.files("dermfm.interpret") / "artifacts.yaml"))


@functools.lru_cache(maxsize=4)
def _load_kinds(path: str) -> dict[str, ArtifactKind]:
    source = Path(path)
    doc = read_document(source)
    entries = doc.get("artifacts")
    if not isinstance(entries, dict) or not entries:
        raise KnowledgeError(source, "expected a non-empty mapping under 'artifacts'")
    vocabulary = load_concepts()
    artifact_ids = {c.id for c in vocabulary if c.group == ARTIFACT_GROUP}
    claimed: dict[str, str] = {}
    kinds: dict[str, ArtifactKind] = {}
    for key, entry in entries.items():
        where = f"artifact '{key}'"
        if key not in _DRAWERS:
            raise KnowledgeError(
                source, f"{where}: no drawing for this kind (known: {sorted(_DRAWERS)})"
            )
        name = str(require(entry, "name", source, where))
        concepts = string_list(require(entry, "concepts", source, where), source, where)
        for cid in concepts:
            if cid not in artifact_ids:
                raise KnowledgeError(
                    source,
                    f"{where}: '{cid}' is not a concept of the '{ARTIFACT_GROUP}' group "
                    f"(have: {sorted(artifact_ids)})",
                )
            if claimed.setdefault(cid, key) != key:
                raise KnowledgeError(
                    source, f"concept '{cid}' is linked to artifacts '{claimed[cid]}' and '{key}'"
                )
        params = entry.get("draw")
        if not isinstance(params, dict):
            raise KnowledgeError(source, f"{where}: expected a 'draw' mapping of parameters")
        kinds[key] = ArtifactKind(key, name, concepts, dict(params), str(source))
    return kinds


def artifact_kinds(path: str | Path | None = None) -> dict[str, ArtifactKind]:
    """The artifact kinds of ``artifacts.yaml`` (packaged, or a file of the same schema), in
    file order.

    Raises:
        KnowledgeError: the file is missing or invalid, names a kind without a drawing, or links
            a concept that is not in the ``artifact`` group (or to two kinds).
    """
    return _load_kinds(str(Path(path).resolve()) if path else str(_packaged_kinds()))


def _kind(kind: str) -> ArtifactKind:
    kinds = artifact_kinds()
    if kind not in kinds:
        raise ValueError(f"unknown artifact kind {kind!r} (known: {', '.join(kinds)})")
    return kinds[kind]


def artifact_terms() -> dict[str, str]:
    """Casefolded words naming an artifact -> its kind: each kind's id and name, and the ids,
    names and synonyms of its concepts (the first kind wins a word shared by two)."""
    vocabulary = load_concepts()
    terms: dict[str, str] = {}
    for kind in artifact_kinds().values():
        words = [kind.id, kind.name]
        for cid in kind.concepts:
            concept = vocabulary[cid]
            words += [concept.id, concept.name, *concept.synonyms]
        for word in words:
            terms.setdefault(word.strip().casefold(), kind.id)
    return terms


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
    wanted = list(artifact_kinds()) if kinds is None else [_kind(k).id for k in kinds]
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


# --------------------------------------------------------------------------- synthetic artifacts


def _canvas(img: Image.Image) -> Image.Image:
    """An RGB copy to draw on."""
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def _finish(out: Image.Image, mode: str) -> Image.Image:
    return out if mode == "RGB" else out.convert(mode)


def _uniform(rng: np.random.Generator, span: tuple[float, float]) -> float:
    return float(rng.uniform(span[0], span[1]))


def _count(rng: np.random.Generator, span: tuple[float, float]) -> int:
    return int(rng.integers(round(span[0]), round(span[1]) + 1))


def _overlay(out: Image.Image, draw: Callable[[ImageDraw.ImageDraw], None]) -> Image.Image:
    """``out`` with translucent shapes composited on (``draw`` paints an RGBA layer)."""
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw(ImageDraw.Draw(layer))
    return Image.alpha_composite(out.convert("RGBA"), layer).convert("RGB")


def draw_hair(img: Image.Image, rng: np.random.Generator, n: int | None = None) -> Image.Image:
    """Thin dark curved strands (quadratic Bézier curves) across the image.

    Args:
        img: the image (any mode; the result has the same mode and size).
        rng: the random generator that places the strands.
        n: number of strands (default: drawn from ``strands`` in ``artifacts.yaml``).
    """
    kind = _kind("hair")
    out = _canvas(img)
    w, h = out.size
    diagonal = math.hypot(w, h)
    short = min(w, h)
    strands = _count(rng, kind.span("strands")) if n is None else n
    if strands < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    dark, light = np.array(kind.colour("dark")), np.array(kind.colour("light"))
    bend = kind.number("bend")
    draw = ImageDraw.Draw(out)
    t = np.linspace(0.0, 1.0, 48)[:, None]
    for _ in range(strands):
        start = rng.uniform((0, 0), (w, h))
        angle = rng.uniform(0, 2 * math.pi)
        length = _uniform(rng, kind.span("length")) * diagonal
        along = np.array([math.cos(angle), math.sin(angle)])
        end = start + length * along
        control = (start + end) / 2 + along[::-1] * (1, -1) * bend * length * rng.uniform(-1, 1)
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
        shade = dark + rng.uniform() * (light - dark)
        width = max(1, round(_uniform(rng, kind.span("width")) * short))
        draw.line(
            [tuple(p) for p in curve.tolist()],
            fill=tuple(int(c) for c in shade),
            width=width,
            joint="curve",
        )
    return _finish(out, img.mode)


def draw_ink(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A purple marker outline (ellipse) around the centre, where the lesion usually is, and a
    few marker dots beside it."""
    kind = _kind("ink")
    out = _canvas(img)
    w, h = out.size
    short = min(w, h)
    colour = kind.colour("colour")
    jitter = kind.number("jitter")
    cx = w / 2 + rng.uniform(-jitter, jitter) * w
    cy = h / 2 + rng.uniform(-jitter, jitter) * h
    rx = _uniform(rng, kind.span("radius")) * w
    ry = _uniform(rng, kind.span("radius")) * h
    width = max(1, round(_uniform(rng, kind.span("width")) * short))
    draw = ImageDraw.Draw(out)
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=colour, width=width)
    for _ in range(_count(rng, kind.span("dots"))):
        angle = rng.uniform(0, 2 * math.pi)
        reach = rng.uniform(1.05, 1.2)
        x, y = cx + reach * rx * math.cos(angle), cy + reach * ry * math.sin(angle)
        r = max(1.0, _uniform(rng, kind.span("dot_radius")) * short)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return _finish(out, img.mode)


def _edge_box(
    edge: str, along: tuple[float, float], across: tuple[float, float], w: int, h: int
) -> tuple[float, float, float, float]:
    """A rectangle given along an image edge (``along``) and inwards from it (``across``)."""
    (a0, a1), (c0, c1) = along, across
    if edge == "top":
        return a0, c0, a1, c1
    if edge == "bottom":
        return a0, h - 1 - c1, a1, h - 1 - c0
    if edge == "left":
        return c0, a0, c1, a1
    return w - 1 - c1, a0, w - 1 - c0, a1


def _kept_square(w: int, h: int) -> tuple[float, float, int]:
    """``(x0, y0, side)`` of the image's central square: the part a centre crop keeps."""
    side = min(w, h)
    return (w - side) / 2, (h - side) / 2, side


def draw_ruler(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A scale bar with tick marks (every fifth longer) along an image edge that a centre crop
    keeps (top or bottom of a landscape image, left or right of a portrait one; chosen at
    random), within the central square."""
    kind = _kind("ruler")
    out = _canvas(img)
    w, h = out.size
    x0, y0, side = _kept_square(w, h)
    edges = [
        e
        for e, kept in (("top", w >= h), ("bottom", w >= h), ("left", h >= w), ("right", h >= w))
        if kept
    ]
    edge = edges[int(rng.integers(len(edges)))]
    band = max(3.0, _uniform(rng, kind.span("band")) * side)
    length = _uniform(rng, kind.span("length")) * side
    start = (x0 if edge in ("top", "bottom") else y0) + rng.uniform(0, side - length)
    draw = ImageDraw.Draw(out)
    draw.rectangle(
        _edge_box(edge, (start, start + length), (0, band), w, h), fill=kind.colour("colour")
    )
    ticks = _count(rng, kind.span("ticks"))
    tick_width = max(1.0, band / 10)
    for i in range(ticks):
        centre = start + (i + 0.5) * length / ticks
        depth = band * (0.75 if i % 5 == 0 else 0.4)
        draw.rectangle(
            _edge_box(
                edge,
                (centre - tick_width / 2, centre + tick_width / 2),
                (band - depth, band - 1),
                w,
                h,
            ),
            fill=kind.colour("tick_colour"),
        )
    return _finish(out, img.mode)


def dark_corners(img: Image.Image) -> Image.Image:
    """A dermoscope vignette: the image fades to dark outside the round field of view (a circle
    about the centre, sized by the shorter side), so the corners of the image and of its central
    square turn (nearly) black. Deterministic."""
    kind = _kind("dark_corners")
    out = _canvas(img)
    w, h = out.size
    ys, xs = np.mgrid[0:h, 0:w]
    r = np.hypot(xs - (w - 1) / 2, ys - (h - 1) / 2) / (min(w, h) / 2)
    softness = max(kind.number("softness"), 1e-6)
    fade = np.clip((r - kind.number("radius")) / softness, 0.0, 1.0) * kind.number("darkness")
    pixels = np.asarray(out, dtype=np.float64) * (1.0 - fade[..., None])
    return _finish(Image.fromarray(np.round(pixels).astype(np.uint8), "RGB"), img.mode)


def gel_bubbles(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Air bubbles of immersion gel: translucent bright rings, each with a small highlight."""
    kind = _kind("gel_bubbles")
    out = _canvas(img)
    w, h = out.size
    short = min(w, h)
    alpha = round(255 * kind.number("opacity"))
    rim = (*kind.colour("rim"), alpha)
    bubbles = [
        (rng.uniform(0, w), rng.uniform(0, h), max(2.0, _uniform(rng, kind.span("radius")) * short))
        for _ in range(_count(rng, kind.span("bubbles")))
    ]

    def paint(draw: ImageDraw.ImageDraw) -> None:
        for x, y, r in bubbles:
            draw.ellipse((x - r, y - r, x + r, y + r), outline=rim, width=max(1, round(r / 5)))
            hx, hy, hr = x - r / 3, y - r / 3, max(1.0, r / 4)
            draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=rim)

    return _finish(_overlay(out, paint), img.mode)


def watermark(img: Image.Image, text: str | None = None) -> Image.Image:
    """Translucent text in the lower-left corner (of the central square, which a centre crop
    keeps), as on DermNet photos. Deterministic.

    Args:
        img: the image.
        text: the text (default: ``text`` in ``artifacts.yaml``).
    """
    kind = _kind("watermark")
    label = kind.text("text") if text is None else text
    if not label.strip():
        raise ValueError("watermark text is empty")
    out = _canvas(img)
    x0, y0, side = _kept_square(*out.size)
    font = ImageFont.load_default(size=max(8, round(kind.number("size") * side)))
    margin = kind.number("margin") * side
    fill = (*kind.colour("colour"), round(255 * kind.number("opacity")))

    def paint(draw: ImageDraw.ImageDraw) -> None:
        box = draw.textbbox((0, 0), label, font=font)
        position = (x0 + margin - box[0], y0 + side - margin - box[3])
        draw.text(position, label, font=font, fill=fill)

    return _finish(_overlay(out, paint), img.mode)


def draw_sticker(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An orange adhesive dot in a corner (of the central square), chosen at random."""
    kind = _kind("sticker")
    out = _canvas(img)
    x0, y0, side = _kept_square(*out.size)
    r = _uniform(rng, kind.span("radius")) * side
    offset = kind.number("margin") * side + r
    corner = int(rng.integers(4))
    x = x0 + (offset if corner in (0, 2) else side - 1 - offset)
    y = y0 + (offset if corner in (0, 1) else side - 1 - offset)
    ImageDraw.Draw(out).ellipse(
        (x - r, y - r, x + r, y + r),
        fill=kind.colour("colour"),
        outline=kind.colour("rim"),
        width=max(1, round(r / 6)),
    )
    return _finish(out, img.mode)


_DRAWERS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "ruler": draw_ruler,
    "ink": draw_ink,
    "hair": draw_hair,
    "dark_corners": lambda img, _rng: dark_corners(img),
    "gel_bubbles": gel_bubbles,
    "watermark": lambda img, _rng: watermark(img),
    "sticker": draw_sticker,
}


def add_artifact(image: ImageInput, kind: str, seed: int = 0) -> Image.Image:
    """``image`` with a synthetic artifact of ``kind`` drawn on (a new image; same size and mode).

    Args:
        image: a PIL image (its mode is kept) or a path (read as RGB by
            :func:`dermfm.io.load_image`).
        kind: a kind of ``artifacts.yaml``: ``ruler``, ``ink``, ``hair``, ``dark_corners``,
            ``gel_bubbles``, ``watermark`` or ``sticker``.
        seed: the drawing's seed (the same seed draws the same artifact; ``dark_corners`` and
            ``watermark`` do not depend on it).

    Raises:
        ValueError: an unknown kind.
        ImageError: a path that is not a readable image.
    """
    _kind(kind)
    img = image if isinstance(image, Image.Image) else load_image(image)
    return _DRAWERS[kind](img, np.random.default_rng(seed))


# --------------------------------------------------------------------------- biased splits


def shortcut_split(
    records: Sequence[Record],
    labels_pair: tuple[str, str],
    kind: str,
    p_biased: float = 0.9,
    seed: int = 0,
) -> dict[str, Any]:
    """Assign an artifact so that it correlates with the label of a binary task.

    Of the records labelled ``labels_pair[0]`` (class A) exactly ``round(p_biased * n_A)``, and
    of those labelled ``labels_pair[1]`` (class B) exactly ``round((1 - p_biased) * n_B)``, chosen
    at random, get the artifact; records with other labels are left out. ``p_biased=0.5`` makes
    the artifact independent of the label, ``0`` or ``1`` a perfect shortcut. Train on a biased
    split and test on a biased and a clean one (no artifact, or ``p_biased=0.5``) to measure how
    much a classifier relies on the artifact. Deterministic for ``seed``.

    Args:
        records: the records (their ``label`` is matched).
        labels_pair: the labels of class A and class B.
        kind: an artifact kind of ``artifacts.yaml``.
        p_biased: share of class A with the artifact (and of class B without).
        seed: seed of the assignment and of each image's drawing.

    Returns:
        A dict with ``records`` (the records of the two classes, in input order), ``y`` (int
        array: 0 for class A, 1 for class B), ``artifact`` (bool array: the image gets the
        artifact), ``seeds`` (int array: each image's drawing seed for :func:`add_artifact`),
        ``kind``, ``labels`` (the pair) and ``p_biased``. :func:`shortcut_image` renders an
        image of it.

    Raises:
        ValueError: an unknown kind, ``p_biased`` outside ``[0, 1]``, two equal labels, or a
            label with no record.
    """
    _kind(kind)
    if not 0.0 <= p_biased <= 1.0:
        raise ValueError(f"p_biased must be in [0, 1], got {p_biased!r}")
    a, b = labels_pair
    if a == b:
        raise ValueError(f"labels_pair needs two different labels, got {labels_pair!r}")
    kept = [r for r in records if r.label in (a, b)]
    y = np.array([0 if r.label == a else 1 for r in kept], dtype=np.int64)
    rng = np.random.default_rng(seed)
    artifact = np.zeros(len(kept), dtype=bool)
    for cls, share in ((0, p_biased), (1, 1.0 - p_biased)):
        rows = np.flatnonzero(y == cls)
        if rows.shape[0] == 0:
            raise ValueError(f"no record is labelled {labels_pair[cls]!r}")
        artifact[rng.permutation(rows)[: round(share * rows.shape[0])]] = True
    return {
        "records": kept,
        "y": y,
        "artifact": artifact,
        "seeds": rng.integers(0, 2**31 - 1, size=len(kept)),
        "kind": kind,
        "labels": (a, b),
        "p_biased": float(p_biased),
    }


def shortcut_image(split: Mapping[str, Any], index: int) -> Image.Image:
    """Image ``index`` of a :func:`shortcut_split`: the record's image (with its ``mask_box``
    applied, as in training and evaluation) and, where assigned, the artifact drawn on."""
    from dermfm.data.transforms import mask_region

    record: Record = split["records"][index]
    image = mask_region(load_image(record.image), record.mask_box)
    if not split["artifact"][index]:
        return image
    return add_artifact(image, split["kind"], int(split["seeds"][index]))
