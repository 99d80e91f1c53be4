"""tf.data input pipelines over a prepared dataset directory (`deeplab prepare`):
`<data_dir>/dataset_info.json` plus shards `<data_dir>/<split>-0000i-of-0000N.tfrecord`.
"""
import json
import random
import re
from pathlib import Path

import tensorflow as tf

from keras_deeplab.data.augment import augment, resize_by
from keras_deeplab.data.tfrecords import parse_example

INFO_FILE = "dataset_info.json"
MAX_OPEN_SHARDS = 16  # shards read at once while training
REQUIRED_INFO_KEYS = ("name", "num_classes", "class_names", "ignore_label", "colormap", "splits", "mean_rgb")
_SHARD_PATTERN = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.tfrecord$")


def load_dataset_info(data_dir):
    """The dataset description written by `prepare`: name, num_classes, class_names, ignore_label,
    colormap, splits ({split: num_examples}) and mean_rgb."""
    path = Path(data_dir) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a prepared dataset (or `deeplab prepare` did not finish)"
        )
    with open(path) as f:
        info = json.load(f)
    missing = [key for key in REQUIRED_INFO_KEYS if key not in info]
    if missing:
        raise ValueError(f"{path}: missing fields {missing}")
    return info


def tfrecord_files(data_dir, split):
    """Sorted shard paths of `split`; raises if there are none or the set is incomplete."""
    data_dir = Path(data_dir)
    files = sorted(data_dir.glob(f"{split}-*-of-*.tfrecord"))
    files = [f for f in files if (m := _SHARD_PATTERN.match(f.name)) and m["split"] == split]
    if not files:
        available = sorted({m["split"] for f in data_dir.glob("*.tfrecord") if (m := _SHARD_PATTERN.match(f.name))})
        raise FileNotFoundError(f"no TFRecord shards for split {split!r} in {data_dir}; splits found: {available}")
    totals = {int(_SHARD_PATTERN.match(f.name)["total"]) for f in files}
    if len(totals) != 1 or len(files) != totals.pop():
        raise ValueError(f"incomplete or mixed shards for split {split!r} in {data_dir}: {[f.name for f in files]}")
    return [str(f) for f in files]


def _decode(example, resize):
    """float32 image and uint8 label of a parsed example, optionally rescaled by `resize`."""
    image, label = tf.cast(example["image"], tf.float32), example["label"]
    if resize is not None and resize != 1:
        image, label = resize_by(image, label, resize)
    return image, label


def _read_records(files, deterministic, shuffle_files=False, seed=None):
    """Reads the shards in parallel. Without file shuffling the shards are interleaved one record at a time,
    which restores the original example order of the round-robin sharding of `write_tfrecords`."""
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return files_ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), MAX_OPEN_SHARDS) if shuffle_files else len(files),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def train_dataset(data_dir, split="train", *, batch_size, crop_size=(513, 513), min_scale=0.5, max_scale=2.0,
                  flip=True, ignore_label=255, shuffle_buffer=256, seed=None, deterministic=False, repeat=True,
                  resize=None, skip_batches=0):
    """Shuffled, augmented training batches: (images float32 [B, ch, cw, 3] in [0, 255], labels int32 [B, ch, cw])
    with static shapes (the last partial batch is dropped).

    Augmentation: random scale in [min_scale, max_scale], pad (image with the dataset's mean_rgb, label with
    `ignore_label`), random crop to `crop_size`, random left-right flip. `resize` (e.g. 0.5) rescales every example
    first (for small demos). The output is reproducible when `seed` is given or `deterministic` is True
    (seed 0 then): shuffling is seeded, parallel stages keep their order, and each example's augmentation uses a
    stateless seed derived from (seed, position in the stream). `skip_batches` starts the stream after that
    many batches, with the examples and augmentation that would have followed them (to resume an interrupted
    run); the skipped records are read but not decoded.
    """
    info = load_dataset_info(data_dir)
    files = tfrecord_files(data_dir, split)
    crop_size = tuple(int(s) for s in crop_size)
    if len(crop_size) != 2 or min(crop_size) < 1:
        raise ValueError(f"crop_size must be (height, width) of positive ints, got {crop_size}")
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    num_examples = int(info["splits"].get(split, 0))
    if not repeat and num_examples < batch_size:
        raise ValueError(f"split {split!r} has {num_examples} examples, fewer than one batch of {batch_size}")
    deterministic = deterministic or seed is not None
    if seed is None:
        seed = 0 if deterministic else random.SystemRandom().randrange(2**31)
    mean_rgb = tuple(float(v) for v in info["mean_rgb"])

    def decode_and_augment(index, serialized):
        image, label = _decode(parse_example(serialized), resize)
        element_seed = tf.stack([tf.constant(seed, tf.int64), index])
        image, label = augment(image, label, element_seed, crop_size=crop_size, min_scale=min_scale,
                               max_scale=max_scale, flip=flip, mean_rgb=mean_rgb, ignore_label=ignore_label)
        return image, tf.cast(label, tf.int32)

    ds = _read_records(files, deterministic, shuffle_files=True, seed=seed)
    if shuffle_buffer and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    start = int(skip_batches) * batch_size
    if start:
        ds = ds.skip(start)
    ds = ds.enumerate(start=start).map(decode_and_augment, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_dataset(data_dir, split="val", *, batch_size=1, resize=None, with_ids=False):
    """Whole images in their original order: (images float32 [B, H, W, 3], labels int32 [B, H, W]), plus the ids
    (string [B]) when `with_ids`. With batch_size > 1 images are padded to the largest in the batch (image with the
    dataset mean, label with its ignore value); padding changes the context the model sees, so batch_size=1 is
    the exact evaluation. `resize` rescales images (bilinear) and labels (nearest) first."""
    info = load_dataset_info(data_dir)
    files = tfrecord_files(data_dir, split)
    mean = tf.constant([float(v) for v in info["mean_rgb"]], tf.float32)
    ignore_label = int(info["ignore_label"])

    def decode(serialized):
        example = parse_example(serialized)
        image, label = _decode(example, resize)
        # Centre on the mean so that padded_batch's zero padding is the mean colour.
        return image - mean, tf.cast(label, tf.int32), example["id"]

    ds = _read_records(files, deterministic=True).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.padded_batch(batch_size, padding_values=(0.0, ignore_label, ""))

    def restore(images, labels, ids):
        return (images + mean, labels, ids) if with_ids else (images + mean, labels)

    return ds.map(restore).prefetch(tf.data.AUTOTUNE)
