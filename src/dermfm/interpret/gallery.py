"""Browsing latents: their top-activating images, PNG grids, an HTML gallery, and per image its
active latents with their names.

Everything works on an ``(n_images, n_latents)`` matrix of non-negative activations (an SAE's
``encode`` output, as a numpy array or torch tensor) whose rows follow a list of images (paths,
PIL images or :class:`~dermfm.data.Record` objects, whose ``mask_box`` is blanked as in training).
A latent *fires* on an image when its activation there is above zero.
"""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont, ImageOps

from dermfm.errors import ImageError, SourceError
from dermfm.interpret.naming import LatentNames
from dermfm.io import ImageInput, load_image, source_name
from dermfm.progress import progress

if TYPE_CHECKING:
    from dermfm.data import Record

#: Height in pixels of the title band above the tiles of a grid.
TITLE_HEIGHT = 20

#: Orders of the latents in a gallery.
ORDERS = ("frequency", "index")

_BACKGROUND = (255, 255, 255)
_UNREADABLE = (200, 200, 200)


def _activations(activations: Any, dtype: type[np.floating] = np.float32) -> NDArray[Any]:
    """The activation matrix as numpy, checked to be 2-D, finite and non-negative."""
    from dermfm.evaluate.retrieval import as_matrix

    a = as_matrix(activations, "activations", dtype)
    if (a < 0).any():
        raise ValueError("activations must be non-negative (an SAE's encode output)")
    return a


def firing_frequency(activations: Any) -> NDArray[np.float64]:
    """``(n_latents,)`` fraction of images on which each latent fires (activation > 0)."""
    return (_activations(activations) > 0).mean(axis=0)


def top_activating(activations: Any, k: int = 16) -> dict[int, list[tuple[int, float]]]:
    """Each firing latent's ``k`` most activating images.

    Args:
        activations: ``(n_images, n_latents)`` non-negative activations.
        k: images kept per latent (fewer when a latent fires on fewer images).

    Returns:
        ``{latent: [(row, value), ...]}`` for every latent that fires at least once, in latent
        order; rows sorted by decreasing value (ties by row), only rows where it fires.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    a = _activations(activations)
    top: dict[int, list[tuple[int, float]]] = {}
    for latent in np.flatnonzero((a > 0).any(axis=0)):
        column = a[:, latent]
        rows = np.flatnonzero(column > 0)
        best = rows[np.argsort(-column[rows], kind="stable")[:k]]
        top[int(latent)] = [(int(r), float(column[r])) for r in best]
    return top


def _tile(image: ImageInput | Record, thumb: int) -> Image.Image:
    """A ``thumb`` x ``thumb`` centre crop of an image (a grey tile if it cannot be read)."""
    from dermfm.data import Record, mask_region

    try:
        if isinstance(image, Record):
            picture = mask_region(load_image(image.image, draft_size=thumb), image.mask_box)
        else:
            picture = load_image(image, draft_size=thumb)
    except ImageError:
        tile = Image.new("RGB", (thumb, thumb), _UNREADABLE)
        ImageDraw.Draw(tile).text((4, 4), "unreadable", fill=(0, 0, 0))
        return tile
    return ImageOps.fit(picture, (thumb, thumb))


def latent_grid(
    images: Sequence[ImageInput | Record],
    values: Sequence[float],
    path: str | Path,
    title: str = "",
    *,
    thumb: int = 96,
    columns: int | None = None,
) -> Path:
    """Draw images as a PNG grid of square tiles, each with its activation written on it.

    The grid has ``columns`` tiles per row (default ``ceil(sqrt(n))``), rows as needed, and a
    :data:`TITLE_HEIGHT`-pixel title band on top: ``columns * thumb`` by
    ``TITLE_HEIGHT + rows * thumb`` pixels. Tiles are centre crops; a record's ``mask_box`` is
    blanked; an unreadable image becomes a grey tile marked "unreadable".

    Args:
        images: paths, PIL images or records, in display order.
        values: one activation per image, written on its tile.
        path: the PNG file to write (parent folders are created).
        title: text of the title band.
        thumb: tile side in pixels (at least 16).
        columns: tiles per row.

    Returns:
        ``path``.
    """
    n = len(images)
    if n == 0:
        raise ValueError("latent_grid needs at least one image")
    if len(values) != n:
        raise ValueError(f"got {n} images but {len(values)} values")
    if thumb < 16:
        raise ValueError(f"thumb must be at least 16 pixels, got {thumb}")
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = Image.new("RGB", (cols * thumb, TITLE_HEIGHT + rows * thumb), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), title, fill=(0, 0, 0), font=ImageFont.load_default(size=13))
    font = ImageFont.load_default(size=max(10, thumb // 8))
    for i, (image, value) in enumerate(zip(images, values, strict=True)):
        x, y = (i % cols) * thumb, TITLE_HEIGHT + (i // cols) * thumb
        canvas.paste(_tile(image, thumb), (x, y))
        label = f"{value:.3g}"
        _, _, right, bottom = draw.textbbox((0, 0), label, font=font)
        height = bottom + 4
        draw.rectangle((x, y + thumb - height, x + right + 6, y + thumb - 1), fill=(0, 0, 0))
        draw.text((x + 3, y + thumb - height + 2), label, fill=(255, 255, 255), font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out


_STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:auto;padding:.5em}
section{border-top:1px solid #ddd;padding:.5em 0}h2{font-size:1.1em;margin:.2em 0}
.meta{color:#555;font-size:.9em;margin:.2em 0}ol{margin:.2em 0;padding-left:1.4em}
small{color:#666}img{max-width:100%;height:auto;display:block;margin:.3em 0}"""


