"""BatchNorm folding (`keras_deeplab.fold`): the folded inference model computes what the original computes in
inference mode, and no BatchNorm is left in it."""
import gc
import weakref

import keras
import numpy as np
import pytest

from helpers.models import random_images, randomize_weights
from keras_deeplab import DeepLabV3
from keras_deeplab.fold import fold_batch_norm, folded_weights
from keras_deeplab.layers import ASPP


def batch_norms(model):
    """Every BatchNormalization of a DeepLabV3-shaped model, ASPP's included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        if isinstance(layer, ASPP):
            found += [part.bn for part in layer.parts() if part.bn is not None]
    return found


@pytest.mark.parametrize("config", [
    {"backbone": "resnet50", "output_stride": 16, "aspp_filters": 32},
    {"backbone": "resnet50_v1.5", "output_stride": 8, "aspp_filters": 16, "head_conv": True, "aux_head": True},
    {"backbone": "mobilenet_v2", "output_stride": 16, "aspp_filters": 16, "image_pooling": False},
], ids=["resnet50", "torchvision_structure", "mobilenet_v2"])
def test_folded_model_equals_the_original_in_inference(config):
    model = randomize_weights(DeepLabV3(5, **config))
    folded = fold_batch_norm(model)
    assert batch_norms(model) and not batch_norms(folded)  # the original keeps its BatchNorms
    images = random_images(2, 65, 81)
    want, got = model(images, training=False), folded(images, training=False)
    if not isinstance(want, dict):
        want, got = {"out": want}, {"out": got}
    assert set(got) == set(want)
    for key in want:
        want_k, got_k = np.asarray(want[key]), np.asarray(got[key])
        np.testing.assert_allclose(got_k, want_k, atol=1e-4 * np.abs(want_k).max(), rtol=1e-4)


def test_folded_model_keeps_no_part_of_the_original_alive():
    """No layer or weight of the original in the copy: once the original is dropped, its weights can be freed."""
    model = randomize_weights(DeepLabV3(5, backbone="resnet50_v1.5", output_stride=8, aspp_filters=16,
                                        head_conv=True))
    images = random_images(1, 33, 33)
    want = np.asarray(model(images, training=False))
    folded = fold_batch_norm(model)
    assert not {id(layer) for layer in model.layers} & {id(layer) for layer in folded.layers}
    assert not {id(weight) for weight in model.weights} & {id(weight) for weight in folded.weights}
    original_weights = [weakref.ref(layer) for layer in model.layers if layer.weights]
    del model
    gc.collect()
    assert [ref for ref in original_weights if ref() is not None] == []
    np.testing.assert_allclose(folded(images, training=False), want, atol=1e-4 * np.abs(want).max(), rtol=1e-4)


def test_folded_weights_of_a_depthwise_conv_scale_each_output_channel():
    conv = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    x = random_images(1, 9, 9)
    reference = keras.Sequential([conv, bn])
    reference.build(x.shape)
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.1, 6), rng.normal(0, 0.1, 6), rng.uniform(0.5, 2, 6)])
    biased = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    biased.build(x.shape)
    biased.set_weights(folded_weights(conv, bn))
    want = np.asarray(reference(x, training=False))
    np.testing.assert_allclose(biased(x), want, atol=1e-4 * np.abs(want).max())
