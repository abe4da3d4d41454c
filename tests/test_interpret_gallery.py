"""Browsing latents: top-activating images, PNG grids on real images, the HTML gallery and
per-image explanations."""

from __future__ import annotations

import csv
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dermfm.data import Record
from dermfm.data.transforms import MASK_FILL
from dermfm.errors import SourceError
from dermfm.interpret.gallery import (
    TITLE_HEIGHT,
    explain_image,
    firing_frequency,
    format_explanation,
    latent_grid,
    top_activating,
    write_gallery,
)
from dermfm.interpret.naming import LatentNames, load_vocabulary, name_latents
from dermfm.io import load_image


@pytest.fixture(scope="module")
def ham_images(shared_data: Path) -> list[Path]:
    """40 real HAM10000 dermoscopy images (200x150 JPEG)."""
    folder = shared_data / "ham10000"
    with (folder / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [folder / r["file"] for r in rows[:: len(rows) // 40][:40]]


def _sparse_activations(n_images: int, n_latents: int, dead: set[int], seed: int) -> np.ndarray:
    """Non-negative activations, mostly zeros, with a few tied values and some dead latents."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.exponential(size=(n_images, n_latents)), 1)
    a = np.where(rng.random((n_images, n_latents)) < 0.3, values, 0.0)
    a[:, sorted(dead)] = 0.0
    return a


def _names(n_latents: int, seed: int) -> list[LatentNames]:
    rng = np.random.default_rng(seed)
    words = ["ruler", "hair", "<b>ink & pen</b>", "gel", "blue-grey", "scalp"]
    vocabulary = load_vocabulary(kinds=(), extra_words=words)
    return name_latents(rng.normal(size=(n_latents, 8)), rng.normal(size=(6, 8)), vocabulary)


class _Page(HTMLParser):
    """Collects section ids, image sources, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.meta: dict[str, str] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section":
            self.sections.append(found["id"] or "")
        elif tag == "img":
            self.images.append(found["src"] or "")
        elif tag == "meta" and found.get("name"):
            self.meta[found["name"] or ""] = found.get("content") or ""

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _grid_shape(n: int, thumb: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return cols * thumb, TITLE_HEIGHT + math.ceil(n / cols) * thumb


# --------------------------------------------------------------------------- top images


def test_top_activating_matches_a_loop_over_the_definition() -> None:
    a = _sparse_activations(50, 12, dead={2, 9}, seed=0)
    got = top_activating(torch.tensor(a, dtype=torch.float32), k=5)
    assert list(got) == [j for j in range(12) if j not in (2, 9)]
    for latent, top in got.items():
        firing = [(float(np.float32(a[r, latent])), r) for r in range(50) if a[r, latent] > 0]
        expected = sorted(firing, key=lambda vr: (-vr[0], vr[1]))[:5]
        assert top == [(r, v) for v, r in expected]
    np.testing.assert_allclose(firing_frequency(a), (a > 0).sum(axis=0) / 50)
    with pytest.raises(ValueError, match="non-negative"):
        top_activating(-a)
    with pytest.raises(ValueError, match="k must"):
        top_activating(a, k=0)


# --------------------------------------------------------------------------- grids


def test_latent_grid_on_real_images(ham_images: list[Path], tmp_path: Path) -> None:
    thumb = 64
    values = [float(v) for v in np.linspace(9.0, 0.5, 40)]
    path = latent_grid(ham_images, values, tmp_path / "g" / "grid.png", "latent 7", thumb=thumb)
    grid = Image.open(path)
    assert grid.format == "PNG"
    assert grid.size == _grid_shape(40, thumb) == (7 * thumb, TITLE_HEIGHT + 6 * thumb)
    pixels = np.asarray(grid.convert("RGB"), dtype=np.float64)
    for i, image in enumerate(ham_images):
        x, y = (i % 7) * thumb, TITLE_HEIGHT + (i // 7) * thumb
        # the top half of each tile (above its value label) is that image's centre crop
        reference = np.asarray(ImageOps.fit(Image.open(image).convert("RGB"), (thumb, thumb)))
        tile = pixels[y : y + thumb // 2, x : x + thumb]
        assert np.abs(tile - reference[: thumb // 2]).mean() < 12
    # the two slots after the 40th tile stay blank
    assert (pixels[TITLE_HEIGHT + 5 * thumb :, 5 * thumb :] == 255).all()

    sixteen = latent_grid(ham_images[:16], values[:16], tmp_path / "16.png", thumb=thumb)
    assert Image.open(sixteen).size == (4 * thumb, TITLE_HEIGHT + 4 * thumb)
    with pytest.raises(ValueError, match="values"):
        latent_grid(ham_images[:3], values[:2], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one"):
        latent_grid([], [], tmp_path / "x.png")


def test_latent_grid_blanks_record_masks_and_survives_unreadable_files(
    ham_images: list[Path], tmp_path: Path
) -> None:
    thumb = 64
    masked = Record(image=str(ham_images[0]), mask_box=(0.0, 0.0, 0.5, 0.5))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    path = latent_grid(
        [masked, load_image(ham_images[1]), broken], [3.0, 2.0, 1.0], tmp_path / "m.png", thumb=64
    )
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    # 200x150 is centre-cropped to 150x150 (x from 25), so the box covers the tile's top-left
    # quarter; the lesion side of the tile is unmasked
    top_left = pixels[TITLE_HEIGHT + 4 : TITLE_HEIGHT + 24, 4:24]
    assert np.abs(top_left - np.array(MASK_FILL)).max() <= 3
    assert np.abs(pixels[TITLE_HEIGHT + 40 : TITLE_HEIGHT + 44, 50:60] - MASK_FILL).max() > 3
    unreadable = pixels[TITLE_HEIGHT + thumb + 20 : TITLE_HEIGHT + thumb + 30, 40:60]
    assert (unreadable == 200).all()


# --------------------------------------------------------------------------- gallery


def test_write_gallery_lists_every_firing_latent(ham_images: list[Path], tmp_path: Path) -> None:
    a = _sparse_activations(40, 10, dead={3, 8}, seed=1)
    names = _names(10, seed=2)
    folder = tmp_path / "gallery"
    index = write_gallery(folder, a, ham_images, names, k=9, thumb=48)
    assert index == folder / "index.html"
    page = _parse(index)
    fired = (a > 0).sum(axis=0)
    firing = [j for j in range(10) if fired[j] > 0]
    expected_order = sorted(firing, key=lambda j: (-fired[j], j))
    assert page.sections == [f"latent-{j}" for j in expected_order]
    assert page.images == [f"latents/latent_{j:05d}.png" for j in expected_order]
    for j, src in zip(expected_order, page.images, strict=True):
        grid = Image.open(folder / src)
        assert grid.size == _grid_shape(min(9, int(fired[j])), 48)
    text = " ".join(page.text)
    for j in firing:
        assert f"fires on {fired[j]} of 40 images" in text
        for s in names[j].names:
            assert s.term in text
            assert f"{s.score:.3f}" in text
    assert "Never firing on these images: 3, 8." in text
    assert "width=device-width" in page.meta["viewport"]
    raw = index.read_text(encoding="utf-8")
    assert "<b>ink" not in raw
    assert "&lt;b&gt;ink &amp; pen&lt;/b&gt;" in raw
    assert "http" not in raw  # self-contained: relative links only


def test_write_gallery_refuses_a_non_empty_folder(ham_images: list[Path], tmp_path: Path) -> None:
    a = _sparse_activations(40, 10, dead=set(), seed=3)
    folder = tmp_path / "gallery"
    write_gallery(folder, a, ham_images, order="index", thumb=32)
    assert len(list((folder / "latents").glob("*.png"))) == 10
    with pytest.raises(SourceError, match="not empty") as info:
        write_gallery(folder, a, ham_images)
    assert str(folder) in str(info.value)

    index = write_gallery(folder, a, ham_images, max_latents=2, thumb=32, overwrite=True)
    page = _parse(index)
    fired = (a > 0).sum(axis=0)
    assert page.sections == [f"latent-{j}" for j in sorted(range(10), key=lambda j: -fired[j])[:2]]
    assert sorted(p.name for p in (folder / "latents").iterdir()) == sorted(
        Path(src).name for src in page.images
    )

    by_index = write_gallery(tmp_path / "by-index", a, ham_images, order="index", max_latents=3)
    assert _parse(by_index).sections == ["latent-0", "latent-1", "latent-2"]
    with pytest.raises(ValueError, match="rows"):
        write_gallery(tmp_path / "other", a, ham_images[:5])
    with pytest.raises(ValueError, match="order"):
        write_gallery(tmp_path / "other", a, ham_images, order="random")


# --------------------------------------------------------------------------- explanations


def test_explain_image_orders_active_latents_and_names_them() -> None:
    names = _names(6, seed=4)
    row = torch.tensor([0.0, 2.5, 0.0, 0.7, 4.0, 0.7])
    items = explain_image(row, names, top=3)
    assert [(i.latent, i.value) for i in items] == [(4, 4.0), (1, 2.5), (3, pytest.approx(0.7))]
    assert items[0].names == tuple(s.term for s in names[4].names)
    assert [i.latent for i in explain_image(row.numpy())] == [4, 1, 3, 5]
    assert explain_image(np.array([0.0, 1.0]))[0].names == ()

    plain = format_explanation(items, "lesion.jpg")
    lines = plain.splitlines()
    assert lines[0] == "Active latents of lesion.jpg:"
    assert lines[1].split()[:2] == ["4", "4.000"]
    assert names[4].best.term in lines[1]
    markdown = format_explanation(items, markdown=True)
    assert "| latent | activation | names |" in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| ")]) == 1 + len(items)
    assert format_explanation([]) == "Active latents: none\n"
    with pytest.raises(ValueError, match="1-D"):
        explain_image(np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        explain_image(np.array([1.0, -1.0]))
