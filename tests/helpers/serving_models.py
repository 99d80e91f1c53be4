"""A small DeepLabV3 with informative outputs, CamVid frames (from the repository's sample_data) and a Keras-only
reference, for the export and serving tests."""
import io
import struct
import zlib
from pathlib import Path

import keras
import numpy as np
from PIL import Image

import keras_deeplab

CAMVID_FILES = sorted((Path(__file__).parents[2] / "sample_data" / "camvid" / "val").glob("*.png"))[:3]  # 480x360
NUM_CLASSES = 12


def camvid_pixels(path, size=(160, 120)):
    """A CamVid frame as uint8 [H, W, 3], resized to `size` = (width, height) (None: as stored, 480x360)."""
    image = Image.open(path).convert("RGB")
    return np.asarray(image if size is None else image.resize(size, Image.BILINEAR))


def camvid_frames():
    """The three CamVid frames at 160x120, small enough for fast CPU tests."""
    return [camvid_pixels(path) for path in CAMVID_FILES]


def tiny_deeplab(seed=3):
    """DeepLabV3 (MobileNetV2, 12 classes) whose BatchNorm statistics are set from one pass over CamVid frames
    (seed 3 gives label maps with several classes on every test frame).

    Freshly initialized, the network's activations fade to ~1e-12 in inference mode, so every pixel would be
    a tie; with batch statistics they keep their scale and the label maps have structure.
    """
    keras.utils.set_random_seed(seed)
    model = keras_deeplab.DeepLabV3(num_classes=NUM_CLASSES, backbone="mobilenet_v2", aspp_filters=32)
    # Keras has no public recursive layer walk; ASPP's BatchNorms are not in model.layers.
    batch_norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
                   if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in batch_norms]
    for layer in batch_norms:
        layer.momentum = 0.0
    model(np.stack(camvid_frames()).astype("float32"), training=True)
    for layer, momentum in zip(batch_norms, momenta):
        layer.momentum = momentum
    return model


def png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_declaring(width, height):
    """A valid, tiny PNG file (a few hundred bytes) whose header declares a `width` x `height` RGB image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def keras_reference(model, pixels, max_long_side=None):
    """(labels [H, W], clear [H, W]) from the Keras model alone, following the documented size policy with Keras'
    own resize at static sizes: shrink so the long side is `max_long_side`, predict, resize the logits back,
    argmax. `clear` marks pixels whose two best logits differ by more than float rounding could change."""
    height, width = pixels.shape[:2]
    x = pixels[None].astype("float32")
    if max_long_side and max(height, width) > max_long_side:
        scale = max_long_side / max(height, width)
        x = keras.ops.image.resize(x, (round(height * scale), round(width * scale)), interpolation="bilinear",
                                   antialias=False)
    logits = keras.ops.convert_to_numpy(model.predict_on_batch(x))
    if logits.shape[1:3] != (height, width):
        logits = keras.ops.convert_to_numpy(
            keras.ops.image.resize(logits, (height, width), interpolation="bilinear", antialias=False))
    top2 = np.sort(logits[0], axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4 * np.maximum(1.0, np.abs(top2[..., 1]))
    return np.argmax(logits[0], axis=-1), clear
