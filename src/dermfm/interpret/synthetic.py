"""Synthetic artifacts drawn onto real images, and the artifact kinds they stand for.

The artifact kinds, the concepts of the ``artifact`` group of the concept vocabulary they stand
for, and their drawing parameters are data: ``artifacts.yaml`` next to this module
(:func:`artifact_kinds`).

:func:`add_artifact` (PIL only, deterministic for a seed, drawings scaled to the image size)
serves both the contrast that finds artifact latents
(:func:`dermfm.interpret.artifacts.by_contrast`) and the measurement of shortcut removal. Those
at an edge or corner (ruler, watermark, sticker) are drawn inside the image's central square,
the part a CLIP-style centre crop keeps: a ruler along the left edge of a landscape HAM10000
image would be cropped away before the model saw it.
:func:`shortcut_split` draws an artifact on a share ``p`` of one class's images and ``1 - p`` of
the other's, so a classifier trained on them can learn the artifact as a shortcut.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dermfm.errors import KnowledgeError
from dermfm.io import ImageInput, load_image
from dermfm.knowledge import load_concepts
from dermfm.knowledge.files import read_document, require, string_list

if TYPE_CHECKING:
    from dermfm.data.manifest import Record

__all__ = [
    "ARTIFACT_GROUP",
    "ArtifactKind",
    "add_artifact",
    "artifact_kind",
    "artifact_kinds",
    "artifact_terms",
    "dark_corners",
    "draw_hair",
    "draw_ink",
    "draw_ruler",
    "draw_sticker",
    "gel_bubbles",
    "shortcut_image",
    "shortcut_split",
    "watermark",
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


def artifact_kind(kind: str) -> ArtifactKind:
    """The kind ``kind`` of ``artifacts.yaml``.

    Raises:
        ValueError: an unknown kind.
    """
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
    kind = artifact_kind("hair")
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
    kind = artifact_kind("ink")
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
    kind = artifact_kind("ruler")
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
    kind = artifact_kind("dark_corners")
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
    kind = artifact_kind("gel_bubbles")
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
    kind = artifact_kind("watermark")
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
    kind = artifact_kind("sticker")
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
    artifact_kind(kind)
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
    artifact_kind(kind)
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
