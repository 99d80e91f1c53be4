"""MobileNetV3-Large DeepLabV3 (torchvision's deeplabv3_mobilenet_v3_large): the converted model against
torchvision's own outputs (stored fixture, no torch needed), the key mapping, and the backbone in DeepLabV3."""
import re

import keras
import numpy as np
import pytest

from helpers.conversion import assert_bad_state_dict_is_refused_naming_the_key
from helpers.torchvision_state import FIXTURES, KEYS_MOBILENET_V3 as KEYS, MOBILENET_V3_BN_WEIGHT_SHIFT
from helpers.torchvision_state import deterministic_state, torchvision_keys
from keras_deeplab import DeepLabV3
from keras_deeplab.backbones.mobilenet_v3 import BLOCKS
from keras_deeplab.complexity import count_macs
from keras_deeplab.convert import assign_torchvision_weights, from_torchvision
from keras_deeplab.convert import torchvision_keys as model_keys

RUNNING_STATS = ("running_mean", "running_var")


def fixture_state(keys):
    """The state dict the fixture's reference outputs were computed with (see its README)."""
    return deterministic_state(keys, seed=0, bn_weight_shift=MOBILENET_V3_BN_WEIGHT_SHIFT)


def nhwc(nchw):
    return np.transpose(nchw, (0, 2, 3, 1))


@pytest.fixture(scope="module")
def state():
    return fixture_state(torchvision_keys(KEYS))


@pytest.fixture(scope="module")
def converted(state):
    return from_torchvision(state, include_preprocessing=False)


def test_matches_torchvision_reference_outputs(converted):
    assert converted.backbone == "mobilenet_v3_large" and converted.output_stride == 16 and converted.aux_head
    assert converted.atrous_rates == (12, 24, 36) and converted.head_conv and converted.aspp_dropout == 0.5
    outputs = converted(nhwc(np.load(FIXTURES / "mobilenet_v3_large_seed0_input.npy")), training=False)
    for name in ("out", "aux"):
        reference = nhwc(np.load(FIXTURES / f"mobilenet_v3_large_seed0_{name}.npy"))
        diff = np.abs(keras.ops.convert_to_numpy(outputs[name]) - reference).max()
        print(f"{name}: max |keras - torchvision| = {diff:.3g} (max |reference| = {np.abs(reference).max():.3g})")
        # a faithful float32 port: <= 1.5e-6 of the largest logit; each mistake in the fixture README's list
        # moves out or aux by at least 6e-4 of it
        assert diff <= 1e-5 * np.abs(reference).max()


def test_every_variable_has_one_torchvision_key(converted):
    keys = [key for key, _ in torchvision_keys(KEYS)]
    mapping = model_keys(converted)
    assert sorted(mapping) == sorted(keys) and len(mapping) == len(converted.weights)
    depthwise = converted.get_layer("backbone_13_block_1_0")
    assert mapping["backbone.13.block.1.0.weight"] is depthwise.kernel and depthwise.dilation_rate == (2, 2)
    assert mapping["backbone.4.block.2.fc1.bias"] is converted.get_layer("backbone_4_block_2_fc1").bias


def test_parameter_and_mac_counts_equal_torchvision(converted):
    parameters = sum(int(np.prod(shape)) for key, shape in torchvision_keys(KEYS) if not key.endswith(RUNNING_STATS))
    assert parameters == 11_029_328  # torchvision's published deeplabv3_mobilenet_v3_large num_params
    assert sum(int(np.prod(v.shape)) for v in converted.trainable_weights) == parameters
    assert round(count_macs(converted, (520, 520)) / 1e9, 3) == 10.452  # torchvision's published "_ops" (GMACs)


