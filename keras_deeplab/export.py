"""Export a DeepLabV3 model as a versioned SavedModel for TensorFlow Serving (`deeplab export`).

Signatures (built with `keras.export.ExportArchive`, no XLA, float32 compute, JSON-encodable dtypes):

- `serving_default`: `image_bytes` (DT_STRING [-1]: JPEG, PNG, GIF, BMP or WebP bytes; REST clients send
  `{"b64": ...}`) -> `labels` (int32 [-1, H, W]: each image's label map at its original size, padded with 255
  to the largest image of the request; with more than 255 classes crop by `image_size`), `label_png_bytes`
  (DT_STRING [-1]: the label map as a PNG, 8-bit, or 16-bit above 256 classes; REST returns it as b64) and
  `image_size` (int32 [-1, 2]: height, width).
  Bytes that are not an image fail with InvalidArgument (HTTP 400 in TF Serving). Every input and output has
  a batch dimension, so TF Serving's `--enable_batching` works (labels are then padded to the largest image
  of the merged batch: crop with `image_size`).
- `predict_images`: `images` (uint8 [-1, -1, -1, 3], one size per request) -> `labels` (int32 [-1, H, W]) and
  `probabilities` (float32 [-1, H, W, num_classes], softmax).

Inference size policy, fixed at export by `max_long_side`:
- None: the model sees every image whole, at its own size.
- M: an image whose long side exceeds M is resized (bilinear, aspect ratio kept, each side rounded to the
  nearest integer, at least 1) so that its long side is M; the logits are resized back (bilinear) to the
  original size before argmax and softmax, so outputs always have the input's size. Smaller images are
  not enlarged.

A version is written atomically: into a hidden staging folder beside the versions (TF Serving ignores
non-numeric names), checked, then renamed to `base_dir/N`; a failed export leaves nothing under `base_dir`.
The checks load the version in a fresh process as TF Serving does (TF1 SavedModel loader, tags `serve`,
a Session run by the SignatureDefs' tensor names), check every signature's names, dtypes, shapes and method
name, and compare its labels with the in-process Keras model on real images: the `check_images` given, else
two small CamVid frames shipped with the package (`keras_deeplab/sample_images/`, a 160x120 JPEG and a 96x128
PNG; non-commercial licence, see SOURCE.md there).

Serve the folder with TensorFlow Serving (use a release not older than the TensorFlow that exported it):

    docker run --rm -p 8501:8501 -v "$PWD/saved_models/deeplabv3:/models/deeplabv3" \\
        -e MODEL_NAME=deeplabv3 tensorflow/serving

or locally, with the same REST API: `deeplab serve --model_name deeplabv3 --model_base_path saved_models/deeplabv3`.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from keras_deeplab.serving.json_tensor import JSON_DTYPES
from keras_deeplab.serving.model_config import ModelConfig, read_models_config, write_models_config

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
PAD_LABEL = 255
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
EXPORT_INFO_FILE = os.path.join("assets.extra", "keras_deeplab_export.json")

# name -> (inputs, outputs), each {name: DataType name}: what every export must provide.
EXPECTED_SIGNATURES = {
    SERVING_SIGNATURE: ({"image_bytes": "DT_STRING"},
                        {"labels": "DT_INT32", "label_png_bytes": "DT_STRING", "image_size": "DT_INT32"}),
    IMAGES_SIGNATURE: ({"images": "DT_UINT8"}, {"labels": "DT_INT32", "probabilities": "DT_FLOAT"}),
}
# The same, {name: shape}: -1 is a free dimension, NUM_CLASSES_DIM the model's number of classes.
NUM_CLASSES_DIM = "num_classes"
EXPECTED_SHAPES = {
    SERVING_SIGNATURE: ({"image_bytes": (-1,)},
                        {"labels": (-1, -1, -1), "label_png_bytes": (-1,), "image_size": (-1, 2)}),
    IMAGES_SIGNATURE: ({"images": (-1, -1, -1, 3)},
                       {"labels": (-1, -1, -1), "probabilities": (-1, -1, -1, NUM_CLASSES_DIM)}),
}
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
# Real images for the checks and the warmup when none are given (package data; see its SOURCE.md).
SAMPLE_IMAGES_FOLDER = "sample_images"
SAMPLE_IMAGES = ("camvid_0016E5_07959_160x120.jpg", "camvid_0016E5_08079_crop_96x128.png")
XLA_OPS = frozenset({"XlaCallModule", "XlaLaunch", "XlaLaunchV2", "_XlaCompile", "_XlaRun", "_XlaMerge"})
# Logit margins below this (relative to the top logit) are ties that float rounding may break either way.
TIE_TOLERANCE = 1e-4


class ExportCheckError(RuntimeError):
    """The exported SavedModel failed a check; the message lists every problem found."""


# ----------------------------------------------------------------------------------------------------------
# The computation: inference size policy, logits at the original size.

def inference_size(height, width, max_long_side):
    """The (height, width) the model sees for an image of `height` x `width` under `max_long_side` (see module doc)."""
    long_side = max(height, width)
    if max_long_side is None or long_side <= max_long_side:
        return height, width
    return tuple(max(1, (2 * side * max_long_side + long_side) // (2 * long_side)) for side in (height, width))


def _tf_inference_size(height, width, max_long_side):
    """`inference_size` on int32 scalar tensors, in the same integer arithmetic."""
    import tensorflow as tf

    long_side = tf.maximum(height, width)

    def scaled(side):  # in int64: 2 * side * max_long_side can pass int32's range
        side, long = tf.cast(side, tf.int64), tf.cast(long_side, tf.int64)
        return tf.cast(tf.maximum(tf.constant(1, tf.int64), (2 * side * max_long_side + long) // (2 * long)), tf.int32)

    shrink = long_side > max_long_side
    return tf.where(shrink, scaled(height), height), tf.where(shrink, scaled(width), width)


def model_logits(model, images):
    """float32 logits of `model` (its main output when it also has an auxiliary one) for float images."""
    import tensorflow as tf

    outputs = model(images, training=False)
    if isinstance(outputs, dict):
        outputs = outputs["out"]
    return tf.cast(outputs, tf.float32)


def logits_at_input_size(model, images, max_long_side=None):
    """Logits [N, H, W, C] for images [N, H, W, 3] (any real dtype, values in [0, 255]) under the size policy."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    if max_long_side is None:
        return model_logits(model, images)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    size = tf.stack(_tf_inference_size(height, width, int(max_long_side)))
    resized = tf.image.resize(images, size, method="bilinear", antialias=False)
    logits = model_logits(model, resized)
    return tf.image.resize(logits, tf.stack([height, width]), method="bilinear", antialias=False)