def _section(
    latent: int,
    grid: str,
    fired: int,
    n_images: int,
    peak: float,
    names: LatentNames | None,
) -> str:
    """The HTML of one latent: id, firing frequency, names with scores, grid image."""
    lines = [
        f'<section id="latent-{latent}"><h2>Latent {latent}</h2>',
        f'<p class="meta">fires on {fired} of {n_images} images ({fired / n_images:.1%}); '
        f"highest activation {peak:.3g}</p>",
    ]
    if names is not None:
        items = "".join(
            f"<li>{html.escape(s.term)} <small>{html.escape(s.kind)} · {s.score:.3f}</small></li>"
            for s in names.names
        )
        lines.append(f'<ol class="names">{items}</ol>')
    src = html.escape(grid)
    lines.append(f'<img src="{src}" alt="top images of latent {latent}" loading="lazy">')
    return "".join(lines) + "</section>"


def write_gallery(
    folder: str | Path,
    activations: Any,
    images: Sequence[ImageInput | Record],
    names: Sequence[LatentNames] | None = None,
    *,
    k: int = 16,
    max_latents: int | None = None,
    order: str = "frequency",
    thumb: int = 96,
    title: str = "dermfm latent gallery",
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> Path:
    """Write a browsable gallery of latents: ``folder/latents/*.png`` and ``folder/index.html``.

    Every firing latent (up to ``max_latents``, in ``order``) gets a grid of its ``k`` top
    activating images (:func:`latent_grid`) and a section of ``index.html``: its id, how often it
    fires, its names with kinds and scores (when ``names`` is given) and its grid. Latents that
    never fire are listed at the end. The page is self-contained (relative links, escaped text,
    no scripts) and fits a phone-width screen.

    Args:
        folder: output folder; refused if it exists and is not empty, unless ``overwrite``.
        activations: ``(n_images, n_latents)`` non-negative activations.
        images: the images of the rows (paths, PIL images or records).
        names: :func:`~dermfm.interpret.naming.name_latents` output (matched by ``latent``).
        k: images per grid.
        max_latents: show at most this many latents.
        order: ``frequency`` (most often firing first) or ``index`` (latent id).
        thumb: tile side in pixels.
        title: the page's title.
        overwrite: replace the gallery in a non-empty folder (``folder/latents`` is emptied;
            other files are left alone).
        show_progress: progress bar (``None``: only on a terminal).

    Returns:
        The path of ``index.html``.

    Raises:
        SourceError: ``folder`` is not empty and ``overwrite`` is false, or is a file.
    """
    from dermfm.cache import atomic_write_bytes

    a = _activations(activations)
    n_images, n_latents = a.shape
    if len(images) != n_images:
        raise ValueError(f"activations have {n_images} rows but {len(images)} images were given")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if max_latents is not None and max_latents < 1:
        raise ValueError(f"max_latents must be at least 1, got {max_latents}")
    by_latent = {n.latent: n for n in names or ()}
    if any(not 0 <= latent < n_latents for latent in by_latent):
        raise ValueError(f"names refer to latents outside 0..{n_latents - 1}")
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise SourceError(out, "is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SourceError(
                out, "folder is not empty; pass overwrite=True (--overwrite) to replace its gallery"
            )
        shutil.rmtree(out / "latents", ignore_errors=True)
    top = top_activating(a, k)
    fired = (a > 0).sum(axis=0)
    shown = list(top)
    if order == "frequency":
        shown.sort(key=lambda latent: (-fired[latent], latent))
    shown = shown[:max_latents]
    sections = []
    with progress("Drawing latent grids", len(shown), show_progress) as advance:
        for latent in shown:
            rows = top[latent]
            grid = f"latents/latent_{latent:05d}.png"
            latent_grid(
                [images[r] for r, _ in rows],
                [v for _, v in rows],
                out / grid,
                f"latent {latent}",
                thumb=thumb,
            )
            peak = rows[0][1]
            sections.append(
                _section(latent, grid, int(fired[latent]), n_images, peak, by_latent.get(latent))
            )
            advance()
    dead = [str(i) for i in range(n_latents) if fired[i] == 0]
    summary = (
        f"{n_images} images, {n_latents} latents, {len(top)} firing; showing {len(shown)} "
        f"({'most often firing first' if order == 'frequency' else 'by latent id'}), each with "
        f"its top {k} images and the activation on each tile."
    )
    footer = f"<p>Never firing on these images: {', '.join(dead)}.</p>" if dead else ""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>\n"
        + "\n".join(sections)
        + f"\n{footer}</body></html>\n"
    )
    index = out / "index.html"
    atomic_write_bytes(index, page.encode("utf-8"))
    return index