@pytest.mark.parametrize("change, key", [
    ("drop", "backbone.4.block.2.fc1.bias"),
    ("drop", "aux_classifier.1.running_var"),
    ("add", "backbone.1.block.2.0.weight"),
    ("add", "backbone.17.0.weight"),
    ("reshape", "backbone.13.block.1.0.weight"),
    ("reshape", "backbone.16.1.running_var"),
])
def test_bad_state_dict_names_the_key(state, converted, change, key):
    assert_bad_state_dict_is_refused_naming_the_key(converted, state, change, key)


def test_misshaped_depthwise_kernel_is_reported_in_torch_layout(state, converted):
    bad = dict(state, **{"backbone.2.block.1.0.weight": np.zeros((64, 1, 5, 5), np.float32)})
    with pytest.raises(ValueError, match=re.escape("(64, 1, 5, 5), expected (64, 1, 3, 3)")):
        assign_torchvision_weights(converted, bad)


def test_without_aux_head_and_with_preprocessing(state, converted):
    model = from_torchvision(state, aux_head=False)
    assert not model.aux_head and model.preprocessing == "torch"
    raw = np.random.default_rng(1).uniform(0, 255, (1, 37, 50, 3)).astype(np.float32)
    normalized = (raw / 255.0 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)
    expected = converted(normalized.astype(np.float32), training=False)["out"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(raw, training=False)),
                               keras.ops.convert_to_numpy(expected), atol=1e-5 * np.abs(expected).max())


def depthwise_rates(model):
    """{block index: (stride, dilation rate)} of the depthwise convs."""
    rates = {}
    for index in range(1, len(BLOCKS) + 1):
        position = 0 if index == 1 else 1  # block 1 has no expansion conv
        layer = model.get_layer(f"backbone_{index}_block_{position}_0")
        rates[index] = (layer.strides[0], layer.dilation_rate[0])
    return rates


@pytest.mark.parametrize("output_stride, dilated", [
    (32, {}),
    (16, {13: 2, 14: 2, 15: 2}),  # torchvision's dilated=True
    (8, {**{i: 2 for i in range(7, 13)}, 13: 4, 14: 4, 15: 4}),
])
def test_output_stride_turns_the_last_strides_into_rates(output_stride, dilated):
    model = DeepLabV3(3, backbone="mobilenet_v3_large", output_stride=output_stride, aspp_filters=8,
                      aux_head=True)
    expected = {index: (1, dilated[index]) if index in dilated else (block.stride, 1)
                for index, block in enumerate(BLOCKS, start=1)}
    assert depthwise_rates(model) == expected
    images = np.zeros((1, 65, 97, 3), np.float32)
    features = keras.Model(model.input, [model.get_layer("backbone_4_block_3_1").output,
                                         model.get_layer("backbone_16_2").output])(images)
    assert tuple(features[0].shape) == (1, 9, 13, 40)  # torchvision's aux input: stride 8
    assert tuple(features[1].shape) == (1, -(-65 // output_stride), -(-97 // output_stride), 960)


def test_model_on_odd_size_config_round_trip_and_output_stride():
    model = DeepLabV3(5, backbone="mobilenet_v3_large", aspp_filters=16)
    assert model.preprocessing == "torch"
    images = np.random.default_rng(2).uniform(0, 255, (1, 65, 97, 3)).astype(np.float32)
    logits = keras.ops.convert_to_numpy(model(images, training=False))
    assert logits.shape == (1, 65, 97, 5) and np.isfinite(logits).all() and logits.std() > 0

    config = model.get_config()
    clone = DeepLabV3.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(images, training=False)), logits)

    os32 = model.with_output_stride(32)
    assert os32.output_stride == 32 and os32.atrous_rates == (3, 6, 9)
    assert os32.get_layer("backbone_13_block_1_0").strides == (2, 2)
    assert os32(images, training=False).shape == (1, 65, 97, 5)


def test_mobilenet_v2_has_no_aux_head():
    with pytest.raises(ValueError, match="aux_head needs a ResNet or MobileNetV3 backbone"):
        DeepLabV3(3, backbone="mobilenet_v2", aux_head=True)
