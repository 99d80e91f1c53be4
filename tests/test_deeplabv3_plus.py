"""DeepLabV3Plus: any input size, config round trip, output stride change, separable convs, backbones, BatchNorm
folding, export, and an independent torch reference (tests/fixtures/deeplabv3_plus)."""
import pathlib

import keras
import numpy as np
import pytest

from helpers.models import random_images, randomize_weights
from helpers.torchvision_state import deterministic_state, torchvision_keys
from keras_deeplab import DeepLabV3Plus, convert, export
from keras_deeplab.fold import fold_batch_norm

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "deeplabv3_plus"
SMALL = {"aspp_filters": 16, "decoder_filters": 16, "low_level_filters": 8}
# The reference's decoder modules (make_reference.py); backbone, ASPP and logits follow keras_deeplab.convert.
DECODER_MODULES = {"decoder_low_level_conv": "decoder.low_level.0", "decoder_low_level_bn": "decoder.low_level.1",
                   "decoder_conv1_conv": "decoder.fuse.0", "decoder_conv1_bn": "decoder.fuse.1",
                   "decoder_conv2_conv": "decoder.fuse.3", "decoder_conv2_bn": "decoder.fuse.4"}


@pytest.fixture(scope="module")
def model():
    return randomize_weights(DeepLabV3Plus(5, backbone="resnet50", **SMALL))


@pytest.mark.parametrize("size", [(97, 129), (65, 65)])
def test_output_has_the_input_size(model, size):
    assert model.predict(random_images(1, *size), verbose=0).shape == (1, *size, 5)


@pytest.mark.parametrize("size, low_level, encoder", [((97, 129), (25, 33), (7, 9)),
                                                      ((513, 513), (129, 129), (33, 33))])
def test_decoder_reads_stride_4_features_and_upsamples_the_encoder_to_them(size, low_level, encoder):
    static = DeepLabV3Plus(5, backbone="resnet50", input_shape=(*size, 3), **SMALL)
    assert static.get_layer("decoder_low_level_conv").input is static.get_layer("conv2_block3_out").output
    assert tuple(static.get_layer("aspp").output.shape) == (None, *encoder, 16)
    assert tuple(static.get_layer("decoder_concat").output.shape) == (None, *low_level, 16 + 8)
    assert tuple(static.output.shape) == (None, *size, 5)


def test_config_round_trip_and_attributes(model):
    config = model.get_config()
    clone = DeepLabV3Plus.from_config(config)
    assert clone.get_config() == config
    assert (model.num_classes, model.backbone, model.output_stride) == (5, "resnet50", 16)
    assert model.atrous_rates == (6, 12, 18)
    assert config["preprocessing"] == "caffe" and config["separable"] is False


def test_with_output_stride_keeps_the_weights(model):
    os8 = model.with_output_stride(8)
    assert isinstance(os8, DeepLabV3Plus) and (os8.output_stride, os8.atrous_rates) == (8, (12, 24, 36))
    for want, got in zip(model.get_weights(), os8.get_weights()):
        np.testing.assert_array_equal(want, got)
    assert os8.predict(random_images(1, 65, 81), verbose=0).shape == (1, 65, 81, 5)


@pytest.mark.parametrize("backbone, low_level", [("mobilenet_v2", "block_2_depthwise_relu"),
                                                 ("mobilenet_v3_large", "backbone_3_block_1_2")])
def test_separable_mobilenet_variants(backbone, low_level):
    separable = DeepLabV3Plus(5, backbone=backbone, separable=True, **SMALL)
    assert separable.get_layer("decoder_low_level_conv").input is separable.get_layer(low_level).output
    assert separable.predict(random_images(1, 97, 129), verbose=0).shape == (1, 97, 129, 5)
    for name in ("decoder_conv1", "decoder_conv2"):
        assert isinstance(separable.get_layer(f"{name}_depthwise_conv"), keras.layers.DepthwiseConv2D)
        assert separable.get_layer(f"{name}_pointwise_conv").kernel.shape[:2] == (1, 1)
    kinds = [(part.kind, type(part.conv).__name__, tuple(part.conv.kernel.shape[:2]))
             for part in separable.get_layer("aspp").parts()]
    assert kinds.count(("depthwise", "DepthwiseConv2D", (3, 3))) == 3
    assert kinds.count(("atrous", "AtrousConv2D", (1, 1))) == 3


@pytest.mark.parametrize("config", [{"backbone": "resnet50"}, {"backbone": "mobilenet_v2", "separable": True}],
                         ids=["resnet50", "mobilenet_v2_separable"])
def test_folded_model_equals_the_original(config):
    original = randomize_weights(DeepLabV3Plus(5, **config, **SMALL))
    folded = fold_batch_norm(original)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    images = random_images(2, 65, 81)
    want, got = np.asarray(original(images, training=False)), np.asarray(folded(images, training=False))
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=1e-4)


def test_export_passes_its_checks(tmp_path):
    tiny = randomize_weights(DeepLabV3Plus(3, backbone="mobilenet_v2", separable=True, **SMALL))
    version = export.export_saved_model(tiny, tmp_path / "deeplabv3_plus", max_long_side=97)
    assert (pathlib.Path(version) / "saved_model.pb").is_file()


def test_matches_an_independent_torch_reference(monkeypatch):
    """make_reference.py's DeepLabv3+ (torchvision's ResNet-50 v1.5 and ASPP, the decoder in torch) with the same
    deterministic weights; float64 there, float32 here."""
    for layer, module in DECODER_MODULES.items():
        monkeypatch.setitem(convert.MODULES, layer, module)
    reference_model = DeepLabV3Plus(5, backbone="resnet50_v1.5", multi_grid=(1, 1, 1), preprocessing=None)
    convert.assign_torchvision_weights(reference_model, deterministic_state(torchvision_keys(FIXTURES / "keys.json")))
    images = np.load(FIXTURES / "seed0_input.npy").transpose(0, 2, 3, 1)
    want = np.load(FIXTURES / "seed0_output.npy").transpose(0, 2, 3, 1)
    got = reference_model.predict(images, verbose=0)
    difference = np.abs(got - want).max() / np.abs(want).max()
    assert difference <= 1e-5, difference