class ActiveLatent(NamedTuple):
    """A latent active on one image: its id, activation and names (best first)."""

    latent: int
    value: float
    names: tuple[str, ...]


def explain_image(
    activations_row: Any, names: Sequence[LatentNames] | None = None, top: int = 10
) -> list[ActiveLatent]:
    """The latents active on one image, strongest first, with their names.

    Args:
        activations_row: ``(n_latents,)`` non-negative activations of one image.
        names: :func:`~dermfm.interpret.naming.name_latents` output (matched by ``latent``);
            latents without names get an empty tuple.
        top: at most this many latents.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    if hasattr(activations_row, "detach"):  # a torch tensor
        activations_row = activations_row.detach().float().cpu().numpy()
    row = np.asarray(activations_row, dtype=np.float64)
    if row.ndim != 1:
        raise ValueError(f"activations_row must be 1-D (n_latents,), got shape {row.shape}")
    row = _activations(row[None, :], np.float64)[0]
    by_latent = {n.latent: n for n in names or ()}
    active = np.flatnonzero(row > 0)
    ranked = active[np.argsort(-row[active], kind="stable")[:top]]
    return [
        ActiveLatent(
            int(i),
            float(row[i]),
            tuple(s.term for s in by_latent[i].names) if i in by_latent else (),
        )
        for i in ranked
    ]


def format_explanation(
    items: Sequence[ActiveLatent], image: ImageInput | None = None, *, markdown: bool = False
) -> str:
    """:func:`explain_image` output as plain text (one line per latent) or a Markdown table."""
    heading = f"Active latents of {source_name(image)}" if image is not None else "Active latents"
    if not items:
        return f"{heading}: none\n"
    if markdown:
        from dermfm.evaluate.report import Block, render_markdown

        rows = [("latent", "activation", "names")]
        rows += [(str(i.latent), f"{i.value:.3f}", ", ".join(i.names)) for i in items]
        return render_markdown([Block("heading", heading, 3), Block("table", rows=tuple(rows))])
    width = max(len(str(i.latent)) for i in items)
    lines = [f"{heading}:"]
    lines += [
        f"  {i.latent:>{width}}  {i.value:8.3f}  {', '.join(i.names) or '(unnamed)'}" for i in items
    ]
    return "\n".join(lines) + "\n"
