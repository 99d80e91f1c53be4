"""Prototype of a library lever: BatchNorm folded into the preceding convolution for inference and export.

Inference-mode BN is an affine map per channel, `y = scale * x + shift` with `scale = gamma / sqrt(var + eps)`
and `shift = beta - mean * scale`; after a convolution it folds into the kernel (`kernel * scale` along the
output channels) and a bias (`bias * scale + shift`), removing two elementwise passes per BN and leaving
Conv2D + BiasAdd + ReLU, which TF's grappler remapper fuses into one oneDNN kernel.

Here (benchmarks only) the model is cloned with each foldable (conv, BN) pair replaced by a biased conv and a
pass-through; ASPP's internal pairs are folded the same way. The result is inference-only.
"""
import keras
import numpy as np

from keras_deeplab.layers import ASPP

CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


class FoldedBatchNorm(keras.layers.Layer):
    """Stands in for a BatchNormalization folded into its convolution: passes its input through."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _biased(conv):
    return conv.__class__.from_config({**conv.get_config(), "use_bias": True})


class FoldedASPP(ASPP):
    """ASPP whose convolutions carry biases and whose BatchNorms pass through (weights set by
    `fold_batch_norm`). Built from an ASPP with `from_aspp`, keeping its convolution classes."""

    @classmethod
    def from_aspp(cls, aspp):
        folded = cls(**aspp.get_config())
        folded.branch_convs = [_biased(conv) for conv in aspp.branch_convs]
        folded.branch_bns = [FoldedBatchNorm(name=f"{bn.name}_folded") for bn in aspp.branch_bns]
        folded.project_conv = _biased(aspp.project_conv)
        folded.project_bn = FoldedBatchNorm(name="aspp_project_bn_folded")
        return folded


def _producer(tensor):
    return tensor._keras_history.operation


def foldable_pairs(model):
    """{BN layer name: conv layer} for every top-level BN whose input is a conv that feeds only that BN."""
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
        if isinstance(conv, CONVS) and consumers.get(id(conv)) == {layer.name}:
            pairs[layer.name] = conv
    return pairs


def _folded_weights(conv, bn):
    """(kernel, bias) of `conv` followed by inference-mode `bn`."""
    variance = np.asarray(bn.moving_variance)
    scale = (np.asarray(bn.gamma) if bn.scale else 1.0) / np.sqrt(variance + bn.epsilon)
    shift = (np.asarray(bn.beta) if bn.center else 0.0) - np.asarray(bn.moving_mean) * scale
    kernel = np.asarray(conv.kernel)
    bias = np.asarray(conv.bias) if conv.use_bias else 0.0
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    return [kernel, bias * scale + shift]


def fold_batch_norm(model):
    """An inference-only copy of `model` with BatchNorm folded into the preceding convolutions."""
    pairs = foldable_pairs(model)
    folded_convs = {conv.name: bn for bn, conv in ((model.get_layer(name), c) for name, c in pairs.items())}

    def clone(layer):
        if layer.name in pairs:
            return FoldedBatchNorm(name=layer.name)
        if layer.name in folded_convs:
            return _biased(layer)
        if isinstance(layer, ASPP):
            return FoldedASPP.from_aspp(layer)
        return layer  # shared: keeps its weights

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in folded.layers:
        if layer.name in folded_convs:
            layer.set_weights(_folded_weights(model.get_layer(layer.name), folded_convs[layer.name]))
        elif isinstance(layer, FoldedASPP):
            original = model.get_layer(layer.name)
            for new, conv, bn in zip(layer.branch_convs + [layer.project_conv],
                                     original.branch_convs + [original.project_conv],
                                     original.branch_bns + [original.project_bn]):
                new.set_weights(_folded_weights(conv, bn))
    return folded
