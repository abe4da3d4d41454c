"""DICOM photos made in the tests with pydicom: real encoded pixel data (JPEG baseline in
YBR_FULL_422, JPEG 2000, RLE, uncompressed RGB/YBR_FULL, PALETTE COLOR), one or more frames,
VL Photographic or Dermoscopic Photography, with patient tags that must never leak."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
DERMOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"

#: Identifying values put into every sample: none may appear in a log, a case or an export.
PATIENT_NAME = "Doe^Janet^Secret"
PATIENT_ID = "PID-7731-SECRET"
BIRTH_DATE = "19790412"

#: Colours of the frames (left half, right half): frame i uses COLOURS[i % len].
COLOURS = [((200, 40, 40), (40, 60, 200)), ((30, 170, 60), (220, 200, 40))]


def frame_pixels(index: int, size: int = 64) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 frame: two flat halves of known colours."""
    left, right = COLOURS[index % len(COLOURS)]
    arr = np.empty((size, size, 3), np.uint8)
    arr[:, : size // 2] = left
    arr[:, size // 2 :] = right
    return arr


def skin_pixels(size: int = 256) -> np.ndarray:
    """A textured skin-like photo with a dark lesion, so the assistant's quality check passes."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack(
        [np.full((size, size), 205.0), np.full((size, size), 150.0), np.full((size, size), 125.0)],
        -1,
    )
    base += rng.normal(0, 9, (size, size, 1))
    r = np.hypot(yy - size / 2, xx - size / 2)
    lesion = np.clip(1.2 - r / (size / 5), 0, 1)[..., None]
    base = base * (1 - 0.65 * lesion) + np.array([70.0, 40.0, 30.0]) * 0.65 * lesion
    return np.clip(base, 0, 255).astype(np.uint8)


def _dataset(sop_class: str, syntax: UID, rows: int, cols: int, study_uid: str | None) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "XC"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.StudyDate = "20261201"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-SECRET-9"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = 0
    return ds


def make_photo(
    path: Path | None = None,
    *,
    syntax: str = "jpeg",
    photometric: str | None = None,
    frames: int = 1,
    sop_class: str = VL_PHOTOGRAPHIC,
    age: str | None = "045Y",
    sex: str | None = "F",
    body_part: str | None = "BACK",
    region: str | None = None,
    pixels: list[np.ndarray] | None = None,
    study_uid: str | None = None,
) -> Dataset:
    """A DICOM photo, written to ``path`` when given.

    Args:
        syntax: ``jpeg`` (baseline, YBR_FULL_422), ``j2k`` (JPEG 2000 lossless), ``rle``,
            ``native`` (explicit VR little endian).
        photometric: for ``native``: ``RGB`` (default), ``YBR_FULL`` or ``PALETTE COLOR``.
        frames: number of frames (each :func:`frame_pixels` of its index unless ``pixels``).
        region: a code meaning for the Anatomic Region Sequence (SNOMED CT code 39937001).
    """
    arrays = pixels or [frame_pixels(i) for i in range(frames)]
    rows, cols = arrays[0].shape[:2]
    uid = {
        "jpeg": JPEGBaseline8Bit,
        "j2k": JPEG2000Lossless,
        "rle": RLELossless,
        "native": ExplicitVRLittleEndian,
    }[syntax]
    ds = _dataset(
        sop_class, uid if syntax == "jpeg" else ExplicitVRLittleEndian, rows, cols, study_uid
    )
    if len(arrays) > 1:
        ds.NumberOfFrames = len(arrays)
    if age:
        ds.PatientAge = age
    if sex:
        ds.PatientSex = sex
    if body_part:
        ds.BodyPartExamined = body_part
    if region:
        item = Dataset()
        item.CodeValue = "39937001"
        item.CodingSchemeDesignator = "SCT"
        item.CodeMeaning = region
        ds.AnatomicRegionSequence = Sequence([item])
    stacked = np.stack(arrays) if len(arrays) > 1 else arrays[0]
    if syntax == "jpeg":
        encoded = []
        for arr in arrays:
            buffer = io.BytesIO()
            Image.fromarray(arr).save(buffer, format="JPEG", quality=95, subsampling=1)  # 4:2:2
            encoded.append(buffer.getvalue())
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
    elif photometric == "PALETTE COLOR":
        # an 8-bit index image with 16-bit lookup tables (index i -> its frame colour)
        indices = (stacked[..., 0] > 100).astype(np.uint8)  # 1 where red is strong
        left, right = COLOURS[0]
        lut = np.zeros((3, 256), np.uint16)
        lut[:, 0] = np.array(right, np.uint16) * 257
        lut[:, 1] = np.array(left, np.uint16) * 257
        ds.SamplesPerPixel = 1
        del ds.PlanarConfiguration
        ds.PhotometricInterpretation = "PALETTE COLOR"
        for i, colour in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", lut[i].tobytes())
        ds.PixelData = indices.tobytes()
    else:
        ds.PhotometricInterpretation = photometric or "RGB"
        data = stacked
        if ds.PhotometricInterpretation == "YBR_FULL":
            data = convert_color_space(stacked, "RGB", "YBR_FULL")
        ds.PixelData = data.tobytes()
        if syntax == "rle":
            ds.compress(RLELossless)
        elif syntax == "j2k":
            ds.compress(JPEG2000Lossless)
    if path is not None:
        ds.save_as(path, enforce_file_format=True)
    return ds
