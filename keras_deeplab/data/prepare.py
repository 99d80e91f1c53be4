"""`deeplab prepare`: convert a segmentation dataset (PASCAL VOC, image + label folders, TFDS) into sharded
TFRecords plus `dataset_info.json`, checking every sample on the way.

    deeplab prepare --preset camvid sample_data/camvid data/camvid --splits train val
    deeplab prepare --format voc VOCdevkit data/voc --splits train_aug val --num-shards 8
"""
import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from keras_deeplab.data import readers
from keras_deeplab.data.pipeline import INFO_FILE
from keras_deeplab.data.presets import PRESETS, check_label_suffix
from keras_deeplab.data.readers import DataError, LabelSpec
from keras_deeplab.data.tfrecords import write_tfrecords

logger = logging.getLogger(__name__)

FORMATS = ("voc", "folder", "tfds")
EXAMPLES_PER_SHARD = 1000


def _checked_examples(samples, spec, skip_bad, skipped, pixel_stats):
    """Loads and checks each sample; yields (id, image bytes, label). Bad samples raise, or are logged and
    counted in `skipped` (a list) when `skip_bad`. Accumulates RGB sums into `pixel_stats` [sum_r, sum_g, sum_b, n]."""
    for sample in samples:
        try:
            example_id, image_bytes, label, rgb = readers.load_example(sample, spec)
        except DataError as error:
            if not skip_bad:
                raise
            logger.warning("skipping %s: %s", sample.id, error)
            skipped.append(sample.id)
            continue
        pixel_stats[:3] += rgb.reshape(-1, 3).sum(axis=0, dtype=np.float64)
        pixel_stats[3] += rgb.shape[0] * rgb.shape[1]
        yield example_id, image_bytes, label


def _list_samples(format, source, split, reader_options):
    """(samples, how many) of one split."""
    if format == "voc":
        samples = readers.voc_samples(source, split, **reader_options)
        return samples, len(samples)
    if format == "folder":
        samples = readers.folder_samples(source, split, **reader_options)
        return samples, len(samples)
    options = dict(reader_options)
    builder = readers.tfds_builder(
        source, data_dir=options.pop("data_dir", None), manual_dir=options.pop("manual_dir", None),
        download=options.pop("download", False),
    )
    return readers.tfds_samples(builder, split, **options)


def _default_name(source):
    if isinstance(source, (str, Path)):
        return Path(source).name or str(source)
    return getattr(source, "name", "dataset")  # a TFDS builder


