"""Evaluation: mean IoU from a confusion matrix accumulated over whole images, at one or several scales with
optional left-right flipping (class probabilities averaged), as in the paper's Table 6; optionally also within
trimap bands around label boundaries (DeepLabv2/v3+'s boundary accuracy).

    deeplab evaluate --model runs/camvid/model.keras --data-dir data/camvid --split val
    deeplab evaluate --model runs/voc --data-dir data/voc --output-stride 8 --multi-scale --flip --trimap 2 10
"""
import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from keras_deeplab.architectures import import_available, main_output
from keras_deeplab.data.pipeline import eval_dataset, load_dataset_info
from keras_deeplab.training.callbacks import MODEL_FILE

PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def make_predictor(model, scales=(1.0,), flip=False):
    """A tf.function mapping images [N, H, W, 3] to class probabilities [N, H, W, C]: the softmax of the
    model's logits (its main output), averaged over the input rescaled by each of `scales` (logits resized back to
    H, W) and, with `flip`, over the left-right flipped inputs too."""
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers, got {scales}")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)], reduce_retracing=True)
    def predict(images):
        size = tf.shape(images)[1:3]
        total = None
        for scale in scales:
            scaled_size = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
            scaled = images if scale == 1 else tf.image.resize(images, scaled_size, method="bilinear")
            for flipped in (False, True) if flip else (False,):
                inputs = tf.reverse(scaled, [2]) if flipped else scaled
                logits = tf.cast(main_output(model(inputs, training=False)), tf.float32)
                if flipped:
                    logits = tf.reverse(logits, [2])
                if scale != 1:
                    logits = tf.image.resize(logits, size, method="bilinear")
                probabilities = tf.nn.softmax(logits)
                total = probabilities if total is None else total + probabilities
        return total / (len(scales) * (2 if flip else 1))

    return predict


def confusion_matrix(labels, predictions, num_classes, ignore_label=255):
    """[num_classes, num_classes] int64 counts (rows: true class, columns: predicted class), without the
    pixels labelled `ignore_label`."""
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    valid = tf.not_equal(labels, ignore_label)
    return tf.math.confusion_matrix(tf.boolean_mask(labels, valid), tf.boolean_mask(predictions, valid),
                                    num_classes=num_classes, dtype=tf.int64)


def trimap_band(labels, width):
    """bool [N, H, W]: the pixels of label maps [N, H, W] within `width` pixels (chessboard distance) of a label
    boundary, a pixel whose label (the ignore value included) differs from one of its 8 neighbours'. Both are
    max-pool dilations: the boundary from the 3x3 max and min, the band from the boundary by a square of side
    2 * width + 1 (one row, then one column pass)."""
    labels = tf.cast(labels, tf.float32)[..., None]
    highest = tf.nn.max_pool2d(labels, 3, 1, "SAME")
    lowest = -tf.nn.max_pool2d(-labels, 3, 1, "SAME")
    band = tf.cast(highest > lowest, tf.float32)
    size = 2 * int(width) + 1
    band = tf.nn.max_pool2d(tf.nn.max_pool2d(band, [1, size], 1, "SAME"), [size, 1], 1, "SAME")
    return band[..., 0] > 0


def iou_report(confusion, class_names):
    """Per-class IoU (None for classes absent from both labels and predictions), mean IoU over the others and
    pixel accuracy, from a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.int64)
    true_positives = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - true_positives
    present = union > 0
    iou = np.divide(true_positives, union, out=np.zeros_like(true_positives), where=present)
    total = confusion.sum()
    return {
        "mean_iou": float(iou[present].mean()) if present.any() else 0.0,
        "pixel_accuracy": float(true_positives.sum() / total) if total else 0.0,
        "per_class_iou": {name: (float(v) if p else None) for name, v, p in zip(class_names, iou, present)},
        "num_pixels": int(total),
        "confusion_matrix": confusion.tolist(),
    }


def evaluate(model, data_dir, split="val", scales=(1.0,), flip=False, *, output_stride=None, resize=None,
             max_images=None, trimap=(), progress=True):
    """Evaluates `model` on the whole images of `split` of the prepared dataset at `data_dir` and returns a
    report: mean_iou, pixel_accuracy, per_class_iou {class name: IoU or None}, confusion_matrix and the
    settings. `output_stride` evaluates a copy of the model at that stride (`with_output_stride`: train at 16,
    evaluate at 8); `resize` rescales the images and labels as the dataset's pipeline does (e.g. 0.5 for the
    CamVid demo); each width of `trimap` adds {width, mean_iou, pixel_accuracy, num_pixels} of the pixels in
    that band around label boundaries (`trimap_band`) to the report's "trimap" list."""
    info = load_dataset_info(data_dir)
    if split not in info["splits"]:
        raise ValueError(f"split {split!r} is not in {data_dir} (splits: {sorted(info['splits'])})")
    if output_stride is not None and output_stride != getattr(model, "output_stride", output_stride):
        if not hasattr(model, "with_output_stride"):
            raise ValueError(f"{type(model).__name__} cannot be evaluated at another output stride")
        model = model.with_output_stride(int(output_stride))
    trimap = tuple(int(w) for w in trimap)
    if any(w < 0 for w in trimap):
        raise ValueError(f"trimap widths must be >= 0, got {trimap}")
    num_classes, ignore_label = int(info["num_classes"]), int(info["ignore_label"])
    predict = make_predictor(model, scales, flip)

    @tf.function(reduce_retracing=True)
    def image_confusion(images, labels):
        """The confusion matrices [1 + len(trimap), C, C] of all pixels and of each trimap band."""
        predictions = tf.argmax(predict(images), axis=-1)
        masked = [labels] + [tf.where(trimap_band(labels, w), labels, ignore_label) for w in trimap]
        return tf.stack([confusion_matrix(m, predictions, num_classes, ignore_label) for m in masked])

    dataset = eval_dataset(data_dir, split, batch_size=1, resize=resize)
    total = int(info["splits"][split])
    if max_images is not None:
        dataset, total = dataset.take(int(max_images)), min(total, int(max_images))
    confusion = np.zeros((1 + len(trimap), num_classes, num_classes), np.int64)
    count, start = 0, time.perf_counter()
    bar = tqdm(dataset, total=total, desc=f"evaluate {split}", unit="img", disable=not progress)
    for images, labels in bar:
        confusion += image_confusion(images, labels).numpy()
        count += int(images.shape[0])
    report = iou_report(confusion[0], info["class_names"])
    bands = [iou_report(c, info["class_names"]) for c in confusion[1:]]
    report["trimap"] = [{"width": w, **{k: band[k] for k in ("mean_iou", "pixel_accuracy", "num_pixels")}}
                        for w, band in zip(trimap, bands)]
    report.update(dataset=info["name"], split=split, num_images=count, scales=[float(s) for s in scales],
                  flip=bool(flip), output_stride=getattr(model, "output_stride", None), resize=resize,
                  seconds=round(time.perf_counter() - start, 2))
    return report


