"""Validated image loading.

Every image goes through :func:`load_image` (files) or :func:`decode_image_bytes` (bytes), which
honour EXIF orientation, convert any mode (grayscale, RGBA, palette, CMYK, 16-bit, float) to 8-bit
RGB, refuse decompression bombs by a pixel budget, and turn every failure into an
:class:`~dermfm.errors.ImageError` naming the file.

The pixel budget is checked from the image header, before any pixel is allocated. Decoding then
holds at most :data:`PEAK_BYTES_PER_PIXEL` bytes per pixel at once (the decoded source and its RGB
conversion; Pillow keeps RGB pixels in 4 bytes; 8 bytes for RGB, RGBA and greyscale photos), so
one decode within the default budget of :data:`DEFAULT_MAX_PIXELS` (40 megapixels) costs at most
480 MB (320 MB for a photo), and a smaller budget proportionally less (``dermfm serve`` uses 30
megapixels: 360 MB at most, 240 MB for a photo).

DICOM files (recognised by their ``DICM`` preamble) are decoded by :mod:`dermfm.io.dicom` with
the same budget and errors; a multi-frame file is one input per frame.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from dermfm.errors import ImageError
from dermfm.io.dicom import (
    DICOM_SUFFIXES,
    RASTER_SUFFIXES,
    DicomFrame,
    decode_dicom,
    expand_frames,
    frame_digest,
    is_dicom,
    is_dicom_bytes,
)

#: Largest image decoded by default: 40 megapixels (e.g. 7746 x 5164; a 12 MP phone photo is
#: 4032 x 3024).
DEFAULT_MAX_PIXELS = 40_000_000

#: Most bytes per pixel of the budget that a decode holds at once: the source (at most 4 bytes per
#: pixel in Pillow) and its 4-byte RGB conversion, plus a 4-byte RGBA step for palette images with
#: transparency or a float32 scratch array for 16/32-bit sources.
PEAK_BYTES_PER_PIXEL = 12

#: File suffixes treated as images when a folder is scanned (DICOM included).
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES

#: What the public API accepts as an image: a path, one frame of a multi-frame DICOM file, or
#: an already opened PIL image.
ImageInput = str | Path | Image.Image | DicomFrame

_HEIF_READY: bool | None = None


def _enable_heif() -> bool:
    """Register the HEIC/HEIF decoder of ``pillow-heif`` once, if it is installed."""
    global _HEIF_READY
    if _HEIF_READY is None:
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
            _HEIF_READY = True
        except ImportError:
            _HEIF_READY = False
    return _HEIF_READY


def source_name(image: ImageInput) -> str:
    """A printable name for an input: its path, or ``<PIL image WxH>`` for in-memory images."""
    if isinstance(image, Image.Image):
        return f"<PIL image {image.width}x{image.height}>"
    return str(image)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels are composited onto white.

    Returns ``img`` itself when it is RGB already, else one new image (no other full-size copy
    is made, so the peak is the source plus its RGB version).
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr *= 255.0 / hi
        arr += 0.5
        np.clip(arr, 0, 255, out=arr)
        grey = Image.fromarray(arr.astype(np.uint8), mode="L")
        del arr
        return grey.convert("RGB")
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("PA", "RGBa", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img, mask=img)  # its alpha band as the mask: composited over white
        return white
    return img.convert("RGB")


def load_image(
    image: ImageInput,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Open, validate and convert one image to an upright 8-bit RGB :class:`PIL.Image.Image`.

    Args:
        image: a file path (any image format, or DICOM: :mod:`dermfm.io.dicom`), one frame of
            a multi-frame DICOM file (:class:`~dermfm.io.dicom.DicomFrame`), or a PIL image
            (converted, not re-validated for size).
        max_pixels: refuse images with more pixels than this, read from the header before any
            pixel is decoded (decompression-bomb guard; see the module doc for the memory it
            bounds).
        draft_size: if given, JPEGs are decoded at the smallest DCT scale whose shorter side is
            still at least this many pixels (much faster for camera-sized photos; the model's
            preprocessing resizes further anyway).

    Raises:
        ImageError: with the path and a one-line reason (missing, empty, not an image, truncated,
            too many pixels, unreadable).
    """
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image) or image)
    frame = image.index if isinstance(image, DicomFrame) else None
    where = str(image)
    path = image.path if isinstance(image, DicomFrame) else Path(image)
    if not path.exists():
        raise ImageError(path, "file not found")
    if path.is_dir():
        raise ImageError(path, "is a directory, not an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    if path.suffix.lower() in (".heic", ".heif") and not _enable_heif():
        raise ImageError(path, "HEIC/HEIF needs the pillow-heif package (pip install pillow-heif)")
    if frame is not None or is_dicom(path):
        return decode_dicom(path, where, max_pixels=max_pixels, frame=frame)
    _enable_heif()
    return _decode(path, str(path), max_pixels, draft_size)


def _decode(
    source: Path | BinaryIO, where: str, max_pixels: int, draft_size: int | None
) -> Image.Image:
    """Decode a file or a binary stream with every check; errors name ``where``.

    The size is checked from the header; the pixels are then decoded once, turned upright in
    place and converted to RGB, so at most the source and its RGB version are held at once. The
    result carries pixels only: its ``info`` (EXIF, ICC profile, comments, text chunks) is empty.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(
                        where,
                        f"{width}x{height} = {width * height:,} pixels exceeds the limit of "
                        f"{max_pixels:,} (decompression-bomb guard; raise max_pixels to allow it)",
                    )
                if draft_size and img.format == "JPEG":
                    scale = min(width, height) / draft_size
                    if scale >= 2:
                        img.draft("RGB", (int(width / scale), int(height / scale)))
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
                rgb = _to_rgb(img)
                # detached from the file (the source's pixels are copied only when they are RGB
                # already; else the conversion is the new image), and pixels only
                rgb = rgb.copy() if rgb is img else rgb
                rgb.info = {}
                return rgb
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(where, "not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(where, f"rejected as a decompression bomb ({exc})") from exc
    except PermissionError as exc:
        raise ImageError(where, "permission denied") from exc
    except OSError as exc:
        message = str(exc)
        if any(m in message.lower() for m in ("truncated", "broken data stream")):
            raise ImageError(where, "truncated or corrupt image data") from exc
        raise ImageError(where, f"cannot decode image ({message})") from exc
    except (ValueError, SyntaxError) as exc:
        raise ImageError(where, f"corrupt image ({exc})") from exc


def decode_image_bytes(
    data: bytes, where: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int | None = None
) -> Image.Image:
    """:func:`load_image` for encoded bytes (e.g. an upload or a tar member), with the same pixel
    budget checked from the header; errors name ``where``. ``frame``: which frame (from 0) of
    a multi-frame DICOM object."""
    if not data:
        raise ImageError(where, "empty file (0 bytes)")
    if is_dicom_bytes(data):
        return decode_dicom(io.BytesIO(data), where, max_pixels=max_pixels, frame=frame)
    _enable_heif()
    return _decode(io.BytesIO(data), where, max_pixels, None)


def find_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """All files under ``root`` with an image suffix, sorted; hidden files are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(root, "not a directory")
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path | DicomFrame]:
    """Expand command-line inputs: folders become the images inside them, files stay, and a
    multi-frame DICOM file becomes its frames (one input each)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        out.extend(find_images(p) if p.is_dir() else [p])
    return expand_frames(out)


ImageFile.LOAD_TRUNCATED_IMAGES = False


def image_digest(path: str | Path | DicomFrame) -> str:
    """SHA-256 hex digest of an image file's bytes: its identity for caches, indexes and audits
    (a frame of a multi-frame DICOM file: the file's digest with the frame number).

    Raises:
        ImageError: the file is missing or cannot be read.
    """
    if isinstance(path, DicomFrame):
        return frame_digest(path, image_digest(path.path))
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as exc:
        raise ImageError(path, "file not found") from exc
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from exc
    return digest.hexdigest()