def build_export_archive(model, max_long_side=None):
    """The `keras.export.ExportArchive` with the `serving_default` and `predict_images` endpoints."""
    import keras
    import tensorflow as tf

    num_classes = int(model_logits(model, tf.zeros([1, 33, 33, 3])).shape[-1])
    png_dtype = tf.uint8 if num_classes <= 256 else tf.uint16

    def segment_encoded(image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        logits = logits_at_input_size(model, image[tf.newaxis], max_long_side)[0]
        labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
        png = tf.io.encode_png(tf.cast(labels, png_dtype)[..., tf.newaxis])
        return tf.RaggedTensor.from_tensor(labels), png, tf.shape(labels)

    def serve_image_bytes(image_bytes):
        labels, pngs, sizes = tf.map_fn(
            segment_encoded, image_bytes,
            fn_output_signature=(tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
                                 tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int32)))
        return {"labels": labels.to_tensor(default_value=PAD_LABEL), "label_png_bytes": pngs, "image_size": sizes}

    def serve_images(images):
        logits = logits_at_input_size(model, images, max_long_side)
        return {"labels": tf.argmax(logits, axis=-1, output_type=tf.int32), "probabilities": tf.nn.softmax(logits)}

    archive = keras.export.ExportArchive()
    archive.add_endpoint(SERVING_SIGNATURE, serve_image_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(IMAGES_SIGNATURE, serve_images,
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    return archive, num_classes


# ----------------------------------------------------------------------------------------------------------
# Images for the checks and the warmup requests.

def encoded_image(image):
    """(encoded bytes, decoded uint8 [H, W, 3]) for a path, encoded bytes, or a uint8 array [H, W, 3] / [H, W].

    Arrays are encoded as PNG (lossless); decoding uses TensorFlow's decoder, as the serving graph does.
    """
    import tensorflow as tf

    if isinstance(image, (str, os.PathLike)):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes):
        data = image
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
            raise ValueError(f"images must be uint8 [H, W, 3] or [H, W], got {array.dtype} {array.shape}")
        data = tf.io.encode_png(array if array.ndim == 3 else array[..., None]).numpy()
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
            for signature, name, value in ((SERVING_SIGNATURE, "image_bytes", tf.make_tensor_proto([data])),
                                           (IMAGES_SIGNATURE, "images", tf.make_tensor_proto(pixels[None]))):
                request = predict_pb2.PredictRequest(
                    model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
                request.inputs[name].CopyFrom(value)
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
                count += 1
    return count


# ----------------------------------------------------------------------------------------------------------
# Versions on disk.

def existing_versions(base_dir):
    """The version numbers (numeric folder names) under `base_dir`."""
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        return []
    return sorted(int(p.name) for p in base_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(base_dir):
    """One more than the highest version under `base_dir`, or 1."""
    versions = existing_versions(base_dir)
    return versions[-1] + 1 if versions else 1


def export_saved_model(model, base_dir="saved_models/deeplabv3", version=None, *, overwrite=False,
                       max_long_side=None, model_name=None, check_images=None, warmup_images=None,
                       class_names=None, colormap=None, fold_batch_norm=True):
    """Exports `model` as version `version` (next integer when None) of `base_dir` and checks it.

    Args:
        model: a DeepLabV3 (or any Keras model from float images [N, H, W, 3] in [0, 255] to logits).
        base_dir: the model's base path (the folder TF Serving's `--model_base_path` points at).
        version: the version number; None for one more than the highest existing one.
        overwrite: replace an existing version folder instead of raising FileExistsError.
        max_long_side: inference size policy (module doc): None for whole images, else the longest side the
            model sees.
        model_name: the model name written into the warmup requests (default: the base folder's name).
        check_images: images (paths, encoded bytes or uint8 arrays) the checks run on; default: the two real
            images shipped with the package (`sample_images`: CamVid frames, 160x120 JPEG and 96x128 PNG).
        warmup_images: images for the warmup requests; default: the first of those.
        class_names, colormap: written into the export's info file (`assets.extra/keras_deeplab_export.json`)
            for tools that draw the label maps (`deeplab predict`); one name per class.
        fold_batch_norm: serve an inference copy with BatchNorm folded into the convolutions
            (`keras_deeplab.fold`; faster, same labels: the checks compare it with `model` itself).

    Returns:
        The Path of the written version folder.

    Raises:
        FileExistsError: the version exists and `overwrite` is False.
        ExportCheckError: the SavedModel failed a check (nothing is written under `base_dir` then).
    """
    base_dir = Path(base_dir)
    version = next_version(base_dir) if version is None else int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    if max_long_side is not None and int(max_long_side) < 1:
        raise ValueError(f"max_long_side must be a positive integer or None, got {max_long_side}")
    max_long_side = None if max_long_side is None else int(max_long_side)
    target = base_dir / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another version or pass overwrite=True "
                              "(--overwrite)")
    model_name = model_name or base_dir.resolve().name
    base_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=base_dir))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide the version from a server running as another user
    try:
        if fold_batch_norm:
            from keras_deeplab.fold import fold_batch_norm as folded_copy

            served = folded_copy(model)
        else:
            served = model
        archive, num_classes = build_export_archive(served, max_long_side)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names, the model has {num_classes} classes")
        archive.write_out(str(staging), verbose=False)
        if check_images is None or warmup_images is None:  # read (and warned about) once
            defaults = default_check_images()
            check_images = defaults if check_images is None else check_images
            warmup_images = defaults[:1] if warmup_images is None else warmup_images
        write_warmup_requests(staging, warmup_images, model_name)
        info = {"num_classes": num_classes, "max_long_side": max_long_side, "pad_label": PAD_LABEL,
                "batch_norm_folded": bool(fold_batch_norm),
                "class_names": None if class_names is None else [str(n) for n in class_names],
                "colormap": colormap,
                "signatures": {name: {"inputs": inputs, "outputs": outputs}
                               for name, (inputs, outputs) in EXPECTED_SIGNATURES.items()},
                "versions": _library_versions()}
        (staging / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2))
        check_export(staging, model, max_long_side, check_images)
        _publish(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _publish(staging, target, overwrite):
    """Renames the checked staging folder to the version folder (replacing an old one when allowed).

    Replacing is two renames: a server polling in between may briefly miss that version; new versions never are.
    """
    replaced = None
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} appeared during the export; not overwriting it")
        replaced = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.rename(target, replaced)
    try:
        os.rename(staging, target)
    except OSError as error:
        if replaced is not None:
            os.rename(replaced, target)
        raise FileExistsError(f"could not move the export to {target}: {error}") from None
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _library_versions():
    import keras
    import tensorflow as tf

    import keras_deeplab

    return {"keras_deeplab": keras_deeplab.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}


