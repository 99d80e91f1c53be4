"""Multiply-accumulate (MAC) counts of a Keras model's convolutions and dense layers for one input shape.

Counts the nominal dense work (every tap of every kernel, as torchvision's and the paper's GFLOPs do); the
achieved rate in GFLOP/s uses 2 FLOP per MAC. Shapes are recorded by running the model once eagerly with
each layer's `call` wrapped, so layers nested inside other layers (ASPP's convolutions) count too.
"""
import numpy as np


def keras_macs(model, input_shape):
    """MACs of one forward pass of `model` on a zero input of `input_shape` (batch included)."""
    import keras

    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    records = []
    wrapped = []
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, kinds):
            continue
        original = layer.call

        def recording_call(inputs, *args, _layer=layer, _original=original, **kwargs):
            outputs = _original(inputs, *args, **kwargs)
            records.append((_layer, tuple(inputs.shape), tuple(outputs.shape)))
            return outputs

        layer.call = recording_call
        wrapped.append(layer)
    try:
        model(np.zeros(input_shape, np.float32), training=False)
    finally:
        for layer in wrapped:
            object.__delattr__(layer, "call")
    total = 0
    for layer, in_shape, out_shape in records:
        outputs = int(np.prod(out_shape))
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            total += outputs * int(np.prod(layer.kernel_size))
        elif isinstance(layer, keras.layers.Conv2D):
            total += outputs * int(np.prod(layer.kernel_size)) * in_shape[-1] // layer.groups
        else:
            total += outputs * in_shape[-1]
    return total
