"""DICOM input: pixels and patient context from DICOM files (pydicom and its pixel plugins).

DICOM is another way in through :func:`dermfm.io.load_image`: a DICOM file (recognised by its
``DICM`` preamble, whatever its name) is decoded here into the same upright 8-bit RGB image as a
JPEG, with the same pixel budget (read from the header before any pixel is decoded) and the same
one-line :class:`~dermfm.errors.ImageError` naming the file when it cannot be used (no pixel
data, a transfer syntax no installed plugin decodes, truncated data).

- **Transfer syntaxes**: uncompressed (implicit and explicit VR), deflated, RLE Lossless, JPEG
  baseline and extended, JPEG lossless, JPEG-LS and JPEG 2000, through the ``pylibjpeg``
  plugins (``pylibjpeg-libjpeg``, ``pylibjpeg-openjpeg``, ``pylibjpeg-rle``) or Pillow.
- **Colour**: ``RGB``, ``YBR_FULL``, ``YBR_FULL_422``, ``YBR_ICT``/``YBR_RCT`` are converted to
  RGB; ``PALETTE COLOR`` through its lookup table; ``MONOCHROME1``/``2`` as grey (``MONOCHROME1``
  inverted); more than 8 bits are scaled by ``Bits Stored``.
- **Frames**: a multi-frame object is one input per frame (:class:`DicomFrame`;
  :func:`expand_frames` turns a path into its frames).
- **Context** (:func:`read_dicom_context`): age, sex, anatomic region, modality from the SOP
  class, and the UIDs that link a result back to its study. Nothing else is read; names, ids and
  dates never leave the file, and no message or log line of this module quotes a tag's value.

The SOP classes and body-part terms are data (``dicom.yaml``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image

from dermfm.errors import ImageError

if TYPE_CHECKING:
    from pydicom import Dataset

#: File suffixes always treated as DICOM.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})

#: Suffixes of the other image formats: never DICOM. A file with any other suffix, or none
#: (PACS exports are often named by UID), is DICOM when it carries the ``DICM`` preamble.
RASTER_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".heic", ".heif"}
)

_PREAMBLE = 128


@dataclass(frozen=True)
class DicomFrame:
    """One frame of a multi-frame DICOM file: ``index`` counts from 0, ``frames`` is the count.

    Prints as ``<path>#frame=<index + 1>``, the name results carry."""

    path: Path
    index: int
    frames: int

    def __str__(self) -> str:
        return f"{self.path}#frame={self.index + 1}"


@dataclass(frozen=True)
class DicomContext:
    """What dermfm uses of a DICOM object besides its pixels (never names, ids or dates).

    ``age``, ``sex`` and ``site`` are as the file states them (``site`` a body-site word, mapped
    to the assistant's sites by :func:`dermfm.assistant.patient.details_from_fields`);
    ``modality`` is ``dermoscopy``/``clinical`` from the SOP class, ``None`` when the class does
    not say. The UIDs link results back to the study (DICOMweb, FHIR).
    """

    sop_class_uid: str | None
    sop_class: str | None
    modality: str | None
    age: int | None
    sex: str | None
    site: str | None
    frames: int
    study_uid: str | None
    series_uid: str | None
    instance_uid: str | None
    transfer_syntax: str | None

    def patient_fields(self) -> dict[str, Any]:
        """The patient-detail fields this object states (``age``, ``sex``, ``site``,
        ``modality``), for :func:`~dermfm.assistant.patient.details_from_fields`."""
        found = {"age": self.age, "sex": self.sex, "site": self.site, "modality": self.modality}
        return {k: v for k, v in found.items() if v is not None}


@cache
def _settings() -> dict[str, Any]:
    from dermfm.knowledge.files import read_document

    return read_document(Path(__file__).with_name("dicom.yaml"))


def sop_class_name(uid: str | None) -> str | None:
    """The name of a SOP class UID (from ``dicom.yaml``, else pydicom's dictionary)."""
    if not uid:
        return None
    known = _settings()["sop_classes"].get(str(uid))
    if known:
        return str(known["name"])
    from pydicom.uid import UID

    name = UID(str(uid)).name
    return None if name == str(uid) else name


def photo_sop_classes() -> frozenset[str]:
    """The SOP classes dermfm consults (``dicom.yaml``): photographs and other colour images;
    anything else in a study (reports, PDFs, other modalities) is left alone."""
    return frozenset(_settings()["sop_classes"])


def is_dicom_bytes(data: bytes) -> bool:
    """Whether bytes start like a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    return data[_PREAMBLE : _PREAMBLE + 4] == b"DICM"


def is_dicom(path: str | Path) -> bool:
    """Whether a file is DICOM: a DICOM suffix; else, unless it has another image format's
    suffix, the ``DICM`` preamble (an unreadable file: no)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in RASTER_SUFFIXES:
        return False
    try:
        with path.open("rb") as fh:
            return is_dicom_bytes(fh.read(_PREAMBLE + 4))
    except OSError:
        return False


