"""torchvision's DeepLabV3 weights (deeplabv3_resnet50 / deeplabv3_resnet101 / deeplabv3_mobilenet_v3_large) in a
keras_deeplab.DeepLabV3.

The mapping runs from the Keras model to torchvision's names: every weight-bearing layer of the model has one
torchvision module (name rules below) and every variable one parameter or buffer of it, so a state dict must
cover the model exactly; anything missing, left over or of the wrong shape is an error naming the key.
"""
import os
import re

import keras
import numpy as np

from keras_deeplab import pth
from keras_deeplab.layers import ASPP
from keras_deeplab.model import DeepLabV3

# torchvision's fixed DeepLabV3 configuration (torchvision.models.segmentation.deeplabv3).
TORCHVISION_CONFIG = {"output_stride": 8, "multi_grid": (1, 1, 1), "atrous_rates": (12, 24, 36),
                      "head_conv": True, "aspp_dropout": 0.5}
# deeplabv3_mobilenet_v3_large: the same head on MobileNetV3-Large at output stride 16 (torchvision's dilated=True),
# recognized by its last backbone conv (features[16]).
MOBILENET_V3_CONFIG = {**TORCHVISION_CONFIG, "output_stride": 16}
MOBILENET_V3_LARGE_KEY = "backbone.16.0.weight"
# ResNet depth by the number of bottleneck units in torchvision's `layer3`.
DEPTH_BY_LAYER3_UNITS = {6: 50, 23: 101}
NUM_CLASSES_KEY = "classifier.4.weight"
AUX_PREFIX = "aux_classifier."

# Keras layer -> torchvision module, for the layers that occur once.
MODULES = {
    "conv1_conv": "backbone.conv1",
    "conv1_bn": "backbone.bn1",
    "head_conv": "classifier.1",
    "head_bn": "classifier.2",
    "logits_conv": "classifier.4",
    "aux_conv": "aux_classifier.0",
    "aux_bn": "aux_classifier.1",
    "aux_logits_conv": "aux_classifier.4",
}
# Bottleneck units: Keras `conv{stage}_block{unit}_{part}` -> torchvision
# `backbone.layer{stage - 1}.{unit - 1}.{module}`.
UNIT_LAYER = re.compile(r"conv(?P<stage>[2-5])_block(?P<unit>\d+)_(?P<part>[0-3]_(?:conv|bn))")
UNIT_MODULES = {"0_conv": "downsample.0", "0_bn": "downsample.1",
                **{f"{i}_{kind}": f"{kind}{i}" for i in (1, 2, 3) for kind in ("conv", "bn")}}
# MobileNetV3 layers carry their torchvision module's name with "." written "_" (backbones/mobilenet_v3.py).
MOBILENET_V3_LAYER = re.compile(r"backbone_\d+(?:_block_\d+)?_(?:\d+|fc[12])")
# ASPP branch i -> `classifier.0.convs.{i}.{position}` (its conv; +1 for its BN): position 0, except for the
# pooling branch, whose module 0 is the pool itself.
ASPP_BRANCH = "classifier.0.convs.{index}.{position}"
ASPP_PROJECT = ("classifier.0.project.0", "classifier.0.project.1")
# Keras variable -> torchvision parameter/buffer, per layer kind.
PARAMETERS = {
    keras.layers.Conv2D: {"kernel": "weight", "bias": "bias"},
    keras.layers.DepthwiseConv2D: {"kernel": "weight", "bias": "bias"},
    keras.layers.BatchNormalization: {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                                      "moving_variance": "running_var"},
}
# A torch kernel's axes in Keras order, per layer kind: OIHW -> HWIO; depthwise (C, 1, H, W) -> (H, W, C, 1).
KERNEL_AXES = {keras.layers.Conv2D: (2, 3, 1, 0), keras.layers.DepthwiseConv2D: (2, 3, 0, 1)}
# BatchNorm buffers torchvision saves that inference does not use.
IGNORED_BUFFER = "num_batches_tracked"


