"""Deterministic torchvision-layout state dicts (numpy only), for checking the weight converter without torch.

The rule is the one the reference outputs in tests/fixtures/torchvision_deeplabv3 were computed with (see its
README): one `numpy.random.default_rng(seed)`, one `rng.random(n)` draw per key in the keys file's order.
"""
import json
import math
import pathlib

import numpy as np

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "torchvision_deeplabv3"
KEYS_RESNET50 = FIXTURES / "keys_resnet50.json"
KEYS_MOBILENET_V3 = FIXTURES / "keys_mobilenet_v3_large.json"
MOBILENET_V3_BN_WEIGHT_SHIFT = 0.6


def torchvision_keys(keys_file=KEYS_RESNET50):
    """[(key, shape)] of torchvision's deeplabv3_resnet50 state dict (no aux head), in state dict order."""
    with open(keys_file) as f:
        return [(key, tuple(shape)) for key, shape in json.load(f)]


def aux_head_keys(num_classes=21, in_channels=1024):
    """[(key, shape)] of torchvision's FCN auxiliary head (`aux_classifier`) on ResNet's layer3."""
    inner = in_channels // 4
    bn = [(f"aux_classifier.1.{name}", (inner,))
          for name in ("weight", "bias", "running_mean", "running_var")]
    return [("aux_classifier.0.weight", (inner, in_channels, 3, 3)), *bn,
            ("aux_classifier.4.weight", (num_classes, inner, 1, 1)),
            ("aux_classifier.4.bias", (num_classes,))]


def deterministic_value(key, u):
    """The value of `key` from uniform draws `u` in [0, 1) shaped like it (float64)."""
    if key.endswith("running_var"):
        return 0.5 + u
    if key.endswith("running_mean"):
        return 0.2 * u - 0.1
    if u.ndim == 4:
        out_channels, in_channels, kh, kw = u.shape
        return (2.0 * u - 1.0) * math.sqrt(3.0 / (in_channels * kh * kw))
    if key.endswith("weight"):
        return 0.5 + 0.5 * u
    if key.endswith("bias"):
        return 0.2 * u - 0.1
    raise ValueError(f"No value rule for key {key!r}")


def deterministic_state(keys, seed=0, bn_weight_shift=0.0):
    """{key: float32 array, torch layout} for [(key, shape)] `keys`, drawn in order from default_rng(seed).

    `bn_weight_shift` is added to the BatchNorm (1-D) weights: MobileNetV3's fixture uses 0.6
    (`MOBILENET_V3_BN_WEIGHT_SHIFT`), without which the input's signal fades out in its backbone."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in keys:
        u = rng.random(int(np.prod(shape))).reshape(shape)
        state[key] = deterministic_value(key, u).astype(np.float32)
        if bn_weight_shift and len(shape) == 1 and key.endswith(".weight"):
            state[key] = state[key] + np.float32(bn_weight_shift)
    return state
