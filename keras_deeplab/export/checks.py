"""The checks of an export, as TF Serving loads it: `check_export` runs `verify_saved_model` in a fresh process
(`python -m keras_deeplab.export verify`) against the in-process Keras model's labels on real images: equal but at
ties for a float32 export, equal on at least a given percent of the pixels for a bfloat16 one."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from keras_deeplab.export.precision import label_agreement
from keras_deeplab.export.signatures import logits_at_input_size
from keras_deeplab.export.warmup import default_check_images, encoded_image
from keras_deeplab.serving.contract import (EXPECTED_SHAPES, EXPECTED_SIGNATURES, EXPORT_INFO_FILE, IMAGE_BYTES,
                                            IMAGE_SIZE, IMAGES, IMAGES_SIGNATURE, LABEL_PNG_BYTES, LABELS,
                                            NUM_CLASSES_DIM, PAD_LABEL, PREDICT_METHOD_NAME, PROBABILITIES,
                                            SERVING_SIGNATURE, WARMUP_FILE)
from keras_deeplab.serving.json_tensor import JSON_DTYPES, ServingError

XLA_OPS = frozenset({"XlaCallModule", "XlaLaunch", "XlaLaunchV2", "_XlaCompile", "_XlaRun", "_XlaMerge"})
# Logit margins below this (relative to the top logit) are ties that float rounding may break either way.
TIE_TOLERANCE = 1e-4


class ExportCheckError(RuntimeError):
    """The exported SavedModel failed a check; the message lists every problem found."""


def reference_labels(model, pixels, max_long_side=None):
    """(labels [H, W], ties [H, W] bool) of the in-process Keras model for one uint8 image under the size policy.

    `ties` marks pixels whose two best logits are closer than float rounding can separate.
    """
    logits = np.asarray(logits_at_input_size(model, pixels[None], max_long_side))[0]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    ties = (top2[..., 1] - top2[..., 0]) <= TIE_TOLERANCE * np.maximum(1.0, np.abs(top2[..., 1]))
    return np.argmax(logits, axis=-1).astype(np.int32), ties


def check_export(version_dir, model, max_long_side, check_images=None, timeout=900, min_label_agreement=None):
    """Checks a written version in a fresh process (see `verify_saved_model`) against `model`'s own labels on
    `check_images` (None: `default_check_images()`, the package's real images).

    `min_label_agreement`: None to require `model`'s labels at every pixel but ties (a float32 export), else the
    percent of all pixels whose labels must equal `model`'s (a bfloat16 export against the float32 model).
    Returns the check report (with each signature's `label_agreement` percent); raises ExportCheckError listing
    the problems.
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
        if min_label_agreement is not None:
            arrays["min_label_agreement"] = np.float64(min_label_agreement)
        np.savez(reference, count=len(check_images), **arrays)
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, "-m", "keras_deeplab.export", "verify", str(version_dir), "--reference",
                   reference]
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
    it runs both signatures by tensor name and compares labels (equal but at ties, or, where the reference holds
    `min_label_agreement`, equal on at least that percent of the pixels; the percent is reported per signature as
    `label_agreement`), padding, sizes, PNGs and probabilities, and checks that bytes that are not an image give
    InvalidArgument (HTTP 400).
    """
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
            found, report["label_agreement"] = _check_against_reference(servable, reference)
            problems += found
            report["checked_images"] = int(reference["count"])
            try:
                servable.run(SERVING_SIGNATURE, {IMAGE_BYTES: np.array([b"this is not an image"], dtype=object)})
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


def _shape_mismatch(labels, expected, what):
    """A problem text when `labels` and `expected` differ in shape, else None."""
    if labels.shape != expected.shape:
        return f"{what}: shape {labels.shape}, expected {expected.shape}"
    return None


def _label_mismatch(labels, expected, ties, what):
    """A problem text when `labels` differ from `expected` anywhere but at ties, else None."""
    if labels.shape != expected.shape:
        return _shape_mismatch(labels, expected, what)
    wrong = (labels != expected) & ~ties
    if wrong.any():
        return (f"{what}: differs from the Keras model's argmax at {int(wrong.sum())} of {wrong.size} pixels "
                "(not counting ties)")
    return None


def _agreement_problem(name, agreement, min_agreement, count):
    """A problem text when the labels of signature `name` agree with the reference's on less than
    `min_agreement` percent of the pixels of `count` images, else None."""
    if agreement >= min_agreement:
        return None
    return (f"{name} labels agree with the reference (float32) model's on {agreement:.2f} % of the pixels of the "
            f"{count} check images, below the required {min_agreement:.2f} % (min_label_agreement)")


def _check_against_reference(servable, reference):
    """(problems, {signature: percent of the check images' pixels whose labels equal the reference's})."""
    import io

    from PIL import Image

    count = int(reference["count"])
    min_agreement = float(reference["min_label_agreement"]) if "min_label_agreement" in reference else None
    found = {SERVING_SIGNATURE: [], IMAGES_SIGNATURE: []}
    images = [(reference[f"bytes_{i}"].tobytes(), reference[f"pixels_{i}"], reference[f"labels_{i}"],
               reference[f"ties_{i}"]) for i in range(count)]
    problems = []
    out = servable.run(SERVING_SIGNATURE, {IMAGE_BYTES: np.array([d for d, *_ in images], dtype=object)})
    height = max(p.shape[0] for _, p, _, _ in images)
    width = max(p.shape[1] for _, p, _, _ in images)
    if out[LABELS].shape != (count, height, width):
        return [f"{SERVING_SIGNATURE} labels have shape {out['labels'].shape}, expected {(count, height, width)}"], {}
    for index, (_, pixels, expected, ties) in enumerate(images):
        h, w = expected.shape
        what = f"{SERVING_SIGNATURE} labels of check image {index} ({h}x{w})"
        found[SERVING_SIGNATURE].append(out[LABELS][index, :h, :w])
        if min_agreement is None:
            problems.append(_label_mismatch(out[LABELS][index, :h, :w], expected, ties, what))
        padding = np.ones((height, width), bool)
        padding[:h, :w] = False
        if (out[LABELS][index][padding] != PAD_LABEL).any():
            problems.append(f"{what}: padding is not {PAD_LABEL}")
        if tuple(out[IMAGE_SIZE][index]) != (h, w):
            problems.append(f"{what}: image_size {tuple(out['image_size'][index])}, expected {(h, w)}")
        png = np.asarray(Image.open(io.BytesIO(out[LABEL_PNG_BYTES][index])))
        if png.shape != (h, w) or (png != out[LABELS][index, :h, :w]).any():
            problems.append(f"{what}: label_png_bytes does not decode to the labels")
        result = servable.run(IMAGES_SIGNATURE, {IMAGES: pixels[None]})
        what = f"{IMAGES_SIGNATURE} labels of check image {index} ({h}x{w})"
        found[IMAGES_SIGNATURE].append(result[LABELS][0])
        problems.append(_label_mismatch(result[LABELS][0], expected, ties, what) if min_agreement is None
                        else _shape_mismatch(result[LABELS][0], expected, what))
        probabilities = result[PROBABILITIES][0]
        if probabilities.shape[:2] != (h, w) or not np.allclose(probabilities.sum(-1), 1.0, atol=1e-4):
            problems.append(f"{IMAGES_SIGNATURE} probabilities of check image {index} have shape "
                            f"{probabilities.shape} or do not sum to 1")
    expected = [labels for _, _, labels, _ in images]
    agreement = {name: label_agreement(labels, expected) for name, labels in found.items()}
    if min_agreement is not None:
        problems += [_agreement_problem(name, value, min_agreement, count) for name, value in agreement.items()]
    return [p for p in problems if p], agreement