def load_state_dict(source):
    """A torchvision state dict as {key: numpy array} from a mapping (numpy arrays or torch tensors), an
    `.npz` file, or a `.pth`/`.pt` file as torch.save writes it (read by keras_deeplab.pth, without torch)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such state dict file: {path!r}")
        if path.endswith(".npz"):
            with np.load(path) as archive:
                return {key: archive[key] for key in archive.files}
        if not path.endswith((".pth", ".pt")):
            raise ValueError(f"Unsupported state dict file {path!r}: expected .npz, .pth or .pt")
        return pth.load_state_dict(path)
    return {key: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            for key, value in source.items()}


def torchvision_module(layer_name):
    """The torchvision module name of the (non-ASPP) Keras layer `layer_name`."""
    if layer_name in MODULES:
        return MODULES[layer_name]
    if MOBILENET_V3_LAYER.fullmatch(layer_name):
        return layer_name.replace("_", ".")
    match = UNIT_LAYER.fullmatch(layer_name)
    if match is None:
        raise ValueError(f"Layer {layer_name!r} has no counterpart in torchvision's DeepLabV3")
    return (f"backbone.layer{int(match['stage']) - 1}.{int(match['unit']) - 1}."
            f"{UNIT_MODULES[match['part']]}")


def _aspp_modules(aspp):
    for index, branch in enumerate(aspp.branches()):
        position = 1 if branch.kind == "pooling" else 0
        yield branch.conv, ASPP_BRANCH.format(index=index, position=position)
        yield branch.bn, ASPP_BRANCH.format(index=index, position=position + 1)
    yield from zip((aspp.project_conv, aspp.project_bn), ASPP_PROJECT)


def _torchvision_variables(model):
    """(torchvision state dict key, Keras variable, its layer kind's KERNEL_AXES or None) for every variable."""
    for layer in model.layers:
        if isinstance(layer, ASPP):
            pairs = _aspp_modules(layer)
        elif layer.weights:
            pairs = [(layer, torchvision_module(layer.name))]
        else:
            continue
        for sublayer, module in pairs:
            kind = next(kind for kind in PARAMETERS if isinstance(sublayer, kind))
            for variable in sublayer.weights:
                yield f"{module}.{PARAMETERS[kind][variable.name]}", variable, KERNEL_AXES.get(kind)


def torchvision_keys(model):
    """{torchvision state dict key: Keras variable} for every variable of `model`."""
    return {key: variable for key, variable, _ in _torchvision_variables(model)}


def _to_keras_layout(array, kernel_axes):
    """Conv kernels (4-D) from torch to Keras layout; everything else unchanged."""
    return np.transpose(array, kernel_axes) if kernel_axes and array.ndim == 4 else array


def _torch_shape(keras_shape, kernel_axes):
    """A Keras variable shape in torch layout."""
    return tuple(keras_shape[i] for i in np.argsort(kernel_axes)) if len(keras_shape) == 4 else keras_shape


def _summary(keys, limit=8):
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def assign_torchvision_weights(model, state):
    """Sets every variable of `model` from the torchvision state dict `state` ({key: numpy array, torch
    layout}); raises ValueError naming missing, unexpected or wrongly shaped keys (before assigning any)."""
    targets = {key: (variable, axes) for key, variable, axes in _torchvision_variables(model)}

    def ignored(key):
        module, _, buffer = key.rpartition(".")
        return buffer == IGNORED_BUFFER and f"{module}.running_mean" in targets

    missing = [key for key in targets if key not in state]
    unexpected = [key for key in state if key not in targets and not ignored(key)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summary(unexpected)}")
    values = {}
    for key, (variable, axes) in targets.items():
        if key not in state:
            continue
        value = _to_keras_layout(np.asarray(state[key]), axes)
        if value.shape != tuple(variable.shape):
            problems.append(f"{key!r} has shape {tuple(np.shape(state[key]))}, expected "
                            f"{_torch_shape(tuple(variable.shape), axes)}")
        values[key] = value
    if problems:
        raise ValueError("State dict does not fit torchvision's DeepLabV3 layout: " + "; ".join(problems))
    for key, (variable, _) in targets.items():
        variable.assign(values[key].astype(variable.dtype))


def without_aux_head(state):
    """`state` without the auxiliary head's keys, for a model built without it."""
    return {key: value for key, value in state.items() if not key.startswith(AUX_PREFIX)}


def _resnet_depth(state):
    units = {match[1] for match in (re.match(r"backbone\.layer3\.(\d+)\.", key) for key in state) if match}
    if len(units) not in DEPTH_BY_LAYER3_UNITS:
        raise ValueError(f"Cannot tell the ResNet depth: the state dict has {len(units)} backbone.layer3 "
                         "units; torchvision's ResNet-50 has 6 and ResNet-101 has 23")
    return DEPTH_BY_LAYER3_UNITS[len(units)]


def _torchvision_backbone(state):
    """(Keras backbone name, DeepLabV3 arguments) of the state dict's torchvision model."""
    if MOBILENET_V3_LARGE_KEY in state:
        return "mobilenet_v3_large", MOBILENET_V3_CONFIG
    return f"resnet{_resnet_depth(state)}_v1.5", TORCHVISION_CONFIG


def from_torchvision(state_dict, *, include_preprocessing=True, aux_head=None):
    """A DeepLabV3 that computes what torchvision's deeplabv3_resnet50/101 or deeplabv3_mobilenet_v3_large
    computes with `state_dict` (the backbone is read from its keys).

    Args:
        state_dict: the torchvision model's state dict: a mapping key -> array (torch layout; numpy arrays or
            torch tensors), or the path of an `.npz` of it, or of a `.pth`/`.pt` file (torch.save's format, read
            without torch).
        include_preprocessing: True: the model takes RGB images in [0, 255] and normalizes them as
            torchvision's ImageNet transforms do. False: it takes torchvision's normalized input as is (NHWC).
        aux_head: None: include the FCN auxiliary head if the state dict has `aux_classifier.*` keys (outputs
            are then {"out", "aux"}); True: require it; False: leave it out and ignore those keys.
    """
    state = load_state_dict(state_dict)
    has_aux = any(key.startswith(AUX_PREFIX) for key in state)
    if aux_head and not has_aux:
        raise ValueError(f"aux_head=True but the state dict has no {AUX_PREFIX}* keys")
    if aux_head is None:
        aux_head = has_aux
    if not aux_head:
        state = without_aux_head(state)
    if NUM_CLASSES_KEY not in state:
        raise ValueError(f"State dict has no {NUM_CLASSES_KEY!r} (the classifier's last conv): "
                         "not a torchvision DeepLabV3 state dict")
    backbone, config = _torchvision_backbone(state)
    model = DeepLabV3(num_classes=int(state[NUM_CLASSES_KEY].shape[0]), backbone=backbone, aux_head=aux_head,
                      preprocessing="torch" if include_preprocessing else None, **config)
    assign_torchvision_weights(model, state)
    return model
