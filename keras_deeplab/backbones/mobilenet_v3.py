"""Dilated MobileNetV3-Large in torchvision's layout (`torchvision.models.mobilenet_v3_large(dilated=True)`, the
backbone of torchvision's `deeplabv3_mobilenet_v3_large`).

A stride-2 3x3 stem conv, 15 inverted-residual blocks (1x1 expansion, depthwise k x k, squeeze-excitation where
used, 1x1 projection), a 1x1 conv to 960 channels; BatchNorm eps 1e-3 after every conv but the SE ones, ReLU or
hardswish as configured. Padding is torchvision's, symmetric: (k - 1) // 2 * dilation on each side (explicit
zero padding before the stride-2 convs, whose Keras 'same' padding would be asymmetric).

Output stride: a block whose stride would take the features beyond `output_stride` runs at stride 1 and
multiplies the dilation rate by its stride, for itself and every later block. At 16 this is torchvision's
`dilated=True` (the last stage at rate 2); at 8 the stage before runs at rate 2 and the last at rate 4; 32 has
no dilation.

Keras layer `backbone_{i}[_block_{j}]_{k}` is torchvision's module `backbone.{i}[.block.{j}].{k}` (with
"." written "_"): `i` indexes `MobileNetV3.features`, `j` the parts of an inverted-residual block, `k` a conv (0),
BatchNorm (1) and activation (2), or an SE module (`avgpool`, `fc1`, `activation`, `fc2`, `scale_activation`).
Depthwise kernels start He-normal, as in mobilenet_v2.py.
"""
import collections
import itertools

import keras

from keras_deeplab.backbones.resnet import stage_rates
from keras_deeplab.layers import BatchNormalization, Conv2D

Block = collections.namedtuple("Block", "kernel expanded filters squeeze activation stride")
# torchvision's `_mobilenet_v3_conf("mobilenet_v3_large")`: features[1..15]. `squeeze`: SE channels (0: no SE).
BLOCKS = (
    Block(3, 16, 16, 0, "relu", 1),
    Block(3, 64, 24, 0, "relu", 2),
    Block(3, 72, 24, 0, "relu", 1),
    Block(5, 72, 40, 24, "relu", 2),
    Block(5, 120, 40, 32, "relu", 1),
    Block(5, 120, 40, 32, "relu", 1),
    Block(3, 240, 80, 0, "hard_swish", 2),
    Block(3, 200, 80, 0, "hard_swish", 1),
    Block(3, 184, 80, 0, "hard_swish", 1),
    Block(3, 184, 80, 0, "hard_swish", 1),
    Block(3, 480, 112, 120, "hard_swish", 1),
    Block(3, 672, 112, 168, "hard_swish", 1),
    Block(5, 672, 160, 168, "hard_swish", 2),
    Block(5, 960, 160, 240, "hard_swish", 1),
    Block(5, 960, 160, 240, "hard_swish", 1),
)
STEM_FILTERS = 16
LAST_FILTERS = 960
# The stride-8 features torchvision's auxiliary head reads: `features[stage_indices[-4]]`, the first 40-channel block.
AUX_BLOCK = 4
# DeepLabv3+'s low-level features: the depthwise output of features[3], the last block at stride 4 (the TF DeepLab
# code's decoder end point `layer_4/depthwise_output`).
DECODER_BLOCK = 3


def mobilenet_v3_large_features(images, *, output_stride=16, bn_momentum=0.99, synchronized_bn=False):
    """Builds the backbone on preprocessed `images` (torchvision's normalization); returns {"stride4": the
    72-channel depthwise output of block 3, "stride8": the 40-channel output of block 4, "block4": the 960-channel
    last features}."""
    layers = keras.layers

    def conv_bn(x, name, filters, kernel=1, strides=1, dilation=1, activation=None, depthwise=False):
        """torchvision's Conv2dNormActivation: conv (no bias), BatchNorm, optional activation."""
        padding = "same"
        if strides > 1:
            x = layers.ZeroPadding2D((kernel - 1) // 2 * dilation, name=f"{name}_pad")(x)
            padding = "valid"
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, strides=strides, dilation_rate=dilation, padding=padding,
                                       use_bias=False, depthwise_initializer="he_normal", name=f"{name}_0")(x)
        else:
            x = Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=f"{name}_0")(x)
        x = BatchNormalization(epsilon=1e-3, momentum=bn_momentum, synchronized=synchronized_bn,
                               name=f"{name}_1")(x)
        return x if activation is None else layers.Activation(activation, name=f"{name}_2")(x)

    def squeeze_excitation(x, name, squeeze):
        scale = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_avgpool")(x)
        scale = Conv2D(squeeze, 1, name=f"{name}_fc1")(scale)
        scale = layers.Activation("relu", name=f"{name}_activation")(scale)
        scale = Conv2D(x.shape[-1], 1, name=f"{name}_fc2")(scale)
        scale = layers.Activation("hard_sigmoid", name=f"{name}_scale_activation")(scale)
        return layers.Multiply(name=f"{name}_scale")([x, scale])

    x = conv_bn(images, "backbone_0", STEM_FILTERS, 3, strides=2, activation="hard_swish")
    # The stride-2 blocks after stride 4 (blocks 4, 7, 13) may turn into dilation, each for its whole stage.
    strided = [index for index, block in enumerate(BLOCKS, start=1) if block.stride > 1][1:]
    plan = dict(zip(strided, stage_rates(output_stride)))
    rate, features = 1, {}
    for index, block in enumerate(BLOCKS, start=1):
        stride = block.stride
        if index in plan:
            stride, _, rate = plan[index]
        name, parts = f"backbone_{index}_block", itertools.count()  # torchvision numbers the parts present
        y = x
        if block.expanded != x.shape[-1]:
            y = conv_bn(y, f"{name}_{next(parts)}", block.expanded, activation=block.activation)
        y = conv_bn(y, f"{name}_{next(parts)}", block.expanded, block.kernel, strides=stride, dilation=rate,
                    activation=block.activation, depthwise=True)
        if index == DECODER_BLOCK:
            features["stride4"] = y
        if block.squeeze:
            y = squeeze_excitation(y, f"{name}_{next(parts)}", block.squeeze)
        y = conv_bn(y, f"{name}_{next(parts)}", block.filters)
        if block.stride == 1 and x.shape[-1] == block.filters:
            y = layers.Add(name=f"backbone_{index}_add")([x, y])
        x = y
        if index == AUX_BLOCK:
            features["stride8"] = x
    features["block4"] = conv_bn(x, f"backbone_{len(BLOCKS) + 1}", LAST_FILTERS, activation="hard_swish")
    return features