def format_report(report):
    """A readable table of per-class IoU, mean IoU and pixel accuracy (percent), then those of the trimap bands."""
    settings = (f"{report['dataset']} {report['split']}: {report['num_images']} images, scales "
                f"{report['scales']}, flip {report['flip']}, output stride {report['output_stride']}")
    width = max(len(name) for name in report["per_class_iou"])
    lines = [settings]
    for name, iou in report["per_class_iou"].items():
        lines.append(f"  {name:<{width}}  {'   n/a' if iou is None else f'{100 * iou:6.2f}'}")
    lines.append(f"  {'mIoU':<{width}}  {100 * report['mean_iou']:6.2f}")
    lines.append(f"  {'pixel acc':<{width}}  {100 * report['pixel_accuracy']:6.2f}")
    for band in report.get("trimap", ()):
        lines.append(f"  trimap {band['width']} px: mIoU {100 * band['mean_iou']:6.2f}, pixel acc "
                     f"{100 * band['pixel_accuracy']:6.2f} ({band['num_pixels']} pixels)")
    return "\n".join(lines)


def load_model(path):
    """Loads a saved `.keras` model (or `<dir>/model.keras`) of any architecture for inference."""
    import keras

    import keras_deeplab  # noqa: F401  (registers the model's layers)

    import_available()

    if os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved model at {path}")
    return keras.models.load_model(path, compile=False)


def _scales(text):
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--scales must be comma-separated numbers, got {text!r}") from err


def _parser():
    parser = argparse.ArgumentParser(prog="deeplab evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="a .keras file, or a training model_dir holding model.keras")
    parser.add_argument("--data-dir", "--data_dir", required=True, help="prepared dataset (deeplab prepare)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--scales", type=_scales, default=(1.0,),
                        help="comma-separated input scales (default 1)")
    parser.add_argument("--multi-scale", "--multi_scale", action="store_true",
                        help=f"use the paper's scales {PAPER_SCALES}")
    parser.add_argument("--flip", action="store_true", help="also average over left-right flipped inputs")
    parser.add_argument("--output-stride", "--output_stride", type=int, choices=(8, 16, 32),
                        help="evaluate at this output stride")
    parser.add_argument("--resize", type=float,
                        help="rescale images and labels first (as training's data.resize does)")
    parser.add_argument("--max-images", "--max_images", type=int, help="evaluate only the first N images")
    parser.add_argument("--trimap", type=int, nargs="+", default=(), metavar="WIDTH",
                        help="also report mIoU and pixel accuracy within WIDTH pixels of label boundaries")
    parser.add_argument("--output", help="JSON report path (default: eval_<split>.json beside the model)")
    parser.add_argument("--no-progress", "--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    """`deeplab evaluate`: prints per-class IoU and mIoU and writes the report as JSON."""
    args = _parser().parse_args(argv)
    model = load_model(args.model)
    report = evaluate(model, args.data_dir, args.split, PAPER_SCALES if args.multi_scale else args.scales,
                      args.flip, output_stride=args.output_stride, resize=args.resize,
                      max_images=args.max_images, trimap=args.trimap, progress=not args.no_progress)
    print(format_report(report))
    model_dir = args.model if os.path.isdir(args.model) else os.path.dirname(os.path.abspath(args.model))
    output = args.output or os.path.join(model_dir, f"eval_{args.split}.json")
    with open(output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"report written to {output}")
    return 0
