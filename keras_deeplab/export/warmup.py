"""The images an export is checked and warmed up on, and TF Serving's warmup records
(`assets.extra/tf_serving_warmup_requests`)."""
import os
from pathlib import Path

import numpy as np

from keras_deeplab.serving.contract import IMAGE_BYTES, IMAGES, IMAGES_SIGNATURE, SERVING_SIGNATURE, WARMUP_FILE
from keras_deeplab.serving.images import encode_image

# Real images for the checks and the warmup when none are given (package data; see its SOURCE.md).
SAMPLE_IMAGES_FOLDER = "sample_images"
SAMPLE_IMAGES = ("camvid_0016E5_07959_160x120.jpg", "camvid_0016E5_08079_crop_96x128.png")


def encoded_image(image):
    """(encoded bytes, decoded uint8 [H, W, 3]) for a path, encoded bytes, or a uint8 array [H, W, 3] / [H, W].

    Arrays are encoded as PNG (lossless); decoding uses TensorFlow's decoder, as the serving graph does.
    """
    import tensorflow as tf

    data = encode_image(image)
    try:
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except tf.errors.InvalidArgumentError as error:
        name = image if isinstance(image, (str, os.PathLike)) else "given bytes"
        raise ValueError(f"{name} is not a JPEG/PNG/GIF/BMP/WebP image: {error.message}") from None
    return data, decoded


def sample_images():
    """The encoded bytes of the real images shipped with the package (two CamVid frames: a 160x120 JPEG and a
    96x128 PNG), the default `check_images`; FileNotFoundError if the package data is missing."""
    from importlib.resources import files

    folder = files("keras_deeplab") / SAMPLE_IMAGES_FOLDER
    images = []
    for name in SAMPLE_IMAGES:
        resource = folder / name
        if not resource.is_file():
            raise FileNotFoundError(f"the package data file keras_deeplab/{SAMPLE_IMAGES_FOLDER}/{name} is missing "
                                    "(a broken install? reinstall keras_deeplab, or pass check_images)")
        images.append(resource.read_bytes())
    return images


def default_check_images():
    """What the checks run on when no images are given: the package's real images (`sample_images`); if the
    package data is missing, a warning and the synthetic images."""
    try:
        return sample_images()
    except FileNotFoundError as error:
        import warnings

        warnings.warn(f"{error}; checking the export on synthetic images instead", RuntimeWarning, stacklevel=2)
        return synthetic_images()


def synthetic_images():
    """Two deterministic RGB images of different sizes and orientations (60x80 and 96x64); the fallback when the
    package's real images are missing."""
    images = []
    for height, width in ((60, 80), (96, 64)):
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([yy * 255 // (height - 1), xx * 255 // (width - 1), ((yy // 8 + xx // 8) % 2) * 255], -1)
        images.append(image.astype(np.uint8))
    return images


def write_warmup_requests(version_dir, images, model_name):
    """Writes `assets.extra/tf_serving_warmup_requests`: for each image, one PredictionLog for `serving_default`
    (its bytes) and one for `predict_images` (its pixels). Returns the number of records."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for data, pixels in (encoded_image(image) for image in images):
            for signature, name, value in ((SERVING_SIGNATURE, IMAGE_BYTES, tf.make_tensor_proto([data])),
                                           (IMAGES_SIGNATURE, IMAGES, tf.make_tensor_proto(pixels[None]))):
                request = predict_pb2.PredictRequest(
                    model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
                request.inputs[name].CopyFrom(value)
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
                count += 1
    return count