_QUIET_LOCK = threading.Lock()
_quiet_state: dict[str, Any] = {"depth": 0}


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom's value warnings and log lines quote tag values (a malformed name, a date):
    while any thread reads a DICOM file, pydicom does not validate values on reading and its
    logger is silent (reference-counted, so concurrent reads never restore it early)."""
    from pydicom import config

    logger = logging.getLogger("pydicom")
    with _QUIET_LOCK:
        if _quiet_state["depth"] == 0:
            _quiet_state["saved"] = (
                logger.level,
                logger.propagate,
                config.settings.reading_validation_mode,
            )
            logger.setLevel(logging.CRITICAL + 1)
            logger.propagate = False
            config.settings.reading_validation_mode = config.IGNORE
        _quiet_state["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_state["depth"] -= 1
            if _quiet_state["depth"] == 0:
                level, propagate, mode = _quiet_state.pop("saved")
                logger.setLevel(level)
                logger.propagate = propagate
                config.settings.reading_validation_mode = mode


def _read(source: Path | BinaryIO, where: str, *, header_only: bool = False) -> Dataset:
    """The dataset of a file or stream; every failure an :class:`ImageError` naming ``where``."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        with _quiet():
            return dcmread(source, stop_before_pixels=header_only)
    except InvalidDicomError as exc:
        raise ImageError(where, "not a valid DICOM file (no DICM preamble)") from exc
    except PermissionError as exc:
        raise ImageError(where, "permission denied") from exc
    except FileNotFoundError as exc:
        raise ImageError(where, "file not found") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(where, "truncated or corrupt DICOM file") from exc


