"""Pretrained DeepLabV3 presets, described by data (as torchvision's weight enums and keras-hub's presets):
each names its architecture, its weight file (URL, size, hash), its classes and colormap, its preprocessing and
its published metrics. `load_preset` builds the model; `deeplab presets` lists them.

Weights are fetched through `keras_deeplab.weights` (cache under `$KERAS_HOME/models`, mirror via
`KERAS_DEEPLAB_WEIGHTS_URL`); torchvision's files are read without PyTorch (`keras_deeplab.pth`).
"""
import argparse
import dataclasses
import os

import keras

from keras_deeplab import convert
from keras_deeplab.backbones.imagenet import IMAGENET_WEIGHTS
from keras_deeplab.convert import MOBILENET_V3_CONFIG, TORCHVISION_CONFIG
from keras_deeplab.model import DeepLabV3
from keras_deeplab.viz import class_names
from keras_deeplab.weights import WeightsFile, cache_path, fetch, is_cached

TORCHVISION_MODELS_URL = "https://download.pytorch.org/models/"
# The classifier layers a different `num_classes` replaces.
CLASSIFIER_LAYERS = ("logits_conv", "aux_logits_conv")
# torchvision's published evaluation: COCO val2017, the 20 VOC categories, images resized to 520 (shorter side).
COCO_VOC_EVALUATION = "COCO val2017 subset with the 20 VOC categories, shorter side resized to 520"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named pretrained model. `architecture` holds `DeepLabV3` arguments; `weights_format` says how the file
    maps onto the model ("torchvision": a torchvision state dict; "keras.applications": ImageNet backbone
    weights, the classifier is new). `max_long_side` is the serving size policy (`keras_deeplab.export`)."""

    name: str
    description: str
    architecture: dict
    weights: WeightsFile
    weights_format: str
    num_classes: int | None = None
    class_names: tuple = ()
    colormap: str | None = None
    preprocessing: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)
    max_long_side: int | None = None

    @property
    def backbone(self):
        return self.architecture["backbone"]


def _torchvision_coco_voc(name, backbone, file, size, sha256, miou, pixel_accuracy, config):
    return Preset(
        name=name,
        description=f"torchvision's {name.removesuffix('_coco_voc')} trained on COCO with the 20 VOC categories "
                    "(COCO_WITH_VOC_LABELS_V1)",
        architecture={"backbone": backbone, **config, "preprocessing": "torch"},
        weights=WeightsFile(file, TORCHVISION_MODELS_URL, size, sha256),
        weights_format="torchvision",
        num_classes=21,
        class_names=tuple(class_names("pascal")),
        colormap="pascal",
        preprocessing="RGB in [0, 255], ImageNet mean/std inside the model (torchvision's)",
        metrics={"mean_iou": miou, "pixel_accuracy": pixel_accuracy, "dataset": COCO_VOC_EVALUATION},
        # torchvision evaluates at a shorter side of 520; a 4:3 photo then has a long side of 693
        max_long_side=693,
    )


def _imagenet_backbone(backbone, weights):
    return Preset(
        name=f"{backbone}_imagenet",
        description=f"DeepLabV3 with keras.applications' ImageNet {backbone} backbone; ASPP and classifier new "
                    "(the training configs' starting point)",
        architecture={"backbone": backbone},
        weights=weights,
        weights_format="keras.applications",
        preprocessing="RGB in [0, 255], the backbone's keras.applications preprocessing inside the model",
        metrics={"imagenet_backbone": True},
    )


PRESETS = {preset.name: preset for preset in (
    _torchvision_coco_voc("deeplabv3_resnet50_coco_voc", "resnet50_v1.5", "deeplabv3_resnet50_coco-cd0a2569.pth",
                          168_312_152, "cd0a25694c4a0f7106b38f4938bf90a874f2f241cc410b8f63c7024399538f06",
                          66.4, 92.4, TORCHVISION_CONFIG),
    _torchvision_coco_voc("deeplabv3_resnet101_coco_voc", "resnet101_v1.5", "deeplabv3_resnet101_coco-586e9e4e.pth",
                          244_545_539, "586e9e4e203fcbf17e1ad45533d8d33ab133fc762bf03101c5dd743995c08c0d",
                          67.4, 92.4, TORCHVISION_CONFIG),
    _torchvision_coco_voc("deeplabv3_mobilenet_v3_large_coco_voc", "mobilenet_v3_large",
                          "deeplabv3_mobilenet_v3_large-fc3c493d.pth", 44_356_159,
                          "fc3c493d68e89cc31ef488c803d5d7dd2f3190fb570598faa49fef69be8e5e70",
                          60.3, 91.2, MOBILENET_V3_CONFIG),
    *(_imagenet_backbone(backbone, weights) for backbone, weights in IMAGENET_WEIGHTS.items()),
)}


def get_preset(name):
    """The preset called `name`, with a clear error listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)} (or a local weights file)")
    return PRESETS[name]


def preset_for_file(path):
    """The preset whose weight file is named like `path`, else None."""
    name = os.path.basename(path)
    return next((preset for preset in PRESETS.values() if preset.weights.file == name), None)


