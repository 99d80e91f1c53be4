"""`deeplab predict`: segment images with an exported SavedModel, a TF Serving REST endpoint or a pretrained
preset, and write for each image its label map (palette PNG) and a colour overlay with a legend.

`--preset` runs the pretrained Keras model in this process under the export's size policy, with the preset's class
names and colormap. The other two backends speak the export's serving contract: encoded image bytes in, `labels`
(int32 [N, H, W], padded with 255 to the largest image of the batch) and `image_size` (int32 [N, 2]) out. `--model`
runs the SavedModel through the same code path as `deeplab serve` (`keras_deeplab.serving.servable.Servable`: the
TF1 SavedModel loader, tags `serve`, a Session run by the signature's tensor names), which is how TF Serving runs
it.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from keras_deeplab import viz
from keras_deeplab.export.preset import add_model_source_arguments, load_preset_source
from keras_deeplab.serving.contract import (EXPORT_INFO_FILE, IMAGE_BYTES, IMAGE_SIZE, LABELS, SERVING_SIGNATURE,
                                            version_folders)
from keras_deeplab.serving.images import decode_image

DEFAULT_COLORMAP = "camvid"


class PredictError(Exception):
    """A problem with the inputs, the model or the server, reported to the user without a traceback."""


def resolve_version_dir(path, version=None):
    """The SavedModel folder to load: `path` itself if it holds `saved_model.pb`, else its numeric version
    folder `version` (default: the highest one), as TF Serving picks it from a model base path."""
    path = Path(path)
    if not path.is_dir():
        raise PredictError(f"model directory not found: {path}")
    if (path / "saved_model.pb").is_file():
        if version is not None:
            raise PredictError(f"{path} is a SavedModel version folder; --version needs the base folder above it")
        return path
    versions = {v: folder for v, folder in version_folders(path).items() if (folder / "saved_model.pb").is_file()}
    if not versions:
        raise PredictError(f"no SavedModel in {path}: expected saved_model.pb or numeric version folders holding one")
    if version is None:
        return versions[max(versions)]
    if version not in versions:
        raise PredictError(f"version {version} not found in {path}; available: {sorted(versions)}")
    return versions[version]


def read_export_info(version_dir):
    """The export's info file (`assets.extra/keras_deeplab_export.json`) as a dict, {} if there is none.

    `colormap` (a name in `viz.COLORMAPS`) and `class_names` in it choose the pictures' palette and legend.
    """
    path = Path(version_dir) / EXPORT_INFO_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PredictError(f"corrupt export info {path}: {error}") from error


class SavedModelSegmenter:
    """Runs the `serving_default` signature of an exported SavedModel on encoded images, loaded as `deeplab serve`
    and TF Serving load it (`Servable`: TF1 loader, Session, tensor names; no warmup). `close()` frees the
    Session."""

    def __init__(self, version_dir):
        from keras_deeplab.serving.servable import Servable  # only this backend needs TensorFlow

        try:
            self._servable = Servable(version_dir, warmup=False)
        except Exception as error:  # TF raises many types for unreadable SavedModels
            raise PredictError(f"cannot load SavedModel {version_dir}: {error}") from error
        signatures = self._servable.signatures
        missing = None
        if SERVING_SIGNATURE not in signatures:
            missing = f"has no {SERVING_SIGNATURE!r} signature (it has {sorted(signatures)})"
        elif IMAGE_BYTES not in signatures[SERVING_SIGNATURE][0] or not {LABELS, IMAGE_SIZE} <= set(
                signatures[SERVING_SIGNATURE][1]):
            inputs, outputs = signatures[SERVING_SIGNATURE]
            missing = (f"signature {SERVING_SIGNATURE!r} takes {sorted(inputs)} and returns {sorted(outputs)}; "
                       f"expected {IMAGE_BYTES} -> {LABELS}, {IMAGE_SIZE}")
        if missing:
            self.close()
            raise PredictError(f"SavedModel {version_dir} {missing}")

    def __call__(self, encoded_images):
        """Label maps (int arrays [H, W], one per image, padding cut off) of a list of encoded images."""
        from keras_deeplab.serving.json_tensor import ServingError

        try:
            outputs = self._servable.run(SERVING_SIGNATURE, {IMAGE_BYTES: np.array(encoded_images, dtype=object)})
        except ServingError as error:  # e.g. a format the graph cannot decode
            raise PredictError(f"the SavedModel rejected the input: {error.message.splitlines()[0]}") from error
        labels, sizes = outputs[LABELS], outputs[IMAGE_SIZE]
        return [label_map[:height, :width] for label_map, (height, width) in zip(labels, sizes)]

    def close(self):
        self._servable.retire()


class ServingSegmenter:
    """Asks a TF Serving compatible REST endpoint (`keras_deeplab.serving.TFServingClient`) for label maps."""

    def __init__(self, url, model_name, version=None, batch_size=1):
        from keras_deeplab.serving import TFServingClient

        self._client = TFServingClient(url, model_name, version=version, batch_size=batch_size)

    def __call__(self, encoded_images):
        from keras_deeplab.serving import TFServingError

        try:
            return self._client.predict(encoded_images)
        except TFServingError as error:  # unreachable server, unknown model or version, bad request
            raise PredictError(f"model server: {error}") from error

    def close(self):
        self._client.close()


class KerasSegmenter:
    """Label maps from a Keras model in this process, under the export's size policy (`max_long_side`)."""

    def __init__(self, model, max_long_side=None):
        self._model, self._max_long_side = model, max_long_side

    def __call__(self, encoded_images):
        from keras_deeplab.export import logits_at_input_size

        label_maps = []
        for data in encoded_images:
            pixels = decode_image(data)
            logits = logits_at_input_size(self._model, pixels[np.newaxis], self._max_long_side)
            label_maps.append(np.argmax(np.asarray(logits[0]), axis=-1).astype(np.int32))
        return label_maps

    def close(self):
        pass


