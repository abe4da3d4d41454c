"""Image input: every image enters dermfm through :func:`load_image`."""

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
    "ImageInput",
    "decode_image_bytes",
    "expand_inputs",
    "find_images",
    "image_digest",
    "load_image",
    "source_name",
]