def preset_info(name_or_path):
    """What serving and pictures need of a preset (class names, colormap, max_long_side); {} for other sources."""
    name_or_path = os.fspath(name_or_path)
    preset = preset_for_file(name_or_path) if os.path.isfile(name_or_path) else PRESETS.get(name_or_path)
    if preset is None or not preset.class_names:
        return {}
    return {"class_names": list(preset.class_names), "colormap": preset.colormap,
            "max_long_side": preset.max_long_side}


def _resolve(name_or_path, base_url, cache_dir):
    """(preset or None, local weights path) of a preset name or a local file."""
    if os.path.isfile(name_or_path):
        preset = preset_for_file(name_or_path)
        if preset is not None:  # a preset's own file placed by hand: still checked
            return preset, fetch(preset.weights, base_url=os.path.dirname(os.path.abspath(name_or_path)))
        return None, name_or_path
    if os.path.sep in name_or_path or name_or_path.endswith((".pth", ".pt", ".npz", ".keras")):
        raise FileNotFoundError(f"No such weights file: {name_or_path!r}")
    preset = get_preset(name_or_path)
    return preset, fetch(preset.weights, base_url=base_url, cache_dir=cache_dir)


def _preset_model(preset, path, num_classes, overrides):
    """The preset's model built with its architecture (and `overrides`) from its weight file at `path`."""
    architecture = {**preset.architecture, **overrides}
    if preset.weights_format == "keras.applications":
        if num_classes is None:
            raise ValueError(f"Preset {preset.name!r} has an ImageNet backbone and a new classifier: "
                             "pass num_classes")
        return DeepLabV3(num_classes=num_classes, backbone_weights=path, **architecture)
    state = convert.load_state_dict(path)
    if not architecture.get("aux_head"):
        state = convert.without_aux_head(state)
    model = DeepLabV3(num_classes=preset.num_classes, **architecture)
    convert.assign_torchvision_weights(model, state)
    return model


def replace_classifier(model, num_classes, **overrides):
    """A copy of `model` with `num_classes` outputs (and other `DeepLabV3` arguments `overrides`): every weight
    carried over, but a new classifier's (`CLASSIFIER_LAYERS`, freshly initialized), for fine-tuning."""
    clone = DeepLabV3.from_config({**model.get_config(), **overrides, "num_classes": int(num_classes)})
    keep_classifier = int(num_classes) == model.num_classes
    for layer in clone.layers:
        if layer.weights and (keep_classifier or layer.name not in CLASSIFIER_LAYERS):
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone


def load_preset(name_or_path, *, num_classes=None, base_url=None, cache_dir=None, **overrides):
    """A `DeepLabV3` with pretrained weights: a preset name (downloaded and cached, hash checked), a preset's
    weight file on disk, another torchvision state dict (`.pth`, `.npz`), or a saved `.keras` model.

    `num_classes` other than the preset's replaces the classifier (fine-tuning); `overrides` replace
    architecture arguments that leave the weights' shapes alone (e.g. `atrous_implementation`).
    """
    name_or_path = os.fspath(name_or_path)
    preset, path = _resolve(name_or_path, base_url, cache_dir)
    if preset is not None:
        model, overrides = _preset_model(preset, path, num_classes, overrides), {}
    elif path.endswith(".keras"):
        model = keras.models.load_model(path)
    else:
        model = convert.from_torchvision(path, aux_head=overrides.pop("aux_head", None))
    if overrides or (num_classes is not None and num_classes != model.num_classes):
        model = replace_classifier(model, num_classes or model.num_classes, **overrides)
    return model


def format_size(size):
    return "?" if size is None else f"{size / 2 ** 20:.1f} MiB"


def preset_rows(cache_dir=None):
    """One row per preset for `deeplab presets`: name, backbone, classes, published metric, size, cached."""
    rows = []
    for preset in PRESETS.values():
        metric = (f"mIoU {preset.metrics['mean_iou']}, pixel acc {preset.metrics['pixel_accuracy']}"
                  if "mean_iou" in preset.metrics else "ImageNet backbone, new classifier")
        rows.append({"preset": preset.name, "backbone": preset.backbone,
                     "classes": preset.num_classes or "any (num_classes=)", "published": metric,
                     "file size": format_size(preset.weights.size),
                     "cached": "yes" if is_cached(preset.weights, cache_dir) else "no"})
    return rows


def _parser():
    parser = argparse.ArgumentParser(prog="deeplab presets", description=main.__doc__)
    parser.add_argument("--cache-dir", "--cache_dir", help="cache root (default: $KERAS_HOME or ~/.keras)")
    parser.add_argument("--paths", action="store_true", help="also print each file's URL and cache path")
    return parser


def main(argv=None):
    """`deeplab presets`: the pretrained models, and whether each is in the local cache."""
    args = _parser().parse_args(argv)
    rows = preset_rows(args.cache_dir)
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())
    if args.paths:
        for preset in PRESETS.values():
            print(f"{preset.name}: {preset.weights.url()} -> {cache_path(preset.weights, args.cache_dir)}")
    print(COCO_VOC_EVALUATION.join(("\nPublished metrics (torchvision): ", ".")))
    return 0