def prepare(source, out_dir, *, format=None, splits, num_shards=None, skip_bad=False, overwrite=False, preset=None,
            name=None, num_classes=None, class_names=None, ignore_label=None, remap=None, colormap=None,
            mean_rgb=None, progress=True, **reader_options):
    """Converts `splits` of the dataset at `source` into `<out_dir>/<split>-*.tfrecord` + `dataset_info.json`
    and returns the info dict.

    format: "voc" (VOC2012/VOCdevkit folder), "folder" (image and label folders) or "tfds" (`source` is a
    TFDS name or builder). `preset` (see presets.PRESETS: voc, camvid, cityscapes (`*_gtFine_labelIds.png`,
    remapped to train ids), cityscapes_trainids (`*_gtFine_labelTrainIds.png`), ade20k, voc_segmentation,
    oxford_iiit_pet, scene_parse150) supplies format, class names, colormap, remap and reader options; explicit
    arguments override it, except that a preset's remap is refused (ValueError) for label files it would mislabel.
    `remap` maps label file values to class ids ({11: 255} makes CamVid's void ignored).
    `num_shards`: shards per split (default: one per 1000 examples). `skip_bad`: log and skip bad samples
    instead of raising. `overwrite`: replace splits already in `out_dir` (otherwise that is an error; other
    splits of an earlier run of the same dataset are kept). `mean_rgb`: padding colour for training; default: the
    mean pixel of the train split(s).
    reader_options go to the reader: voc_samples, folder_samples, or for tfds data_dir, manual_dir, download,
    image_key, label_key.
    dataset_info.json is removed first and written last, so an interrupted run leaves no complete-looking dataset.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if preset is None and format == "voc":
        preset = "voc"
    spec_defaults = PRESETS[preset] if preset else {}
    format = format or spec_defaults.get("format")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    reader_options = {**spec_defaults.get("reader", {}), **reader_options}
    if preset:
        check_label_suffix(preset, reader_options.get("label_suffix"), remap_overridden=remap is not None)
    class_names = list(class_names or spec_defaults.get("class_names") or [])
    num_classes = int(num_classes or len(class_names))
    if num_classes < 1:
        raise ValueError("num_classes (or class_names, or a preset) is required")
    if not class_names:
        class_names = [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    spec = LabelSpec(
        num_classes,
        255 if ignore_label is None else int(ignore_label),
        spec_defaults.get("remap", {}) if remap is None else remap,
    )
    if isinstance(splits, str):
        splits = [splits]

    out_dir = Path(out_dir)
    existing = [s for s in splits if any(out_dir.glob(f"{s}-*-of-*.tfrecord"))]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds the splits {existing}; pass overwrite=True (--overwrite)")
    out_dir.mkdir(parents=True, exist_ok=True)
    info_path = out_dir / INFO_FILE
    previous = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info_path.unlink(missing_ok=True)
    info = {
        "name": name or spec_defaults.get("name") or _default_name(source),
        "num_classes": num_classes,
        "class_names": class_names,
        "ignore_label": spec.ignore_label,
        "colormap": colormap or spec_defaults.get("colormap") or "pascal",
        "splits": {},
        "mean_rgb": None,
        "skipped": {},
    }
    if previous.get("name") == info["name"] and previous.get("num_classes") == num_classes:
        # Keep the splits of an earlier run into the same directory.
        info["splits"] = {s: n for s, n in previous.get("splits", {}).items() if s not in splits}
        info["skipped"] = {s: n for s, n in previous.get("skipped", {}).items() if s not in splits}
        info["mean_rgb"] = previous.get("mean_rgb")

    train_stats, all_stats = np.zeros(4), np.zeros(4)
    for split in splits:
        samples, total = _list_samples(format, source, split, reader_options)
        shards = num_shards or max(1, math.ceil(total / EXAMPLES_PER_SHARD))
        skipped, stats = [], np.zeros(4)
        bar = tqdm(samples, total=total, desc=f"prepare {split}", unit="img", disable=not progress)
        count = write_tfrecords(_checked_examples(bar, spec, skip_bad, skipped, stats), out_dir, split, shards, info)
        bar.close()
        if skipped:
            logger.warning("split %s: skipped %d bad samples", split, len(skipped))
        if count == 0:
            raise DataError(f"split {split!r} of {source}: no usable examples")
        info["skipped"][split] = len(skipped)
        all_stats += stats
        if split.startswith("train"):
            train_stats += stats
    stats = train_stats if train_stats[3] else all_stats
    if mean_rgb is not None:
        info["mean_rgb"] = [float(v) for v in mean_rgb]
    elif train_stats[3] or info["mean_rgb"] is None:
        info["mean_rgb"] = [round(float(v), 3) for v in stats[:3] / stats[3]]

    temp = info_path.with_name(INFO_FILE + ".tmp")
    temp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(temp, info_path)
    return info


def _parse_remap(items):
    remap = {}
    for item in items or []:
        for pair in item.split(","):
            try:
                source, target = (int(v) for v in pair.split(":"))
            except ValueError:
                raise argparse.ArgumentTypeError(f"--remap expects SRC:DST pairs of ints, got {pair!r}") from None
            remap[source] = target
    return remap


def _parser():
    parser = argparse.ArgumentParser(
        prog="deeplab prepare",
        description="Convert a segmentation dataset to sharded TFRecords + dataset_info.json.",
    )
    parser.add_argument("source", help="VOC folder (VOCdevkit/VOC2012), dataset root of image/label folders, "
                                       "or a TFDS dataset name")
    parser.add_argument("out_dir", help="output directory")
    parser.add_argument("--format", choices=FORMATS, help="input format (default: the preset's)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="known dataset: classes, colormap, remap, layout")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to convert (default: train val)")
    parser.add_argument("--num-shards", type=int, help=f"shards per split (default: one per {EXAMPLES_PER_SHARD})")
    parser.add_argument("--skip-bad", action="store_true", help="log and skip bad samples instead of stopping")
    parser.add_argument("--overwrite", action="store_true", help="replace splits already in OUT_DIR")
    labels = parser.add_argument_group("labels")
    labels.add_argument("--name", help="dataset name stored in dataset_info.json")
    labels.add_argument("--num-classes", type=int)
    labels.add_argument("--class-names", help="comma-separated class names")
    labels.add_argument("--ignore-label", type=int, help="ignore value (default 255)")
    labels.add_argument("--remap", action="append", metavar="SRC:DST[,SRC:DST]",
                        help="map label file values to class ids, e.g. 11:255 (replaces the preset's remap)")
    labels.add_argument("--colormap", choices=("pascal", "camvid", "cityscapes", "ade20k"))
    labels.add_argument("--mean-rgb", type=float, nargs=3, metavar=("R", "G", "B"),
                        help="padding colour (default: mean pixel of the train split)")
    folder = parser.add_argument_group("folder format ({split} is replaced by the split name)")
    folder.add_argument("--image-dir", help="image folder relative to SOURCE (camvid: {split})")
    folder.add_argument("--label-dir", help="label folder relative to SOURCE (camvid: {split}annot); "
                                            "for voc: SegmentationClass or SegmentationClassAug")
    folder.add_argument("--image-suffix", action="append", help="image name ending (default .jpg .jpeg .png)")
    folder.add_argument("--label-suffix", help="label name ending (default .png)")
    folder.add_argument("--split-list", help="split list file (ids or 'image label' lines); relative to SOURCE "
                                             "for folder, a path for voc")
    tfds_group = parser.add_argument_group("tfds format")
    tfds_group.add_argument("--tfds-data-dir", help="TFDS data_dir")
    tfds_group.add_argument("--manual-dir", help="folder with manually downloaded archives")
    tfds_group.add_argument("--download", action="store_true", help="allow TFDS to download and prepare")
    tfds_group.add_argument("--image-key", help="image feature (default image)")
    tfds_group.add_argument("--label-key", help="mask feature (default segmentation_mask)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    format = args.format or (PRESETS[args.preset]["format"] if args.preset else None)
    if format is None:
        parser.error("give --format or --preset")
    option_names = {
        "voc": {"label_dir": args.label_dir, "split_list": args.split_list},
        "folder": {"image_dir": args.image_dir, "label_dir": args.label_dir, "label_suffix": args.label_suffix,
                   "split_list": args.split_list,
                   "image_suffixes": tuple(args.image_suffix) if args.image_suffix else None},
        "tfds": {"data_dir": args.tfds_data_dir, "manual_dir": args.manual_dir, "download": args.download or None,
                 "image_key": args.image_key, "label_key": args.label_key},
    }[format]
    reader_options = {k: v for k, v in option_names.items() if v is not None}
    try:
        info = prepare(
            args.source, args.out_dir, format=format, splits=args.splits, num_shards=args.num_shards,
            skip_bad=args.skip_bad, overwrite=args.overwrite, preset=args.preset, name=args.name,
            num_classes=args.num_classes, class_names=args.class_names.split(",") if args.class_names else None,
            ignore_label=args.ignore_label, remap=_parse_remap(args.remap) if args.remap else None,
            colormap=args.colormap, mean_rgb=args.mean_rgb, progress=not args.no_progress, **reader_options,
        )
    except (ValueError, FileExistsError, argparse.ArgumentTypeError) as error:  # DataError is a ValueError
        print(f"deeplab prepare: error: {error}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{s}: {n}" for s, n in info["splits"].items())
    skipped = sum(info["skipped"].get(s, 0) for s in args.splits)
    print(f"wrote {args.out_dir} ({counts}{f'; skipped {skipped} bad samples' if skipped else ''})")
    return 0