# ----------------------------------------------------------------------------------------------------------
# Checks.

def reference_labels(model, pixels, max_long_side=None):
    """(labels [H, W], ties [H, W] bool) of the in-process Keras model for one uint8 image under the size policy.

    `ties` marks pixels whose two best logits are closer than float rounding can separate.
    """
    logits = np.asarray(logits_at_input_size(model, pixels[None], max_long_side))[0]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    ties = (top2[..., 1] - top2[..., 0]) <= TIE_TOLERANCE * np.maximum(1.0, np.abs(top2[..., 1]))
    return np.argmax(logits, axis=-1).astype(np.int32), ties


def check_export(version_dir, model, max_long_side, check_images=None, timeout=900):
    """Checks a written version in a fresh process (see `verify_saved_model`) against `model`'s own labels on
    `check_images` (None: `default_check_images()`, the package's real images).

    Returns the check report; raises ExportCheckError listing the problems.
    """
    if check_images is None:
        check_images = default_check_images()
    if not len(check_images):
        raise ValueError("check_images must hold at least one image")
    arrays = {}
    for index, image in enumerate(check_images):
        data, pixels = encoded_image(image)
        labels, ties = reference_labels(model, pixels, max_long_side)
        arrays.update({f"bytes_{index}": np.frombuffer(data, np.uint8), f"pixels_{index}": pixels,
                       f"labels_{index}": labels, f"ties_{index}": ties})
    with tempfile.TemporaryDirectory(prefix="keras_deeplab_check_") as folder:
        reference = os.path.join(folder, "reference.npz")
        np.savez(reference, count=len(check_images), **arrays)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, "-m", "keras_deeplab.export", "verify", str(version_dir), "--reference", reference]
        process = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    report = _last_json_line(process.stdout)
    if report is None:
        raise ExportCheckError(f"the check process failed (exit code {process.returncode}):\n"
                               f"{process.stderr[-3000:]}")
    if report["problems"]:
        raise ExportCheckError(f"the SavedModel in {version_dir} failed its checks:\n - "
                               + "\n - ".join(report["problems"]))
    return report


