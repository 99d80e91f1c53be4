"""`run_layer_test`: the checks every custom layer passes, in the spirit of keras-hub's `run_layer_test`."""
import json

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from keras_deeplab.layers import PACKAGE

MIXED_PRECISION_POLICY = "mixed_float16"


def _symbolic(input_data, static):
    """KerasTensors like `input_data`; unless `static`, with all dimensions but the channels unknown."""
    return tree.map_structure(
        lambda x: keras.KerasTensor(x.shape if static else (None,) * (x.ndim - 1) + x.shape[-1:], x.dtype),
        input_data)


def _randomize(layer, seed=0):
    """Every variable set to random values in [0.5, 1.5) (positive: valid BatchNorm variances)."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype))


def _check_config_round_trip(layer, input_data, outputs):
    """The serialized layer (through JSON, by its registered name) is an equal layer that, given the same weights,
    computes the same."""
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    assert config["registered_name"] == f"{PACKAGE}>{type(layer).__name__}"
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(input_data, training=False), outputs)


def _check_mixed_precision(layer_cls, init_kwargs, input_data):
    """Under a mixed-precision policy the layer computes (and returns) the policy's compute dtype and keeps its
    variables in float32."""
    layer = layer_cls(**init_kwargs, dtype=MIXED_PRECISION_POLICY)
    outputs = layer(input_data, training=False)
    assert keras.backend.standardize_dtype(outputs.dtype) == keras.DTypePolicy(MIXED_PRECISION_POLICY).compute_dtype
    assert np.isfinite(np.asarray(outputs, np.float32)).all()
    assert all(variable.dtype == "float32" for variable in layer.weights)


def _check_training_step(layer, input_data):
    """One SGD step on a weighted sum of the training-mode outputs changes every trainable variable."""
    before = [np.array(variable) for variable in layer.trainable_weights]
    with tf.GradientTape() as tape:
        outputs = layer(input_data, training=True)
        upstream = np.random.default_rng(1).normal(size=outputs.shape).astype("float32")
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * upstream)
    gradients = tape.gradient(loss, layer.trainable_weights)
    keras.optimizers.SGD(0.1).apply(gradients, layer.trainable_weights)
    for variable, old in zip(layer.trainable_weights, before):
        assert not np.array_equal(np.asarray(variable), old), variable.path


def run_layer_test(layer_cls, init_kwargs, input_data, *, expected_output_shape, expected_num_trainable_weights,
                   expected_num_non_trainable_weights=0):
    """Checks `layer_cls(**init_kwargs)` on `input_data` (an array, or a list of arrays for a layer that takes
    several): eager outputs of `expected_output_shape`, and symbolic ones of the same shape on static inputs and
    with the batch and spatial dimensions unknown where the inputs' are; the numbers of trainable and
    non-trainable variables; the config round trip; mixed precision; one training step (for trainable layers)."""
    layer = layer_cls(**init_kwargs)
    outputs = layer(input_data, training=False)
    assert tuple(outputs.shape) == tuple(expected_output_shape)
    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    unknown = (None,) * (len(expected_output_shape) - 1) + tuple(expected_output_shape[-1:])
    for static, expected in ((True, tuple(expected_output_shape)), (False, unknown)):
        assert tuple(layer_cls(**init_kwargs)(_symbolic(input_data, static)).shape) == expected

    _randomize(layer)
    _check_config_round_trip(layer, input_data, layer(input_data, training=False))
    _check_mixed_precision(layer_cls, init_kwargs, input_data)
    if expected_num_trainable_weights:
        _check_training_step(layer, input_data)
