"""Atrous Spatial Pyramid Pooling, the head of DeepLabv3."""
from typing import NamedTuple, Optional

import keras
from keras import ops

from keras_deeplab.layers.convolution import AtrousConv2D
from keras_deeplab.layers.normalization import BatchNormalization
from keras_deeplab.layers.registration import PACKAGE


class ASPPPart(NamedTuple):
    """One convolution of ASPP and its BatchNorm (None in the folded form, `batch_norm=False`). `kind`: "1x1",
    "atrous", "pooling" (runs on the globally pooled features) or "projection" (on the concatenated branches);
    `name`: its layers' names without "aspp_" and "_conv"/"_bn" ("1x1", "rate6", "pool", "project")."""

    name: str
    conv: keras.layers.Layer
    bn: Optional[keras.layers.Layer]
    kind: str


def _conv_bn(filters, kernel_size, rate, name, *, dtype, bn_kwargs, implementation):
    """A conv and its BatchNorm; with `bn_kwargs=None` (BN folded away) a biased conv and None."""
    if implementation == "winograd" and kernel_size != 3:
        implementation = "auto"
    conv = AtrousConv2D(filters, kernel_size, dilation_rate=rate, use_bias=bn_kwargs is None, name=f"{name}_conv",
                        implementation=implementation, dtype=dtype)
    bn = None if bn_kwargs is None else BatchNormalization(name=f"{name}_bn", dtype=dtype, **bn_kwargs)
    return conv, bn


@keras.saving.register_keras_serializable(package=PACKAGE)
class ASPP(keras.layers.Layer):
    """Atrous Spatial Pyramid Pooling (DeepLabv3, Sec. 3.3).

    Parallel branches on the backbone features: a 1x1 conv, one 3x3 atrous conv per rate in `atrous_rates`,
    and (if `image_pooling`) global average pooling -> 1x1 conv -> upsample to the feature size; each conv is
    followed by BatchNorm + ReLU. The branches are concatenated and projected by 1x1 conv + BN + ReLU, then
    optional dropout. Works on any (dynamic) feature size. `batch_norm=False` is the inference form with BatchNorm
    folded into biased convolutions (`keras_deeplab.fold`).

    `branches()` and `parts()` name the convolutions and their BatchNorms. The sublayer attributes
    (`branch_convs`/`branch_bns` in branch order, `project_conv`/`project_bn`) name the weights in saved models,
    so they keep these names.
    """

    def __init__(self, filters=256, atrous_rates=(6, 12, 18), image_pooling=True, dropout=0.0,
                 bn_momentum=0.9997, bn_epsilon=1e-5, synchronized_bn=False, implementation="auto",
                 batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.atrous_rates = int(filters), tuple(int(r) for r in atrous_rates)
        self.image_pooling, self.dropout = bool(image_pooling), float(dropout)
        self.batch_norm, self.bn_momentum, self.bn_epsilon = bool(batch_norm), float(bn_momentum), float(bn_epsilon)
        self.synchronized_bn, self.implementation = bool(synchronized_bn), implementation
        bn_kwargs = {"momentum": self.bn_momentum, "epsilon": self.bn_epsilon, "synchronized": self.synchronized_bn}
        bn_kwargs = bn_kwargs if self.batch_norm else None
        args = {"dtype": self.dtype_policy, "bn_kwargs": bn_kwargs, "implementation": implementation}
        pairs = [_conv_bn(self.filters, kernel_size, rate, f"aspp_{name}", **args)
                 for name, _, kernel_size, rate in self._branch_specs()]
        self.branch_convs = [conv for conv, _ in pairs]
        self.branch_bns = [bn for _, bn in pairs]
        self.project_conv, self.project_bn = _conv_bn(self.filters, 1, 1, "aspp_project", **args)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy) if self.dropout else None

    def _branch_specs(self):
        """(name, kind, kernel size, rate) of each parallel branch, in concatenation order."""
        specs = [("1x1", "1x1", 1, 1)] + [(f"rate{rate}", "atrous", 3, rate) for rate in self.atrous_rates]
        return specs + [("pool", "pooling", 1, 1)] * self.image_pooling

    def branches(self):
        """The parallel branches in concatenation order, as ASPPPart (kind "1x1", "atrous" or "pooling")."""
        return [ASPPPart(name, conv, bn, kind) for (name, kind, _, _), conv, bn
                in zip(self._branch_specs(), self.branch_convs, self.branch_bns)]

    def parts(self):
        """Every convolution with its BatchNorm: the branches, then the projection (kind "projection")."""
        return self.branches() + [ASPPPart("project", self.project_conv, self.project_bn, "projection")]

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        branch_shape = input_shape[:-1] + (self.filters,)
        for part in self.branches():
            pooled = part.kind == "pooling"
            part.conv.build((input_shape[0], 1, 1, input_shape[-1]) if pooled else input_shape)
            if part.bn is not None:
                part.bn.build((input_shape[0], 1, 1, self.filters) if pooled else branch_shape)
        self.project_conv.build(input_shape[:-1] + (self.filters * len(self.branch_convs),))
        if self.project_bn is not None:
            self.project_bn.build(branch_shape)
        self.built = True

    def call(self, features, training=None):
        def conv_bn_relu(conv, bn, x):
            x = conv(x)
            return ops.relu(x if bn is None else bn(x, training=training))

        outputs = []
        for part in self.branches():
            if part.kind == "pooling":
                pooled = conv_bn_relu(part.conv, part.bn, ops.mean(features, axis=(1, 2), keepdims=True))
                # Bilinear upsampling of a 1x1 map is a broadcast; this form works for dynamic sizes everywhere.
                outputs.append(pooled * ops.ones_like(outputs[0][..., :1]))
            else:
                outputs.append(conv_bn_relu(part.conv, part.bn, features))
        x = conv_bn_relu(self.project_conv, self.project_bn, ops.concatenate(outputs, axis=-1))
        if self.dropout_layer is not None:
            x = self.dropout_layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "atrous_rates": list(self.atrous_rates),
            "image_pooling": self.image_pooling,
            "dropout": self.dropout,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "synchronized_bn": self.synchronized_bn,
            "implementation": self.implementation,
            "batch_norm": self.batch_norm,
        }
