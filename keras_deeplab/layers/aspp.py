"""Atrous Spatial Pyramid Pooling, the head of DeepLabv3."""
from typing import NamedTuple, Optional

import keras
from keras import ops

from keras_deeplab.layers.convolution import AtrousConv2D
from keras_deeplab.layers.normalization import BatchNormalization
from keras_deeplab.layers.registration import PACKAGE


class ASPPPart(NamedTuple):
    """One convolution of ASPP and its BatchNorm (None in the folded form, `batch_norm=False`). `kind`: "1x1",
    "atrous", "depthwise" (the first half of a separable atrous branch, "atrous" being its pointwise half),
    "pooling" (runs on the globally pooled features) or "projection" (on the concatenated branches); `name`: its
    layers' names without "aspp_" and "_conv"/"_bn" ("1x1", "rate6", "rate6_depthwise", "pool", "project")."""

    name: str
    conv: keras.layers.Layer
    bn: Optional[keras.layers.Layer]
    kind: str


def _conv_bn(filters, kernel_size, rate, name, *, dtype, bn_kwargs, implementation, depthwise=False):
    """A conv (depthwise 3x3 if `depthwise`) and its BatchNorm; with `bn_kwargs=None` (BN folded away) a biased
    conv and None."""
    if implementation == "winograd" and kernel_size != 3:
        implementation = "auto"
    if depthwise:
        conv = keras.layers.DepthwiseConv2D(3, dilation_rate=rate, padding="same", use_bias=bn_kwargs is None,
                                            depthwise_initializer="he_normal", name=f"{name}_conv", dtype=dtype)
    else:
        conv = AtrousConv2D(filters, kernel_size, dilation_rate=rate, use_bias=bn_kwargs is None,
                            name=f"{name}_conv", implementation=implementation, dtype=dtype)
    bn = None if bn_kwargs is None else BatchNormalization(name=f"{name}_bn", dtype=dtype, **bn_kwargs)
    return conv, bn


@keras.saving.register_keras_serializable(package=PACKAGE)
class ASPP(keras.layers.Layer):
    """Atrous Spatial Pyramid Pooling (DeepLabv3, Sec. 3.3).

    Parallel branches on the backbone features: a 1x1 conv, one 3x3 atrous conv per rate in `atrous_rates`,
    and (if `image_pooling`) global average pooling -> 1x1 conv -> upsample to the feature size; each conv is
    followed by BatchNorm + ReLU. The branches are concatenated and projected by 1x1 conv + BN + ReLU, then
    optional dropout. `separable=True` makes each atrous branch depthwise-separable (DeepLabv3+): a depthwise 3x3
    atrous conv + BN + ReLU, then the branch's conv as a pointwise 1x1. Works on any (dynamic) feature size.
    `batch_norm=False` is the inference form with BatchNorm folded into biased convolutions (`keras_deeplab.fold`).

    `branches()` and `parts()` name the convolutions and their BatchNorms. The sublayer attributes
    (`branch_convs`/`branch_bns` in branch order, `project_conv`/`project_bn`, and `depthwise_convs`/`depthwise_bns`
    aligned with the branches, None where a branch has no depthwise half) name the weights in saved models, so they
    keep these names.
    """

    def __init__(self, filters=256, atrous_rates=(6, 12, 18), image_pooling=True, dropout=0.0,
                 bn_momentum=0.9997, bn_epsilon=1e-5, synchronized_bn=False, implementation="auto",
                 batch_norm=True, separable=False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.atrous_rates = int(filters), tuple(int(r) for r in atrous_rates)
        self.image_pooling, self.dropout = bool(image_pooling), float(dropout)
        self.batch_norm, self.bn_momentum, self.bn_epsilon = bool(batch_norm), float(bn_momentum), float(bn_epsilon)
        self.synchronized_bn, self.implementation = bool(synchronized_bn), implementation
        self.separable = bool(separable)
        bn_kwargs = {"momentum": self.bn_momentum, "epsilon": self.bn_epsilon, "synchronized": self.synchronized_bn}
        bn_kwargs = bn_kwargs if self.batch_norm else None
        args = {"dtype": self.dtype_policy, "bn_kwargs": bn_kwargs, "implementation": implementation}
        split = [self.separable and kind == "atrous" for _, kind, _, _ in self._branch_specs()]
        pairs = [_conv_bn(self.filters, 1 if depthwise else kernel_size, 1 if depthwise else rate, f"aspp_{name}",
                          **args) for (name, _, kernel_size, rate), depthwise in zip(self._branch_specs(), split)]
        self.branch_convs = [conv for conv, _ in pairs]
        self.branch_bns = [bn for _, bn in pairs]
        depthwise = [_conv_bn(None, 3, rate, f"aspp_{name}_depthwise", depthwise=True, **args) if depthwise
                     else (None, None) for (name, _, _, rate), depthwise in zip(self._branch_specs(), split)]
        self.depthwise_convs = [conv for conv, _ in depthwise]
        self.depthwise_bns = [bn for _, bn in depthwise]
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
        """Every convolution with its BatchNorm in computation order: each branch (after its depthwise half, kind
        "depthwise", if separable), then the projection (kind "projection")."""
        parts = []
        for branch, conv, bn in zip(self.branches(), self.depthwise_convs, self.depthwise_bns):
            if conv is not None:
                parts.append(ASPPPart(f"{branch.name}_depthwise", conv, bn, "depthwise"))
            parts.append(branch)
        return parts + [ASPPPart("project", self.project_conv, self.project_bn, "projection")]

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        branch_shape = input_shape[:-1] + (self.filters,)
        for part in self.parts()[:-1]:
            pooled, depthwise = part.kind == "pooling", part.kind == "depthwise"
            part.conv.build((input_shape[0], 1, 1, input_shape[-1]) if pooled else input_shape)
            if part.bn is not None:
                part.bn.build((input_shape[0], 1, 1, self.filters) if pooled else input_shape if depthwise
                              else branch_shape)
        self.project_conv.build(input_shape[:-1] + (self.filters * len(self.branch_convs),))
        if self.project_bn is not None:
            self.project_bn.build(branch_shape)
        self.built = True

    def call(self, features, training=None):
        def conv_bn_relu(conv, bn, x):
            x = conv(x)
            return ops.relu(x if bn is None else bn(x, training=training))

        outputs = []
        for part, depthwise_conv, depthwise_bn in zip(self.branches(), self.depthwise_convs, self.depthwise_bns):
            if part.kind == "pooling":
                pooled = conv_bn_relu(part.conv, part.bn, ops.mean(features, axis=(1, 2), keepdims=True))
                # Bilinear upsampling of a 1x1 map is a broadcast; this form works for dynamic sizes everywhere.
                outputs.append(pooled * ops.ones_like(outputs[0][..., :1]))
            else:
                x = features if depthwise_conv is None else conv_bn_relu(depthwise_conv, depthwise_bn, features)
                outputs.append(conv_bn_relu(part.conv, part.bn, x))
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
            "separable": self.separable,
        }
