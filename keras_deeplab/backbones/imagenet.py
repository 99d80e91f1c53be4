"""ImageNet weights for the backbones, taken from keras.applications by layer name."""
import os

import keras

from keras_deeplab.backbones import get_backbone
from keras_deeplab.weights import WeightsFile, fetch

# Layers of keras.applications' headless models that DeepLab does not use.
UNUSED_LAYERS = {"Conv_1", "Conv_1_bn"}
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# keras.applications' headless weight files; Keras pins the ResNets' by MD5 (resnet.WEIGHTS_HASHES), MobileNetV2's
# by nothing.
IMAGENET_WEIGHTS = {
    "resnet50": WeightsFile("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", KERAS_APPLICATIONS_URL + "resnet",
                            file_hash="4d473c1dd8becc155b73f8504c6f6626", hash_algorithm="md5"),
    "resnet101": WeightsFile("resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             KERAS_APPLICATIONS_URL + "resnet", file_hash="88cf7a10940856eca736dc7b7e228a21",
                             hash_algorithm="md5"),
    "resnet152": WeightsFile("resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             KERAS_APPLICATIONS_URL + "resnet", file_hash="ee4c566cf9a93f14d82f913c2dc6dd0c",
                             hash_algorithm="md5"),
    "mobilenet_v2": WeightsFile("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                                KERAS_APPLICATIONS_URL + "mobilenet_v2"),
}


def load_imagenet_weights(model, backbone, weights="imagenet"):
    """Copies keras.applications' weights for `backbone` into the same-named layers of `model`.

    `weights` is "imagenet" (keras.applications' file, downloaded once into Keras' cache by
    `keras_deeplab.weights.fetch`, so `KERAS_DEEPLAB_WEIGHTS_URL` can name a mirror) or the path of a local weights
    file that keras.applications' model of the same name loads (the official `*_notop.h5`, or a `.weights.h5`
    saved from such a model). Returns the number of layers copied.
    """
    app_name = get_backbone(backbone)["applications"]
    if app_name is None:
        raise ValueError(f"Backbone {backbone!r} has no keras.applications weights; "
                         "use keras_deeplab.convert.from_torchvision for torchvision weights")
    if weights == "imagenet":
        weights = fetch(IMAGENET_WEIGHTS[backbone])
    elif not os.path.isfile(weights):
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
