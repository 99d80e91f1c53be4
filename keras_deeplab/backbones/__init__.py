"""Backbones, described by data: name -> builder, its arguments, preprocessing, keras.applications source,
whether it takes `multi_grid`, the features torchvision's auxiliary head reads (None: no aux head) and the stride-4
features DeepLabv3+'s decoder reads."""
import functools

from keras_deeplab.backbones.mobilenet_v2 import mobilenet_v2_features
from keras_deeplab.backbones.mobilenet_v3 import mobilenet_v3_large_features
from keras_deeplab.backbones.resnet import resnet_features

BACKBONES = {
    "resnet50": {"features": functools.partial(resnet_features, depth=50, variant="v1"),
                 "preprocessing": "caffe", "applications": "ResNet50", "multi_grid": True, "aux_features": "block3",
                 "decoder_features": "block1"},
    "resnet101": {"features": functools.partial(resnet_features, depth=101, variant="v1"),
                  "preprocessing": "caffe", "applications": "ResNet101", "multi_grid": True, "aux_features": "block3",
                  "decoder_features": "block1"},
    "resnet152": {"features": functools.partial(resnet_features, depth=152, variant="v1"),
                  "preprocessing": "caffe", "applications": "ResNet152", "multi_grid": True, "aux_features": "block3",
                  "decoder_features": "block1"},
    # torchvision's layout (ResNet v1.5); weights come from keras_deeplab.convert.from_torchvision.
    "resnet50_v1.5": {"features": functools.partial(resnet_features, depth=50, variant="v1.5"),
                      "preprocessing": "torch", "applications": None, "multi_grid": True, "aux_features": "block3",
                      "decoder_features": "block1"},
    "resnet101_v1.5": {"features": functools.partial(resnet_features, depth=101, variant="v1.5"),
                       "preprocessing": "torch", "applications": None, "multi_grid": True, "aux_features": "block3",
                       "decoder_features": "block1"},
    "mobilenet_v2": {"features": mobilenet_v2_features, "preprocessing": "tf", "applications": "MobileNetV2",
                     "multi_grid": False, "aux_features": None, "decoder_features": "stride4"},
    # torchvision's layout; weights come from keras_deeplab.convert.from_torchvision.
    "mobilenet_v3_large": {"features": mobilenet_v3_large_features, "preprocessing": "torch", "applications": None,
                           "multi_grid": False, "aux_features": "stride8", "decoder_features": "stride4"},
}


def get_backbone(name):
    """The registry entry of backbone `name`, with a clear error for unknown names."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]
