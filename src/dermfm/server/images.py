"""Uploaded images without their metadata, stored by content.

:func:`strip_metadata` decodes an upload (validated, upright, RGB, within the pixel budget read
from its header) and encodes only its pixels: no EXIF (GPS position, camera, dates), ICC profile,
XMP, comments or text chunks survive. :class:`ImageStore` keeps the results content-addressed
(``<root>/ab/abcdef....jpg``, named by the SHA-256 of the stored bytes), so cases sharing an
image share one file; its folders are ``0700`` and its files ``0600``.
"""

from __future__ import annotations

import hashlib
import io
import string
from pathlib import Path

from PIL import Image

from dermfm.cache import atomic_write_bytes
from dermfm.io import DEFAULT_MAX_PIXELS, decode_image_bytes
from dermfm.io.dicom import is_dicom_bytes
from dermfm.server.private import private_dir

#: Lossy input formats (as PIL names them), re-encoded as JPEG; any other format becomes PNG.
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "HEIF", "AVIF", "WEBP"})

#: JPEG quality of re-encoded lossy images (full-resolution colour: no chroma subsampling).
JPEG_QUALITY = 95

#: File extensions of stored images.
EXTENSIONS = (".jpg", ".png")


def strip_metadata(
    data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int | None = None
) -> tuple[bytes, str]:
    """Re-encode an uploaded image from its pixels alone.

    Args:
        data: the uploaded file's bytes.
        name: the upload's name, used in error messages.
        max_pixels: refuse larger images, from the header, before decoding
            (decompression-bomb guard).
        frame: which frame (from 0) of a multi-frame DICOM upload.

    Returns:
        The new file's bytes and its extension (``.jpg`` for JPEG, HEIC, AVIF and WebP inputs,
        ``.png`` otherwise: DICOM too, whose tags, patient's name and ids included, are never
        stored). EXIF orientation is applied to the pixels before the EXIF is dropped, so the
        image stays upright.

    Raises:
        ImageError: naming ``name``: empty, not an image, truncated, too many pixels.
    """
    # the decoded image carries pixels only (dermfm.io drops every metadata block)
    pixels = decode_image_bytes(data, name, max_pixels=max_pixels, frame=frame)
    if is_dicom_bytes(data):
        lossy = False
    else:
        with Image.open(io.BytesIO(data)) as original:  # the header only: which format it was
            lossy = original.format in LOSSY_FORMATS
    out = io.BytesIO()
    if lossy:
        pixels.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
        return out.getvalue(), ".jpg"
    pixels.save(out, format="PNG")
    return out.getvalue(), ".png"


class ImageStore:
    """Metadata-free images under ``root``, named by the SHA-256 of their bytes."""

    def __init__(self, root: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.root = private_dir(root)
        self.max_pixels = max_pixels

    def _stem(self, sha: str) -> Path:
        if len(sha) != 64 or not set(sha) <= set(string.hexdigits.lower()):
            raise ValueError(f"{sha!r} is not a SHA-256 hex digest")
        return self.root / sha[:2] / sha

    def put(self, data: bytes, name: str, frame: int | None = None) -> str:
        """Store an upload without its metadata (see :func:`strip_metadata`; ``frame``: which
        frame of a multi-frame DICOM upload); returns the SHA-256 of the stored bytes. Storing
        the same image again writes nothing.

        Raises:
            ImageError: the upload is not a usable image (the message names ``name``).
        """
        stripped, extension = strip_metadata(data, name, max_pixels=self.max_pixels, frame=frame)
        sha = hashlib.sha256(stripped).hexdigest()
        target = self._stem(sha).with_suffix(extension)
        if not target.is_file():
            private_dir(target.parent)
            # durable: the database commit that refers to it must not outlive the file
            atomic_write_bytes(target, stripped, durable=True)
        return sha

    def path(self, sha: str) -> Path | None:
        """The stored file of ``sha``, or ``None`` when there is none.

        Raises:
            ValueError: ``sha`` is not a SHA-256 hex digest.
        """
        stem = self._stem(sha)
        for extension in EXTENSIONS:
            file = stem.with_suffix(extension)
            if file.is_file():
                return file
        return None

    def sha_of(self, file: str | Path) -> str | None:
        """The SHA-256 under which ``file`` is stored, when it is a file of this store."""
        file = Path(file)
        sha = file.stem
        try:
            stored = self.path(sha)
        except ValueError:
            return None
        return sha if stored is not None and stored.resolve() == file.resolve() else None

    def delete(self, sha: str) -> bool:
        """Remove the stored file of ``sha``; returns whether there was one."""
        file = self.path(sha)
        if file is None:
            return False
        file.unlink(missing_ok=True)
        return True


__all__ = ["EXTENSIONS", "JPEG_QUALITY", "LOSSY_FORMATS", "ImageStore", "strip_metadata"]
