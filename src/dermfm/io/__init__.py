"""Image input: every image (DICOM included) enters dermfm through :func:`load_image`."""

from dermfm.io.dicom import DicomContext, DicomFrame, expand_frames, is_dicom, read_dicom_context
from dermfm.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    PEAK_BYTES_PER_PIXEL,
    ImageInput,
    decode_image_bytes,
    expand_inputs,
    find_images,
    image_digest,
    load_image,
    source_name,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "PEAK_BYTES_PER_PIXEL",
    "DicomContext",
    "DicomFrame",
    "ImageInput",
    "decode_image_bytes",
    "expand_frames",
    "expand_inputs",
    "find_images",
    "image_digest",
    "is_dicom",
    "load_image",
    "read_dicom_context",
    "source_name",
]
