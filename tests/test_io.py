"""Image loading: formats, orientation, modes, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermfm.errors import ImageError
from dermfm.io import find_images, load_image


@pytest.mark.parametrize("suffix", ["jpg", "png", "webp", "tif", "bmp"])
def test_common_formats_load_as_rgb(image_files: dict[str, Path], suffix: str) -> None:
    img = load_image(image_files[suffix])
    assert img.mode == "RGB"
    assert img.size == (120, 90)


def test_heic_loads_through_pillow_heif(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "photo.heic"
    Image.new("RGB", (40, 30), (200, 100, 50)).save(path, format="HEIF")
    img = load_image(path)
    assert img.size == (40, 30)
    assert np.allclose(np.asarray(img)[15, 20], (200, 100, 50), atol=12)


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10] = 255  # white stripe on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)  # width and height swapped
    top = np.asarray(img)[:5].mean()
    bottom = np.asarray(img)[-5:].mean()
    assert top > 200 and bottom < 50  # the stripe is now at the top


def test_modes_convert_to_8bit_rgb(tmp_path: Path) -> None:
    gray16 = np.full((10, 10), 65535 // 2, dtype=np.uint16)
    cases = {
        "gray.png": Image.new("L", (10, 10), 128),
        "gray16.png": Image.fromarray(gray16),
        "rgba.png": Image.new("RGBA", (10, 10), (255, 0, 0, 0)),
        "cmyk.jpg": Image.new("CMYK", (10, 10), (0, 255, 255, 0)),
        "palette.png": Image.new("P", (10, 10), 3),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
    loaded = {name: np.asarray(load_image(tmp_path / name)) for name in cases}
    for name, arr in loaded.items():
        assert arr.dtype == np.uint8 and arr.shape == (10, 10, 3), name
    assert abs(int(loaded["gray16.png"][0, 0, 0]) - 127) <= 1  # scaled, not clipped to 255
    assert loaded["rgba.png"][0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert loaded["cmyk.jpg"][0, 0, 0] > 200 and loaded["cmyk.jpg"][0, 0, 1] < 60  # red


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("empty", "empty file"),
        ("text", "not a recognised image format"),
        ("truncated", "truncated"),
        ("missing", "file not found"),
    ],
)
def test_bad_inputs_raise_one_line_error_naming_the_file(
    image_files: dict[str, Path], key: str, reason: str
) -> None:
    with pytest.raises(ImageError) as info:
        load_image(image_files[key])
    message = str(info.value)
    assert str(image_files[key]) in message
    assert reason in message
    assert "\n" not in message


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_pixel_limit_refuses_decompression_bombs(image_files: dict[str, Path]) -> None:
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(image_files["png"], max_pixels=1000)
    assert load_image(image_files["png"], max_pixels=120 * 90).size == (120, 90)


def test_large_jpeg_draft_decoding_keeps_enough_resolution(tmp_path: Path) -> None:
    path = tmp_path / "camera.jpg"
    Image.new("RGB", (3000, 2000), (120, 80, 60)).save(path, quality=85)
    img = load_image(path, draft_size=448)
    assert min(img.size) >= 448 and img.size[0] < 3000
    assert load_image(path).size == (3000, 2000)


def test_find_images_skips_non_images_and_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "a.PNG")
    Image.new("RGB", (4, 4)).save(tmp_path / ".hidden.png")
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in find_images(tmp_path)] == ["a.PNG"]


def test_real_images_of_every_source_load(real_images: list[tuple[Path, str]]) -> None:
    for path, _ in real_images:
        img = load_image(path)
        assert img.mode == "RGB" and min(img.size) >= 100
