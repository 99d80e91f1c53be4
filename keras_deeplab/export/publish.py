"""`export_saved_model`: a checked version written atomically into a model's base path (the next number by
default), with its warmup records and info file."""
import json
from pathlib import Path

from keras_deeplab.export.checks import check_export
from keras_deeplab.export.precision import DEFAULT_MIN_LABEL_AGREEMENT, check_precision, with_precision
from keras_deeplab.export.signatures import build_export_archive
from keras_deeplab.export.warmup import default_check_images, write_warmup_requests
from keras_deeplab.serving.contract import (EXPECTED_SIGNATURES, EXPORT_INFO_FILE, PAD_LABEL, atomic_path,
                                            version_folders)


def next_version(base_dir):
    """One more than the highest version under `base_dir`, or 1."""
    return max(version_folders(base_dir), default=0) + 1


def export_saved_model(model, base_dir="saved_models/deeplabv3", version=None, *, overwrite=False,
                       max_long_side=None, model_name=None, check_images=None, warmup_images=None,
                       class_names=None, colormap=None, fold_batch_norm=True, precision="float32",
                       min_label_agreement=DEFAULT_MIN_LABEL_AGREEMENT):
    """Exports `model` as version `version` (next integer when None) of `base_dir` and checks it.

    Args:
        model: a DeepLabV3 (or any Keras model from float images [N, H, W, 3] in [0, 255] to logits).
        base_dir: the model's base path (the folder TF Serving's `--model_base_path` points at).
        version: the version number; None for one more than the highest existing one.
        overwrite: replace an existing version folder instead of raising FileExistsError.
        max_long_side: inference size policy (package doc): None for whole images, else the longest side the
            model sees.
        model_name: the model name written into the warmup requests (default: the base folder's name).
        check_images: images (paths, encoded bytes or uint8 arrays) the checks run on; default: the two real
            images shipped with the package (`sample_images`: CamVid frames, 160x120 JPEG and 96x128 PNG).
        warmup_images: images for the warmup requests; default: the first of those.
        class_names, colormap: written into the export's info file (`assets.extra/keras_deeplab_export.json`)
            for tools that draw the label maps (`deeplab predict`); one name per class.
        fold_batch_norm: serve an inference copy with BatchNorm folded into the convolutions
            (`keras_deeplab.fold`; faster, same labels: the checks compare it with `model` itself).
        precision: "float32", or "bfloat16": the served graph computes in bfloat16 (`export.precision`; 0.65 of
            the float32 CPU time for ResNet-50 OS8 at 513 on a CPU with AVX-512 BF16, slower on CPUs without bf16
            arithmetic: benchmarks/precision.md) with the same signatures and dtypes (int32 labels, float32
            probabilities from float32 logits).
        min_label_agreement: for "bfloat16", the percent of the check images' pixels whose served labels must
            equal those of `model` in float32; the export is refused below it.

    Returns:
        The Path of the written version folder.

    Raises:
        FileExistsError: the version exists and `overwrite` is False.
        ExportCheckError: the SavedModel failed a check (nothing is written under `base_dir` then), e.g. a
            bfloat16 export's labels agree with the float32 model's on less than `min_label_agreement` percent.
    """
    check_precision(precision)
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
    # Staged in a hidden folder beside the versions (TF Serving ignores non-numeric names), renamed once checked.
    with atomic_path(target, folder=True, overwrite=overwrite) as staging:
        if fold_batch_norm:
            from keras_deeplab.fold import fold_batch_norm as folded_copy

            served = folded_copy(model)
        else:
            served = model
        archive, num_classes = build_export_archive(with_precision(served, precision), max_long_side)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names, the model has {num_classes} classes")
        archive.write_out(str(staging), verbose=False)
        if check_images is None or warmup_images is None:  # read (and warned about) once
            defaults = default_check_images()
            check_images = defaults if check_images is None else check_images
            warmup_images = defaults[:1] if warmup_images is None else warmup_images
        write_warmup_requests(staging, warmup_images, model_name)
        info = {"num_classes": num_classes, "max_long_side": max_long_side, "pad_label": PAD_LABEL,
                "batch_norm_folded": bool(fold_batch_norm), "precision": precision,
                "class_names": None if class_names is None else [str(n) for n in class_names],
                "colormap": colormap,
                "signatures": {name: {"inputs": inputs, "outputs": outputs}
                               for name, (inputs, outputs) in EXPECTED_SIGNATURES.items()},
                "versions": _library_versions()}
        (staging / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2))
        threshold = min_label_agreement if precision == "bfloat16" else None  # float32: exact but at ties
        report = check_export(staging, model, max_long_side, check_images, min_label_agreement=threshold)
        # percent of the check images' pixels labelled as by `model` in float32, the lower of the two signatures
        info["label_agreement"] = {"percent": min(report["label_agreement"].values()), "min_percent": threshold,
                                   "check_images": report["checked_images"]}
        (staging / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2))
    return target


def _library_versions():
    import keras
    import tensorflow as tf

    import keras_deeplab

    return {"keras_deeplab": keras_deeplab.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}