def frame_count(ds: Dataset) -> int:
    """Number of frames of a dataset (1 when it does not say)."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(uid) if uid else None


def _syntax_label(uid: str | None) -> str:
    if not uid:
        return "unknown transfer syntax"
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def _to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    scaled = arr.astype(np.float32)
    scaled *= 255.0 / float(max(1, (1 << bits) - 1))
    scaled += 0.5
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _rgb(ds: Dataset, arr: np.ndarray) -> Image.Image:
    """An RGB image from one decoded frame (colour already RGB, palette or monochrome)."""
    from pydicom.pixels import apply_color_lut

    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if int(ds.get("PixelRepresentation") or 0) == 1:  # signed: shift to unsigned
        arr = arr.astype(np.int32) + (1 << (bits - 1))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        entry_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return Image.fromarray(_to_uint8(arr, entry_bits), mode="RGB")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return Image.fromarray(_to_uint8(arr, bits), mode="RGB")
    if arr.ndim == 2:
        grey = _to_uint8(arr, bits)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        return Image.fromarray(grey, mode="L").convert("RGB")
    raise ValueError(f"pixel array of shape {arr.shape}")


def decode_dicom(
    source: Path | BinaryIO, where: str, *, max_pixels: int, frame: int | None = None
) -> Image.Image:
    """One frame of a DICOM file or stream as an 8-bit RGB image.

    Args:
        source: a path or a binary stream.
        where: the name errors carry (a path, an upload's name).
        max_pixels: refuse frames with more pixels than this, from the header (Rows x Columns)
            before any pixel is decoded.
        frame: which frame (from 0); ``None`` for a single-frame object (a multi-frame one is
            then refused, naming its frame count: every frame is one input).

    Raises:
        ImageError: naming ``where``: not DICOM, truncated, no pixel data, an unsupported
            transfer syntax or photometric interpretation, too many pixels, a frame it lacks.
    """
    with _quiet():  # values are converted when first read: warnings may quote them
        return _decode(source, where, max_pixels, frame)


def _decode(source: Path | BinaryIO, where: str, max_pixels: int, frame: int | None) -> Image.Image:
    from pydicom.pixels import pixel_array

    ds = _read(source, where)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(where, "DICOM object has no pixel data (not an image)")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows * columns > max_pixels:
        raise ImageError(
            where,
            f"{columns}x{rows} = {rows * columns:,} pixels exceeds the limit of "
            f"{max_pixels:,} (decompression-bomb guard; raise max_pixels to allow it)",
        )
    frames = frame_count(ds)
    if frame is None and frames > 1:
        raise ImageError(
            where, f"DICOM object has {frames} frames: each frame is one input (expand_frames)"
        )
    index = frame or 0
    if not 0 <= index < frames:
        raise ImageError(where, f"no frame {index + 1} (the object has {frames})")
    syntax = _transfer_syntax(ds)
    try:
        arr = pixel_array(ds, index=index if frames > 1 else None)
        image = _rgb(ds, arr)
    except (NotImplementedError, RuntimeError) as exc:
        message = str(exc).lower()
        if (
            "unable to decode" in message
            or "no pixel data decoders" in message
            or ("not supported" in message)
        ):
            raise ImageError(
                where, f"unsupported DICOM transfer syntax {_syntax_label(syntax)}"
            ) from exc
        raise ImageError(
            where, f"cannot decode DICOM pixel data ({_syntax_label(syntax)})"
        ) from exc
    except (ValueError, EOFError, OSError, KeyError, IndexError, AttributeError) as exc:
        raise ImageError(where, "truncated or corrupt DICOM pixel data") from exc
    return image


def read_dicom_context(source: str | Path | DicomFrame | BinaryIO, where: str = "") -> DicomContext:
    """The :class:`DicomContext` of a DICOM file or stream (its header only).

    Raises:
        ImageError: not a readable DICOM file (naming ``where`` or the path).
    """
    if isinstance(source, DicomFrame):
        source = source.path
    if isinstance(source, str | Path):
        where = where or str(source)
        source = Path(source)
    with _quiet():  # values are converted when first read: warnings may quote them
        return _context(_read(source, where or "<dicom>", header_only=True))


def _context(ds: Dataset) -> DicomContext:
    settings = _settings()
    sop_uid = str(ds.get("SOPClassUID") or "") or None
    entry = settings["sop_classes"].get(sop_uid or "") or {}
    return DicomContext(
        sop_class_uid=sop_uid,
        sop_class=sop_class_name(sop_uid),
        modality=entry.get("modality"),
        age=_age(ds),
        sex={"F": "female", "M": "male"}.get(str(ds.get("PatientSex") or "").upper()),
        site=_site(ds, settings["body_parts"]),
        frames=frame_count(ds),
        study_uid=str(ds.get("StudyInstanceUID") or "") or None,
        series_uid=str(ds.get("SeriesInstanceUID") or "") or None,
        instance_uid=str(ds.get("SOPInstanceUID") or "") or None,
        transfer_syntax=_transfer_syntax(ds),
    )


def _age(ds: Dataset) -> int | None:
    """Whole years from Patient's Age (``045Y``; months, weeks and days give 0)."""
    value = str(ds.get("PatientAge") or "").strip().upper()
    if len(value) < 2 or not value[:-1].isdigit():
        return None
    number, unit = int(value[:-1]), value[-1]
    years = {"Y": number, "M": number // 12, "W": number // 52, "D": number // 365}.get(unit)
    return years if years is not None and 0 <= years <= 120 else None


def _site(ds: Dataset, body_parts: dict[str, str]) -> str | None:
    """The body site: Anatomic Region Sequence's code meaning, else Body Part Examined."""
    for item in ds.get("AnatomicRegionSequence") or []:
        meaning = str(item.get("CodeMeaning") or "").strip()
        if meaning:
            return meaning
    part = str(ds.get("BodyPartExamined") or "").strip().upper()
    if not part:
        return None
    return body_parts.get(part, part.lower().replace("_", " "))


def expand_frames(paths: Iterable[str | Path | DicomFrame]) -> list[Path | DicomFrame]:
    """Paths with each multi-frame DICOM file replaced by its frames (one input per frame);
    anything else, unreadable files included (they fail later with their own error), as it is."""
    out: list[Path | DicomFrame] = []
    for item in paths:
        if isinstance(item, DicomFrame):
            out.append(item)
            continue
        path = Path(item)
        frames = 1
        if path.is_file() and is_dicom(path):
            try:
                with _quiet():
                    frames = frame_count(_read(path, str(path), header_only=True))
            except ImageError:
                frames = 1
        if frames > 1:
            out.extend(DicomFrame(path, i, frames) for i in range(frames))
        else:
            out.append(path)
    return out


def frame_digest(frame: DicomFrame, file_digest: str) -> str:
    """The identity of one frame: the file's SHA-256 with the frame number."""
    return hashlib.sha256(f"{file_digest}#frame={frame.index + 1}".encode()).hexdigest()


def dicom_frames_in_bytes(data: bytes, where: str) -> int:
    """Frame count of a DICOM upload (its header only)."""
    with _quiet():
        return frame_count(_read(io.BytesIO(data), where, header_only=True))


__all__ = [
    "DICOM_SUFFIXES",
    "RASTER_SUFFIXES",
    "DicomContext",
    "DicomFrame",
    "decode_dicom",
    "dicom_frames_in_bytes",
    "expand_frames",
    "frame_count",
    "frame_digest",
    "is_dicom",
    "is_dicom_bytes",
    "photo_sop_classes",
    "read_dicom_context",
    "sop_class_name",
]
