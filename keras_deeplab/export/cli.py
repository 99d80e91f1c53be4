"""`deeplab export` (a .keras model or a preset -> a checked version folder, optionally a models.config entry) and
`deeplab export verify VERSION_DIR` (the checks alone; the export runs them so in a fresh process)."""
import argparse
import json
import os
import sys
from pathlib import Path

from keras_deeplab.export.checks import ExportCheckError, verify_saved_model
from keras_deeplab.export.precision import DEFAULT_MIN_LABEL_AGREEMENT, PRECISIONS
from keras_deeplab.export.preset import add_model_source_arguments, load_preset_source
from keras_deeplab.export.publish import export_saved_model
from keras_deeplab.serving.model_config import ModelConfig, read_models_config, write_models_config


def _export_parser():
    parser = argparse.ArgumentParser(
        prog="deeplab export",
        description="Export a .keras DeepLabV3 model as version N of a TF Serving model folder, with warmup "
                    "requests, and check it as TF Serving would load it. "
                    "'deeplab export verify VERSION_DIR' checks an existing version.",
        epilog="Serve it: docker run --rm -p 8501:8501 -v \"$PWD/saved_models/deeplabv3:/models/deeplabv3\" "
               "-e MODEL_NAME=deeplabv3 tensorflow/serving   (or: deeplab serve --model_name deeplabv3 "
               "--model_base_path saved_models/deeplabv3)")
    add_model_source_arguments(parser, "the trained model, a .keras file",
                               "a pretrained model (deeplab presets) or its weight file; its class names, colormap "
                               "and serving size come with it")
    parser.add_argument("--base-dir", "--base_dir", default="saved_models/deeplabv3",
                        help="model base path holding the numeric version folders (default: %(default)s)")
    parser.add_argument("--version", type=int, help="version number (default: one more than the highest)")
    parser.add_argument("--overwrite", action="store_true", help="replace the version if it exists")
    parser.add_argument("--max-long-side", "--max_long_side", type=int,
                        help="resize images whose long side is larger to this size for inference (results are "
                             "resized back); default: run on whole images")
    parser.add_argument("--model-name", "--model_name", help="model name for warmup requests and models.config "
                                                             "(default: the base folder's name)")
    parser.add_argument("--check-images", "--check_images", nargs="+", metavar="IMAGE",
                        help="JPEG/PNG images the export checks run on, e.g. a few validation frames (default: "
                             "two small CamVid frames shipped with the package)")
    parser.add_argument("--warmup-images", "--warmup_images", nargs="+", metavar="IMAGE",
                        help="images for the TF Serving warmup requests (default: the first shipped CamVid frame)")
    parser.add_argument("--class-names", "--class_names", nargs="+", metavar="NAME",
                        help="one name per class, stored in the export's info file for deeplab predict")
    parser.add_argument("--colormap", help="palette name stored in the export's info file for deeplab predict")
    parser.add_argument("--no-fold-batch-norm", "--no_fold_batch_norm", dest="fold_batch_norm", action="store_false",
                        help="export the model as it is, without folding BatchNorm into the convolutions")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="arithmetic of the served graph; bfloat16 took 0.65 of float32's CPU time on a CPU with "
                             "AVX-512 BF16 (lscpu: avx512_bf16; without bf16 arithmetic it is slower); its labels "
                             "must agree with the float32 model's on --min-label-agreement percent of the check "
                             "images' pixels, else the export is refused (signatures and dtypes are the same; "
                             "default: %(default)s)")
    parser.add_argument("--min-label-agreement", "--min_label_agreement", type=float,
                        default=DEFAULT_MIN_LABEL_AGREEMENT, metavar="PERCENT",
                        help="with --precision bfloat16: the least percent of check-image pixels labelled as by the "
                             "float32 model (default: %(default)s)")
    parser.add_argument("--models-config", "--models_config", metavar="FILE",
                        help="also add/replace this model in a TF Serving models.config file")
    parser.add_argument("--config-base-path", "--config_base_path",
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


def _load_model(args):
    """(the model to export, what its info file takes from the source: a preset's class names, colormap and
    serving size; {} for a .keras file)."""
    if args.model:
        import keras

        import keras_deeplab  # noqa: F401 - registers the custom layers for loading

        return keras.saving.load_model(args.model, compile=False), {}
    try:
        return load_preset_source(args)
    except ValueError as error:
        raise SystemExit(f"deeplab export: {error}") from error


def _add_to_models_config(path, name, base_path):
    """Adds (or replaces) model `name` in the models.config at `path`; returns the models it lists."""
    models = read_models_config(path) if os.path.exists(path) else []
    models = [m for m in models if m.name != name] + [ModelConfig(name, base_path)]
    write_models_config(path, models)
    return models


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "verify":
        args = _verify_parser().parse_args(argv[1:])
        report = verify_saved_model(args.version_dir, args.reference)
        print(json.dumps(report))
        return 1 if report["problems"] else 0
    args = _export_parser().parse_args(argv)
    if args.model and not os.path.exists(args.model):
        raise SystemExit(f"deeplab export: --model {args.model} does not exist")
    for flag, paths in (("--check-images", args.check_images), ("--warmup-images", args.warmup_images)):
        for path in paths or ():
            if not os.path.isfile(path):
                raise SystemExit(f"deeplab export: {flag} {path} is not a file")
    model, source_info = _load_model(args)
    try:
        path = export_saved_model(model, args.base_dir, args.version, overwrite=args.overwrite,
                                  max_long_side=args.max_long_side or source_info.get("max_long_side"),
                                  model_name=args.model_name,
                                  check_images=args.check_images, warmup_images=args.warmup_images,
                                  class_names=args.class_names or source_info.get("class_names"),
                                  colormap=args.colormap or source_info.get("colormap"),
                                  fold_batch_norm=args.fold_batch_norm, precision=args.precision,
                                  min_label_agreement=args.min_label_agreement)
    except (FileExistsError, ExportCheckError, ValueError) as error:
        print(f"deeplab export: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"exported and checked {path}")
    if args.models_config:
        name = args.model_name or Path(args.base_dir).resolve().name
        models = _add_to_models_config(args.models_config, name, args.config_base_path or f"/models/{name}")
        print(f"wrote {args.models_config} ({', '.join(m.name for m in models)})")
    return 0
