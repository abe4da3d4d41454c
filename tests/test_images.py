"""The drawn test photos (``tests/images.py``) are what the headline tests say they are: the same
pixels for the same seed, the file formats and sizes named, camera EXIF with GPS where claimed,
and photos the assistant accepts as skin (else the server tests would only see refusals)."""

from __future__ import annotations

from pathlib import Path

import images as drawn
import numpy as np
import pytest
from PIL import Image

from dermfm.io import load_image


def test_the_same_seed_draws_the_same_photo() -> None:
    first = drawn.skin_photo(200, 150, kind="mel", seed=4, ruler=True, dermoscopy=True)
    again = drawn.skin_photo(200, 150, kind="mel", seed=4, ruler=True, dermoscopy=True)
    other = drawn.skin_photo(200, 150, kind="mel", seed=5, ruler=True, dermoscopy=True)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert drawn.encode(first, "JPEG") == drawn.encode(again, "JPEG")


def test_the_set_has_the_formats_sizes_and_metadata_it_names(
    generated_images: list[tuple[Path, str]], phone_jpeg: Path
) -> None:
    formats = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".heic": "HEIF"}
    drawn.reference_open(generated_images[0][0])  # registers the HEIC opener
    for (path, label), spec in zip(generated_images, drawn.PHOTO_SET, strict=False):
        name, kind, size, _tone, _ruler, _frame, gps = spec
        assert (path.name, label) == (name, kind)
        with Image.open(path) as image:
            assert image.format == formats[path.suffix] and image.size == size
            position = image.getexif().get_ifd(drawn.GPS_IFD)
            assert (position.get(2) == drawn.GPS_LATITUDE) is gps, name
    assert {p.suffix for p, _ in generated_images} >= {".jpg", ".png", ".webp"}
    assert set(drawn.LESIONS) == {label for _, label in generated_images}
    if drawn.heic_available():
        heic = next(p for p, _ in generated_images if p.suffix == ".heic")
        assert Image.open(heic).getexif().get_ifd(drawn.GPS_IFD)[4] == drawn.GPS_LONGITUDE
    with Image.open(phone_jpeg) as phone:
        assert (phone.format, phone.size) == ("JPEG", (4000, 3000))
        exif = phone.getexif()
        assert (exif[drawn.MAKE], exif[drawn.MODEL]) == drawn.CAMERA
        assert exif.get_ifd(drawn.GPS_IFD)[2] == drawn.GPS_LATITUDE


def test_a_ruler_is_drawn_along_the_bottom() -> None:
    plain = np.asarray(drawn.skin_photo(300, 200, kind="nv", seed=1), dtype=float)
    ruled = np.asarray(drawn.skin_photo(300, 200, kind="nv", seed=1, ruler=True), dtype=float)
    changed = np.abs(ruled - plain).sum(axis=-1) > 30
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.min() > 150  # only the bottom strip
    ticks = (ruled[rows.min() + 1, :, :].sum(axis=-1) < 150).sum()
    assert ticks >= 50  # about 110 millimetre ticks across


def test_the_melanoma_upload_passes_the_assistants_photo_checks(melanoma_photo: Path) -> None:
    """The server tests' upload is accepted as a usable photo of skin (quality and the packaged
    skin reference), so they exercise a complete consultation."""
    from dermfm.assistant.quality import SkinReference, check_quality

    quality = check_quality(load_image(melanoma_photo), SkinReference.load())
    assert quality.usable, [p.message for p in quality.problems]
    assert quality.relevance_checked


@pytest.mark.parametrize("kind", sorted(drawn.LESIONS))
def test_every_lesion_kind_darkens_or_reddens_the_middle(kind: str) -> None:
    pixels = np.asarray(drawn.skin_photo(240, 180, kind=kind, seed=2), dtype=float)
    bare = np.asarray(drawn.skin_photo(240, 180, kind=None, seed=2), dtype=float)
    middle = (slice(80, 100), slice(110, 130))
    assert np.abs(pixels[middle] - bare[middle]).mean() > 12
    corner = (slice(0, 15), slice(0, 15))
    assert np.abs(pixels[corner] - bare[corner]).mean() < 5