def _last_json_line(text):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def find_xla_ops(graph_def):
    """Descriptions of everything in a GraphDef (and its function library) that needs XLA: XLA ops
    (XlaCallModule, _XlaCompile, ...) and nodes or functions marked `_XlaMustCompile=True`."""
    found = []
    nodes = [("graph", node) for node in graph_def.node]
    nodes += [(function.signature.name, node) for function in graph_def.library.function
              for node in function.node_def]
    for where, node in nodes:
        if node.op in XLA_OPS or node.op.startswith("Xla"):
            found.append(f"op {node.op} ({where}/{node.name})")
        for key in ("_XlaMustCompile", "_XlaCompile"):
            if key in node.attr and node.attr[key].b:
                found.append(f"{key}=True on {where}/{node.name}")
    for function in graph_def.library.function:
        if "_XlaMustCompile" in function.attr and function.attr["_XlaMustCompile"].b:
            found.append(f"function {function.signature.name} has _XlaMustCompile=True")
    return found


def verify_saved_model(version_dir, reference=None):
    """Checks a SavedModel version as TF Serving would load it; returns a report with a list of `problems`.

    Loads it with the TF1 SavedModel loader (tags `serve`) into a Session and checks: the expected signatures
    with their input/output names, dtypes and shapes (`EXPECTED_SIGNATURES`, `EXPECTED_SHAPES`; the classes
    dimension against the export info's `num_classes` when there is one), every signature's method name
    `tensorflow/serving/predict` and dtypes JSON-encodable, no XLA ops, the warmup records run.
    With `reference` (an .npz written by `check_export`: encoded images, pixels and the Keras model's labels)
    it runs both signatures by tensor name and compares labels, padding, sizes, PNGs and probabilities, and
    checks that bytes that are not an image give InvalidArgument (HTTP 400).
    """
    from keras_deeplab.serving.json_tensor import ServingError
    from keras_deeplab.serving.servable import Servable

    problems = []
    try:
        servable = Servable(version_dir, warmup=False)
    except Exception as error:  # noqa: BLE001 - any load failure is a check failure to report
        return {"problems": [f"TF1 SavedModel loader (tags serve) failed: {type(error).__name__}: {error}"]}
    report = {"signatures": sorted(servable.signatures)}
    try:
        for name, (inputs, outputs) in servable.signatures.items():
            for role, infos in (("input", inputs), ("output", outputs)):
                for tensor, info in infos.items():
                    if info.dtype not in JSON_DTYPES:
                        problems.append(f"{name} {role} {tensor} has dtype {info.dtype}, not JSON-encodable")
        for name, signature_def in servable.signature_defs.items():
            if name in servable.signatures and signature_def.method_name != PREDICT_METHOD_NAME:
                problems.append(f"signature {name} has method_name {signature_def.method_name!r}, expected "
                                f"{PREDICT_METHOD_NAME!r}")
        for name, (inputs, outputs) in EXPECTED_SIGNATURES.items():
            if name not in servable.signatures:
                problems.append(f"signature {name} is missing")
                continue
            found = tuple({t: i.dtype for t, i in infos.items()} for infos in servable.signatures[name])
            if found != (inputs, outputs):
                problems.append(f"signature {name} has inputs/outputs {found}, expected {(inputs, outputs)}")
                continue
            problems += _shape_problems(name, servable.signatures[name], _export_num_classes(version_dir))
        problems += [f"XLA: {item}" for item in find_xla_ops(servable.meta_graph.graph_def)]
        try:
            report["warmup_records"] = servable.run_warmup()
            if not report["warmup_records"]:
                problems.append(f"no warmup records in {WARMUP_FILE}")
        except ValueError as error:
            problems.append(f"warmup: {error}")
        if reference is not None and not problems:
            reference = np.load(reference)
            problems += _check_against_reference(servable, reference)
            report["checked_images"] = int(reference["count"])
            try:
                servable.run(SERVING_SIGNATURE, {"image_bytes": np.array([b"this is not an image"], dtype=object)})
                problems.append("bytes that are not an image did not raise an error")
            except ServingError as error:
                if error.status != 400:
                    problems.append(f"bytes that are not an image gave HTTP {error.status}, expected 400")
    finally:
        servable.retire()
    report["problems"] = problems
    return report