def load_image(path):
    """The file's bytes and its decoded RGB pixels; a missing or undecodable file is named in the error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PredictError(f"cannot read input image {path}: {error.strerror or error}") from error
    try:
        return data, decode_image(data)
    except ValueError as error:
        raise PredictError(f"cannot decode input image {path}: {error}") from error


def _parser():
    parser = argparse.ArgumentParser(
        prog="deeplab predict",
        description="Segment images with an exported SavedModel (--model), a TF Serving REST endpoint (--url) "
                    "or a pretrained preset (--preset), "
                    "writing OUT/<name>_labels.png (palette PNG whose pixel values are class ids) and "
                    "OUT/<name>_overlay.png (colours blended on the image, legend of the classes present).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    source = add_model_source_arguments(
        parser, "SavedModel version folder, or a base folder of numeric versions (highest is used)",
        "a pretrained model (deeplab presets) or its weight file, run in Keras at the preset's serving size",
        metavar="DIR")
    source.add_argument("--url", help="TF Serving REST address, e.g. http://localhost:8501")
    parser.add_argument("--model-name", "--model_name", default="deeplabv3",
                        help="model name on the server (default: %(default)s)")
    parser.add_argument("--version", type=int, help="model version (default: the highest / the server's choice)")
    parser.add_argument("--colormap", choices=viz.COLORMAPS,
                        help="palette and class names (default: the export's info file, else "
                             f"{DEFAULT_COLORMAP})")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask (default: %(default)s)")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=1,
                        help="images per request (default: %(default)s)")
    parser.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    return parser


def _check_inputs(paths):
    """Fail before loading a model if an input is missing or two inputs would write the same outputs."""
    stems = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise PredictError(f"input image not found: {path}")
        if path.stem in stems:
            raise PredictError(f"{stems[path.stem]} and {path} would write the same outputs ({path.stem}_*.png)")
        stems[path.stem] = path


def _run(args):
    _check_inputs(args.images)
    if args.batch_size < 1:
        raise PredictError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise PredictError(f"--alpha must lie in [0, 1], got {args.alpha}")
    info = {}
    if args.model:
        version_dir = resolve_version_dir(args.model, args.version)
        info = read_export_info(version_dir)
        segment = SavedModelSegmenter(version_dir)
    elif args.preset:
        try:
            model, info = load_preset_source(args)
        except ValueError as error:
            raise PredictError(str(error)) from error
        segment = KerasSegmenter(model, info.get("max_long_side"))
    else:
        segment = ServingSegmenter(args.url, args.model_name, args.version, args.batch_size)
    try:
        _write_pictures(args, info, segment)
    finally:
        segment.close()


def _write_pictures(args, info, segment):
    colormap_name = args.colormap or info.get("colormap") or DEFAULT_COLORMAP
    if colormap_name not in viz.COLORMAPS:
        raise PredictError(f"the export info names an unknown colormap {colormap_name!r}; pass --colormap")
    colormap = viz.get_colormap(colormap_name)
    names = (None if args.colormap else info.get("class_names")) or viz.class_names(colormap_name)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(args.images), args.batch_size):
        paths = [Path(p) for p in args.images[start:start + args.batch_size]]
        encoded, pixels = zip(*(load_image(p) for p in paths))
        try:
            label_maps = segment(list(encoded))
        except PredictError as error:
            raise PredictError(f"{', '.join(map(str, paths))}: {error}") from error
        for path, image, labels in zip(paths, pixels, label_maps):
            if labels.shape != image.shape[:2]:
                raise PredictError(f"the model returned labels of size {list(labels.shape)} for {path}, "
                                   f"which is {list(image.shape[:2])}")
            label_path, overlay_path = out / f"{path.stem}_labels.png", out / f"{path.stem}_overlay.png"
            viz.save_label_png(labels, label_path, colormap)
            viz.save_overlay(image, labels, overlay_path, colormap, alpha=args.alpha, class_names=names)
            print(f"{path}: wrote {label_path} and {overlay_path}")


def main(argv=None):
    """Entry point of `deeplab predict`; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except PredictError as error:
        print(f"deeplab predict: error: {error}", file=sys.stderr)
        return 1
    return 0
