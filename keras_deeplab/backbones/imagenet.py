"""ImageNet weights for the backbones, taken from keras.applications by layer name."""
import os

import keras

from keras_deeplab.backbones import get_backbone

# Layers of keras.applications' headless models that DeepLab does not use.
UNUSED_LAYERS = {"Conv_1", "Conv_1_bn"}


def load_imagenet_weights(model, backbone, weights="imagenet"):
    """Copies keras.applications' weights for `backbone` into the same-named layers of `model`.

    `weights` is "imagenet" (Keras downloads the file on first use) or the path of a local weights file that
    keras.applications' model of the same name loads (the official `*_notop.h5`, or a `.weights.h5` saved from
    such a model). Returns the number of layers copied.
    """
    app_name = get_backbone(backbone)["applications"]
    if app_name is None:
        raise ValueError(f"Backbone {backbone!r} has no keras.applications weights; "
                         "use keras_deeplab.convert.from_torchvision for torchvision weights")
    if weights != "imagenet" and not os.path.isfile(weights):
        raise FileNotFoundError(f"backbone_weights: no such weights file {weights!r}")
    source = getattr(keras.applications, app_name)(include_top=False, weights=weights, input_shape=(None, None, 3))
    copied = 0
    for layer in source.layers:
        if not layer.weights or layer.name in UNUSED_LAYERS:
            continue
        try:
            target = model.get_layer(layer.name)
        except ValueError as err:
            raise ValueError(f"Layer {layer.name!r} of keras.applications.{app_name} has no counterpart "
                             f"in the {backbone} backbone") from err
        target.set_weights(layer.get_weights())
        copied += 1
    return copied