def _export_num_classes(version_dir):
    """`num_classes` from the export's info file, or None when there is no readable one."""
    try:
        return int(json.loads((Path(version_dir) / EXPORT_INFO_FILE).read_text())["num_classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _shape_text(shape):
    return "unknown rank" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def _shape_problems(name, signature, num_classes=None):
    """Problems of a signature's (inputs, outputs) `TensorSpecInfo` shapes against `EXPECTED_SHAPES[name]`.

    A -1 there must be -1 (free) in the SignatureDef; the classes dimension must be `num_classes` (any fixed
    positive size when `num_classes` is None); other sizes must match exactly.
    """
    problems = []
    for role, infos, expected_shapes in (("input", signature[0], EXPECTED_SHAPES[name][0]),
                                         ("output", signature[1], EXPECTED_SHAPES[name][1])):
        for tensor, expected in expected_shapes.items():
            shape = infos[tensor].shape
            found = None if shape is None else tuple(-1 if d is None else d for d in shape)
            ok = found is not None and len(found) == len(expected)
            if ok:
                for got, want in zip(found, expected):
                    if want == NUM_CLASSES_DIM:
                        ok = ok and (got == num_classes if num_classes is not None else got > 0)
                    else:
                        ok = ok and got == want
            if not ok:
                wanted = [(num_classes or "C") if d == NUM_CLASSES_DIM else d for d in expected]
                problems.append(f"signature {name} {role} {tensor} has shape {_shape_text(found)}, expected "
                                f"{_shape_text(wanted)}")
    return problems


def _label_mismatch(labels, expected, ties, what):
    """A problem text when `labels` differ from `expected` anywhere but at ties, else None."""
    if labels.shape != expected.shape:
        return f"{what}: shape {labels.shape}, expected {expected.shape}"
    wrong = (labels != expected) & ~ties
    if wrong.any():
        return (f"{what}: differs from the Keras model's argmax at {int(wrong.sum())} of {wrong.size} pixels "
                "(not counting ties)")
    return None


def _check_against_reference(servable, reference):
    import io

    from PIL import Image

    count = int(reference["count"])
    images = [(reference[f"bytes_{i}"].tobytes(), reference[f"pixels_{i}"], reference[f"labels_{i}"],
               reference[f"ties_{i}"]) for i in range(count)]
    problems = []
    out = servable.run(SERVING_SIGNATURE, {"image_bytes": np.array([d for d, *_ in images], dtype=object)})
    height = max(p.shape[0] for _, p, _, _ in images)
    width = max(p.shape[1] for _, p, _, _ in images)
    if out["labels"].shape != (count, height, width):
        return [f"{SERVING_SIGNATURE} labels have shape {out['labels'].shape}, expected {(count, height, width)}"]
    for index, (_, pixels, expected, ties) in enumerate(images):
        h, w = expected.shape
        what = f"{SERVING_SIGNATURE} labels of check image {index} ({h}x{w})"
        problems.append(_label_mismatch(out["labels"][index, :h, :w], expected, ties, what))
        padding = np.ones((height, width), bool)
        padding[:h, :w] = False
        if (out["labels"][index][padding] != PAD_LABEL).any():
            problems.append(f"{what}: padding is not {PAD_LABEL}")
        if tuple(out["image_size"][index]) != (h, w):
            problems.append(f"{what}: image_size {tuple(out['image_size'][index])}, expected {(h, w)}")
        png = np.asarray(Image.open(io.BytesIO(out["label_png_bytes"][index])))
        if png.shape != (h, w) or (png != out["labels"][index, :h, :w]).any():
            problems.append(f"{what}: label_png_bytes does not decode to the labels")
        result = servable.run(IMAGES_SIGNATURE, {"images": pixels[None]})
        what = f"{IMAGES_SIGNATURE} labels of check image {index} ({h}x{w})"
        problems.append(_label_mismatch(result["labels"][0], expected, ties, what))
        probabilities = result["probabilities"][0]
        if probabilities.shape[:2] != (h, w) or not np.allclose(probabilities.sum(-1), 1.0, atol=1e-4):
            problems.append(f"{IMAGES_SIGNATURE} probabilities of check image {index} have shape "
                            f"{probabilities.shape} or do not sum to 1")
    return [p for p in problems if p]


# ----------------------------------------------------------------------------------------------------------
# Command line.

def _export_parser():
    parser = argparse.ArgumentParser(
        prog="deeplab export",
        description="Export a .keras DeepLabV3 model as version N of a TF Serving model folder, with warmup "
                    "requests, and check it as TF Serving would load it. "
                    "'deeplab export verify VERSION_DIR' checks an existing version.",
        epilog="Serve it: docker run --rm -p 8501:8501 -v \"$PWD/saved_models/deeplabv3:/models/deeplabv3\" "
               "-e MODEL_NAME=deeplabv3 tensorflow/serving   (or: deeplab serve --model_name deeplabv3 "
               "--model_base_path saved_models/deeplabv3)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="the trained model, a .keras file")
    source.add_argument("--preset", help="a pretrained model (deeplab presets) or its weight file; its class "
                                         "names, colormap and serving size come with it")
    parser.add_argument("--weights_url", help="with --preset: mirror URL or folder holding the weight file "
                                              "(default: $KERAS_DEEPLAB_WEIGHTS_URL, else the publisher's)")
    parser.add_argument("--base_dir", default="saved_models/deeplabv3",
                        help="model base path holding the numeric version folders (default: %(default)s)")
    parser.add_argument("--version", type=int, help="version number (default: one more than the highest)")
    parser.add_argument("--overwrite", action="store_true", help="replace the version if it exists")
    parser.add_argument("--max_long_side", type=int,
                        help="resize images whose long side is larger to this size for inference (results are "
                             "resized back); default: run on whole images")
    parser.add_argument("--model_name", help="model name for warmup requests and models.config "
                                             "(default: the base folder's name)")
    parser.add_argument("--check_images", nargs="+", metavar="IMAGE",
                        help="JPEG/PNG images the export checks run on, e.g. a few validation frames (default: "
                             "two small CamVid frames shipped with the package)")
    parser.add_argument("--warmup_images", nargs="+", metavar="IMAGE",
                        help="images for the TF Serving warmup requests (default: the first shipped CamVid frame)")
    parser.add_argument("--class_names", nargs="+", metavar="NAME",
                        help="one name per class, stored in the export's info file for deeplab predict")
    parser.add_argument("--colormap", help="palette name stored in the export's info file for deeplab predict")
    parser.add_argument("--no_fold_batch_norm", dest="fold_batch_norm", action="store_false",
                        help="export the model as it is, without folding BatchNorm into the convolutions")
    parser.add_argument("--models_config", metavar="FILE",
                        help="also add/replace this model in a TF Serving models.config file")
    parser.add_argument("--config_base_path",
                        help="base path written into models.config, as the server sees it "
                             "(default: /models/MODEL_NAME, the docker layout)")
    return parser


def _verify_parser():
    parser = argparse.ArgumentParser(prog="deeplab export verify",
                                     description="Check a SavedModel version as TF Serving would load it; prints a "
                                                 "JSON report and exits with 1 if there are problems.")
    parser.add_argument("version_dir")
    parser.add_argument("--reference", help="an .npz of images and expected labels (written by the export)")
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "verify":
        args = _verify_parser().parse_args(argv[1:])
        report = verify_saved_model(args.version_dir, args.reference)
        print(json.dumps(report))
        return 1 if report["problems"] else 0
    args = _export_parser().parse_args(argv)
    import keras

    import keras_deeplab  # noqa: F401 - registers the custom layers for loading

    if args.model and not os.path.exists(args.model):
        raise SystemExit(f"deeplab export: --model {args.model} does not exist")
    for flag, paths in (("--check_images", args.check_images), ("--warmup_images", args.warmup_images)):
        for path in paths or ():
            if not os.path.isfile(path):
                raise SystemExit(f"deeplab export: {flag} {path} is not a file")
    if args.preset:
        from keras_deeplab.presets import load_preset, preset_info
        from keras_deeplab.weights import WeightsError

        try:
            model = load_preset(args.preset, base_url=args.weights_url)
        except (WeightsError, ValueError) as error:
            raise SystemExit(f"deeplab export: --preset {args.preset}: {error}") from error
        info = preset_info(args.preset)
        args.class_names = args.class_names or info.get("class_names")
        args.colormap = args.colormap or info.get("colormap")
        args.max_long_side = args.max_long_side or info.get("max_long_side")
    else:
        model = keras.saving.load_model(args.model, compile=False)
    try:
        path = export_saved_model(model, args.base_dir, args.version, overwrite=args.overwrite,
                                  max_long_side=args.max_long_side, model_name=args.model_name,
                                  check_images=args.check_images, warmup_images=args.warmup_images,
                                  class_names=args.class_names, colormap=args.colormap,
                                  fold_batch_norm=args.fold_batch_norm)
    except (FileExistsError, ExportCheckError, ValueError) as error:
        print(f"deeplab export: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"exported and checked {path}")
    if args.models_config:
        name = args.model_name or Path(args.base_dir).resolve().name
        entry = ModelConfig(name, args.config_base_path or f"/models/{name}")
        models = read_models_config(args.models_config) if os.path.exists(args.models_config) else []
        models = [m for m in models if m.name != name] + [entry]
        write_models_config(args.models_config, models)
        print(f"wrote {args.models_config} ({', '.join(m.name for m in models)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
