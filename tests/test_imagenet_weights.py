"""keras.applications weights in our backbones, offline: randomly initialized keras.applications models are
saved to a local weights file; our backbone features must equal keras.applications' own on the same images,
exactly (bit for bit) given the same normalized input."""
import re

import keras
import numpy as np
import pytest

from keras_deeplab import DeepLabV3

# backbone -> (keras.applications model, its preprocessing, the layer whose output is the OS32 feature map)
RESNET_PREPROCESS = keras.applications.resnet.preprocess_input
APPLICATIONS = {
    "resnet50": (keras.applications.ResNet50, RESNET_PREPROCESS, "conv5_block3_out"),
    "resnet101": (keras.applications.ResNet101, RESNET_PREPROCESS, "conv5_block3_out"),
    "mobilenet_v2": (keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input,
                     "block_16_project_BN"),
}


def perturb(model, rng):
    """Non-trivial values for what random init leaves constant: BN gamma/beta/moving stats and conv biases."""
    draws = {
        "gamma": lambda shape: rng.uniform(0.5, 1.5, shape),
        "beta": lambda shape: rng.normal(0.0, 0.1, shape),
        "moving_mean": lambda shape: rng.normal(0.0, 0.1, shape),
        "moving_variance": lambda shape: rng.uniform(0.5, 1.5, shape),
        "bias": lambda shape: rng.normal(0.0, 0.1, shape),
    }
    for variable in model.weights:
        if variable.name in draws:
            variable.assign(draws[variable.name](tuple(variable.shape)).astype("float32"))


@pytest.mark.parametrize("backbone, size", [
    ("resnet50", (67, 93)),
    ("resnet101", (65, 65)),
    ("mobilenet_v2", (96, 128)),  # even sizes at every stride-2 layer
    ("mobilenet_v2", (67, 93)),   # odd sizes: keras.applications' correct_pad must still equal 'same'
])
def test_backbone_features_equal_keras_applications(tmp_path, backbone, size):
    application, preprocess_input, feature_layer = APPLICATIONS[backbone]
    keras.utils.set_random_seed(0)
    source = application(include_top=False, weights=None, input_shape=size + (3,))
    perturb(source, np.random.default_rng(0))
    weights_file = str(tmp_path / f"{backbone}.weights.h5")
    source.save_weights(weights_file)

    # atrous "native": TF's convolutions as keras.applications runs them, so the comparison can be exact ("auto"
    # computes the wide 3x3 layers by Winograd in inference, equal only up to float rounding)
    model = DeepLabV3(3, backbone=backbone, output_stride=32, multi_grid=(1, 1, 1), aspp_filters=16,
                      backbone_weights=weights_file, atrous_implementation="native")
    images = np.random.default_rng(1).uniform(0, 255, (2,) + size + (3,)).astype("float32")
    # preprocess_input works in place on numpy arrays: give it a copy.
    normalized = preprocess_input(images.copy())
    source_features = keras.Model(source.input, source.get_layer(feature_layer).output)
    reference = keras.ops.convert_to_numpy(source_features(normalized, training=False))
    assert reference.std() > 0

    # The weight mapping and the backbone, exactly: our layers after the in-model preprocessing, fed
    # keras.applications' own normalized images.
    backbone_only = keras.Model(model.get_layer("preprocessing").output,
                                model.get_layer(feature_layer).output)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(backbone_only(normalized, training=False)),
                                  reference)

    # End to end on raw pixels: exact for ResNet ("caffe": mean subtraction only); for MobileNetV2 our
    # (x - 127.5) / 127.5 and keras.applications' x / 127.5 - 1 round differently, by about one float32 ulp.
    features = keras.Model(model.input, model.get_layer(feature_layer).output)
    ours = keras.ops.convert_to_numpy(features(images, training=False))
    scale = np.abs(reference).max()
    diff = np.abs(ours - reference).max()
    print(f"{backbone} {size}: max |ours - keras.applications| = {diff:.3g} (max |features| = {scale:.3g})")
    if model.preprocessing == "caffe":
        np.testing.assert_array_equal(ours, reference)
    else:
        assert diff <= 1e-6 * scale


def test_missing_weights_file_names_the_path(tmp_path):
    path = str(tmp_path / "missing.weights.h5")
    with pytest.raises(FileNotFoundError, match=re.escape(path)):
        DeepLabV3(3, backbone="mobilenet_v2", aspp_filters=16, backbone_weights=path)


def test_torchvision_layout_has_no_keras_applications_weights(tmp_path):
    with pytest.raises(ValueError, match="from_torchvision"):
        DeepLabV3(3, backbone="resnet50_v1.5", aspp_filters=16,
                  backbone_weights=str(tmp_path / "x.weights.h5"))
