"""BatchNorm folded into the preceding convolutions: the inference form of a model (used by `export`).

Inference-mode BN is a per-channel affine map, `y = scale * x + shift` with `scale = gamma / sqrt(var + eps)` and
`shift = beta - mean * scale`. After a convolution it folds into the kernel (`kernel * scale` along the output
channels) and a bias (`bias * scale + shift`): two elementwise passes fewer per BN, and Conv2D + BiasAdd + ReLU
is what TF's grappler remapper fuses into one oneDNN kernel. Measured in `benchmarks/` (README there).
"""
import keras
import numpy as np

from keras_deeplab.layers import ASPP, PACKAGE

CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FoldedBatchNorm(keras.layers.Layer):
    """Stands where a BatchNormalization was folded into its convolution: passes its input through (and takes
    the `training`/`mask` arguments the graph calls a BatchNormalization with)."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _producer(tensor):
    return tensor._keras_history.operation


def foldable_pairs(model):
    """{BatchNormalization layer name: conv layer} for every top-level BN whose only input is a convolution
    that feeds nothing else."""
    consumers = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                consumers.setdefault(id(_producer(tensor)), set()).add(layer.name)
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        conv = _producer(layer._inbound_nodes[0].input_tensors[0])
        if isinstance(conv, CONVOLUTIONS) and consumers.get(id(conv)) == {layer.name}:
            pairs[layer.name] = conv
    return pairs


def folded_weights(conv, bn):
    """[kernel, bias] of a biased convolution computing `bn(conv(x))` with `bn` in inference mode."""
    scale = (np.asarray(bn.gamma) if bn.scale else 1.0) / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
    shift = (np.asarray(bn.beta) if bn.center else 0.0) - np.asarray(bn.moving_mean) * scale
    kernel = np.asarray(conv.kernel)
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # kernel [kh, kw, in, multiplier]: out = in * multiplier
        kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    bias = np.asarray(conv.bias) if conv.use_bias else 0.0
    return [kernel, bias * scale + shift]


def _biased(conv):
    return conv.__class__.from_config({**conv.get_config(), "use_bias": True})


def _folded_aspp(aspp):
    folded = ASPP.from_config({**aspp.get_config(), "batch_norm": False})
    folded.build(aspp.input.shape)
    for new, old in zip(folded.parts(), aspp.parts()):
        new.conv.set_weights(folded_weights(old.conv, old.bn) if old.bn is not None else old.conv.get_weights())
    return folded


def fold_batch_norm(model):
    """An inference-only copy of a functional `model` with every BatchNorm that directly follows a convolution
    (top level and inside ASPP) folded into it; the folded BN becomes a FoldedBatchNorm. Exact up to float rounding.
    The copy shares no layer with `model` (the other layers are copied with their weights): a shared layer would
    keep the whole original graph, and so every unfolded weight, alive as long as the copy (benchmarks/memory.md)."""
    pairs = foldable_pairs(model)
    bn_of_conv = {conv.name: model.get_layer(bn_name) for bn_name, conv in pairs.items()}

    def clone(layer):
        if layer.name in pairs:
            return FoldedBatchNorm(name=layer.name)
        if layer.name in bn_of_conv:
            return _biased(layer)
        if isinstance(layer, ASPP) and layer.batch_norm:
            return _folded_aspp(layer)
        return layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:  # one layer at a time: no second copy of all weights in NumPy
        if layer.name in pairs or (isinstance(layer, ASPP) and layer.batch_norm) or not layer.weights:
            continue  # folded into its convolution, set by _folded_aspp, or nothing to copy
        weights = folded_weights(layer, bn_of_conv[layer.name]) if layer.name in bn_of_conv else layer.get_weights()
        folded.get_layer(layer.name).set_weights(weights)
    return folded
