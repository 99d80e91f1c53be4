"""Model helpers shared by the tests: random images, and weights that make output comparisons meaningful."""
import keras
import numpy as np

from keras_deeplab.layers import ASPP

RNG = np.random.default_rng(0)


def random_images(batch, height, width):
    return RNG.uniform(0, 255, (batch, height, width, 3)).astype("float32")


def randomize_weights(model, seed=0):
    """He-scaled kernels and non-trivial BatchNorm statistics.

    Keras' default initializer gives MobileNetV2's depthwise kernels a tiny scale (logits ~1e-12 after 17
    blocks), and fresh BatchNorm layers are the identity at inference; both would make output comparisons
    vacuous.
    """
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, ASPP):
            continue  # a container: its sublayers are visited themselves
        for variable in layer.weights:
            shape, name = tuple(variable.shape), variable.name
            if name == "kernel":
                depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
                fan_in = np.prod(shape[:2]) * (1 if depthwise else shape[2])
                value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            elif name == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            elif name in ("beta", "moving_mean", "bias"):
                value = rng.normal(0, 0.1, shape)
            elif name == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            else:
                raise AssertionError(f"unexpected variable {variable.path}")
            variable.assign(value.astype(variable.dtype))
    return model
