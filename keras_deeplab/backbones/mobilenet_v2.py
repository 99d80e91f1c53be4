"""Dilated MobileNetV2 (alpha 1.0), with keras.applications' layer names so its ImageNet weights load by name.

As in the TF DeepLab model zoo, the inverted-residual blocks whose stride would exceed `output_stride` run
with stride 1; the block that gives up its stride keeps the previous rate and the blocks after it use the rate
multiplied by that stride. The features are the 320-channel output of the last block (no final 1280 conv).
Depthwise kernels start He-normal: Keras' default (Glorot with the depthwise fan) shrinks activations about
tenfold per block, leaving an untrained model's logits near 1e-12.
"""
import keras

from keras_deeplab.backbones.resnet import stage_rates
from keras_deeplab.layers import BatchNormalization

# (expansion, output channels, stride) of blocks 0..16, grouped into keras.applications' stride stages.
BLOCKS = [
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
]
# DeepLabv3+'s low-level features: the depthwise output of block 2, the last at stride 4 (the TF DeepLab code's
# decoder end point `layer_4/depthwise_output`).
DECODER_BLOCK = 2


def mobilenet_v2_features(images, *, output_stride=16, bn_momentum=0.999, synchronized_bn=False):
    """Builds the backbone on preprocessed `images` ([-1, 1]); returns {"stride4": the 144-channel depthwise
    output of block 2, "block4": last features}."""
    layers = keras.layers

    def bn(name):
        return BatchNormalization(epsilon=1e-3, momentum=bn_momentum, synchronized=synchronized_bn, name=name)

    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="Conv1")(images)
    x = layers.ReLU(6.0, name="Conv1_relu")(bn("bn_Conv1")(x))
    # Strides of the three blocks after stride 4 (blocks 3, 6, 13) may turn into dilation.
    plan = iter(stage_rates(output_stride, stage_strides=(2, 2, 2), initial_stride=4))
    rate = 1
    for block_id, (expansion, filters, stride) in enumerate(BLOCKS):
        block_rate = rate
        if stride == 2 and block_id > 1:
            stride, rate_before, rate = next(plan)
            block_rate = rate_before
        prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        inputs, in_channels = x, x.shape[-1]
        if block_id:
            x = layers.Conv2D(expansion * in_channels, 1, use_bias=False, name=prefix + "expand")(x)
            x = layers.ReLU(6.0, name=prefix + "expand_relu")(bn(prefix + "expand_BN")(x))
        x = layers.DepthwiseConv2D(3, strides=stride, dilation_rate=block_rate if stride == 1 else 1,
                                   padding="same", use_bias=False, depthwise_initializer="he_normal",
                                   name=prefix + "depthwise")(x)
        x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(bn(prefix + "depthwise_BN")(x))
        if block_id == DECODER_BLOCK:
            stride4 = x
        x = bn(prefix + "project_BN")(layers.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(x))
        if in_channels == filters and stride == 1:
            x = layers.Add(name=prefix + "add")([inputs, x])
    return {"stride4": stride4, "block4": x}
