"""Encoded images, as the serving contract carries them (`image_bytes`), with Pillow: what a client sends
(`encode_image`), the pixels a tool sees (`decode_image`) and the size an image declares in its header
(`image_dimensions`, read without decoding, so that a server can refuse a decompression bomb first).

Pillow's own decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) stays in force: past twice that, opening an
image raises `PIL.Image.DecompressionBombError`. No TensorFlow: the SavedModel decodes with its own decoder.
"""
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

# What the serving graph's tf.io.decode_image reads.
SERVED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


def encode_image(image):
    """JPEG/PNG bytes for an image: a file path, encoded bytes, a PIL image, or a uint8 array [H, W, 3] / [H, W]
    (arrays and PIL images are encoded as lossless PNG)."""
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
            raise ValueError(f"an image array must be uint8 [H, W, 3] or [H, W], got {array.dtype} {array.shape}")
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data):
    """The RGB pixels (uint8 [H, W, 3]) of encoded image bytes; ValueError if Pillow cannot decode them."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(str(error)) from error


def image_dimensions(data):
    """(format, width, height) that encoded image bytes declare in their header, read without decoding the pixels;
    None for bytes that are not a PNG, JPEG, GIF, BMP or WebP header (or are cut short before the size).

    Raises `PIL.Image.DecompressionBombError` past Pillow's limit.
    """
    try:
        with Image.open(io.BytesIO(data), formats=SERVED_FORMATS) as image:
            return image.format, *image.size
    except (OSError, ValueError):  # UnidentifiedImageError is an OSError
        return None
