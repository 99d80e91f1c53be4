"""Sharded TFRecords of (image, label) pairs, in the feature layout of the original TF DeepLab
(`build_voc2012_data.py`): the encoded image as given (JPEG or PNG) and the label as a lossless
single-channel PNG of class ids (0..C-1, ignore value e.g. 255).
"""
import io
import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

IMAGE_KEY = "image/encoded"
IMAGE_FORMAT_KEY = "image/format"
ID_KEY = "image/filename"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
LABEL_KEY = "image/segmentation/class/encoded"
LABEL_FORMAT_KEY = "image/segmentation/class/format"

FEATURES = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT_KEY: tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
    ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_FORMAT_KEY: tf.io.FixedLenFeature([], tf.string, default_value="png"),
}


def shard_name(split, index, num_shards):
    """File name of one shard: `<split>-00000-of-00004.tfrecord`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def image_format(image_bytes):
    """'jpeg' or 'png' from the file signature; anything else is rejected (TF decodes only these losslessly here)."""
    if image_bytes[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if image_bytes[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise ValueError("image bytes are neither JPEG nor PNG")


def encode_label_png(label):
    """Lossless single-channel (mode L) PNG of a uint8 [H, W] class-id mask."""
    buffer = io.BytesIO()
    Image.fromarray(label, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def invalid_label_values(values, num_classes, ignore_label):
    """The values among `values` that are neither a class id (0..num_classes-1) nor `ignore_label`."""
    values = np.unique(values)
    return values[(values >= num_classes) & (values != ignore_label)]


def check_label(example_id, label, num_classes, ignore_label):
    """Raises ValueError (naming the example) unless `label` is a uint8 [H, W] mask of ids in 0..C-1 or ignore."""
    if not isinstance(label, np.ndarray) or label.ndim != 2 or label.dtype != np.uint8:
        kind = f"{label.dtype} array of shape {label.shape}" if isinstance(label, np.ndarray) else type(label).__name__
        raise ValueError(f"{example_id}: label must be a uint8 [H, W] array of class ids, got {kind}")
    bad = invalid_label_values(label, num_classes, ignore_label)
    if bad.size:
        raise ValueError(
            f"{example_id}: label values {bad.tolist()} are outside the classes 0..{num_classes - 1} "
            f"and the ignore value {ignore_label}"
        )


def serialize_example(example_id, image_bytes, label):
    """One tf.train.Example (serialized) from an id, encoded image bytes and a uint8 [H, W] label."""
    height, width = label.shape
    feature = {
        IMAGE_KEY: _bytes_feature(image_bytes),
        IMAGE_FORMAT_KEY: _bytes_feature(image_format(image_bytes).encode()),
        ID_KEY: _bytes_feature(str(example_id).encode()),
        HEIGHT_KEY: _int_feature(height),
        WIDTH_KEY: _int_feature(width),
        LABEL_KEY: _bytes_feature(encode_label_png(label)),
        LABEL_FORMAT_KEY: _bytes_feature(b"png"),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecords(examples, out_dir, split, num_shards, info):
    """Writes `examples` (iterable of (id, image_bytes, label uint8 [H, W])) round-robin into `num_shards`
    shards `<out_dir>/<split>-0000i-of-0000N.tfrecord`; returns the number written.

    Labels are checked against `info["num_classes"]` and `info["ignore_label"]`, and `info["splits"][split]`
    is set to the count. Shards are written under temporary names and renamed only when all are complete;
    stale shards of the same split (e.g. with another shard count) are removed then.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_classes, ignore_label = int(info["num_classes"]), int(info.get("ignore_label", 255))
    finals = [out_dir / shard_name(split, i, num_shards) for i in range(num_shards)]
    temps = [path.with_name(path.name + ".tmp") for path in finals]
    writers = [tf.io.TFRecordWriter(str(path)) for path in temps]
    count = 0
    try:
        for example_id, image_bytes, label in examples:
            check_label(example_id, label, num_classes, ignore_label)
            writers[count % num_shards].write(serialize_example(example_id, image_bytes, label))
            count += 1
    except BaseException:
        for writer, path in zip(writers, temps):
            writer.close()
            path.unlink(missing_ok=True)
        raise
    for writer in writers:
        writer.close()
    for stale in out_dir.glob(f"{split}-*-of-*.tfrecord"):
        if stale not in finals:
            stale.unlink()
    for temp, final in zip(temps, finals):
        os.replace(temp, final)
    info.setdefault("splits", {})[split] = count
    return count


def decode_image(image_bytes):
    """RGB uint8 [H, W, 3] of JPEG or PNG bytes. JPEGs use the accurate integer IDCT, which gives the same
    pixels as PIL/libjpeg's default; TF's default fast IDCT differs by up to ~20 levels."""
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(image_bytes, channels=3),
    )
    image.set_shape([None, None, 3])
    return image


def parse_example(serialized):
    """Parses one serialized example into {"id": string, "image": uint8 [H, W, 3], "label": uint8 [H, W]}."""
    features = tf.io.parse_single_example(serialized, FEATURES)
    image = decode_image(features[IMAGE_KEY])
    label = tf.io.decode_png(features[LABEL_KEY], channels=1)[:, :, 0]
    return {"id": features[ID_KEY], "image": image, "label": label}
