"""Atrous ResNet (50/101/152) built with the functional API.

Two layouts share one builder:
- "v1": keras.applications' ResNet (stride on the first 1x1 conv of a unit, conv biases, BN eps 1.001e-5, TF
  padding), with keras.applications' layer names so its ImageNet weights load by name. Every unit of a stage
  whose stride is replaced by dilation uses the stage's rate, as in the paper and the TF DeepLab code.
- "v1.5": torchvision's ResNet (stride on the 3x3 conv, no conv biases, BN eps 1e-5, symmetric padding); the
  first unit of a dilated stage keeps the previous rate, as torchvision does.
"""
import itertools
import operator

import keras

from keras_deeplab.layers import AtrousConv2D, BatchNormalization, Conv2D

STAGE_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_FILTERS = (64, 128, 256, 512)
VARIANTS = {
    "v1": {"use_bias": True, "bn_epsilon": 1.001e-5, "stride_on_3x3": False, "first_unit_keeps_rate": False},
    "v1.5": {"use_bias": False, "bn_epsilon": 1e-5, "stride_on_3x3": True, "first_unit_keeps_rate": True},
}


def stage_rates(output_stride, stage_strides=(2, 2, 2), initial_stride=4):
    """For stages whose stride would exceed `output_stride`, replace the stride by dilation.

    Returns [(stride, rate_before, rate)] per stage: the stage's stride, the rate in force before it, and the
    rate its units use.
    """
    current, rate, plan = initial_stride, 1, []
    for stride in stage_strides:
        if current * stride > output_stride:
            plan.append((1, rate, rate * stride))
            rate *= stride
        else:
            plan.append((stride, rate, rate))
            current *= stride
    if current != output_stride:
        choices = list(itertools.accumulate(stage_strides, operator.mul, initial=initial_stride))[1:]
        raise ValueError(f"output_stride must be one of {', '.join(map(str, choices))}, got {output_stride}")
    return plan


def resnet_features(images, *, depth=101, variant="v1", output_stride=16, multi_grid=(1, 1, 1), extra_blocks=0,
                    bn_momentum=0.99, synchronized_bn=False, atrous_implementation="auto"):
    """Builds the backbone on the (preprocessed) `images` tensor; returns {"block1".."block4": tensor}.

    `extra_blocks` appends that many copies of block4 ("block5", ...; DeepLabv3's cascaded model): each halves
    the resolution unless `output_stride` turns its stride into a doubled rate, and `multi_grid` applies to each.
    """
    if depth not in STAGE_UNITS:
        raise ValueError(f"ResNet depth must be one of {sorted(STAGE_UNITS)}, got {depth}")
    if variant not in VARIANTS:
        raise ValueError(f"ResNet variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    units = STAGE_UNITS[depth] + STAGE_UNITS[depth][-1:] * extra_blocks
    stage_filters = STAGE_FILTERS + STAGE_FILTERS[-1:] * extra_blocks
    if len(multi_grid) != units[-1]:
        raise ValueError(f"multi_grid needs {units[-1]} values (one per unit of the last block), got {multi_grid}")
    spec = VARIANTS[variant]
    layers = keras.layers

    def conv(filters, kernel, name, strides=1):
        return Conv2D(filters, kernel, strides=strides, use_bias=spec["use_bias"], name=name)

    def bn(name):
        return BatchNormalization(epsilon=spec["bn_epsilon"], momentum=bn_momentum, synchronized=synchronized_bn,
                                  name=name)

    x = layers.ZeroPadding2D(3, name="conv1_pad")(images)
    x = conv(64, 7, "conv1_conv", strides=2)(x)
    x = layers.Activation("relu", name="conv1_relu")(bn("conv1_bn")(x))
    # Zero padding equals -inf padding here: the max pool follows a ReLU.
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    plan = [(1, 1, 1)] + stage_rates(output_stride, stage_strides=(2,) * (len(units) - 1))
    features = {}
    for stage, (n_units, filters, (stride, rate_before, rate)) in enumerate(zip(units, stage_filters, plan)):
        multi_grid_stage = stage >= len(STAGE_FILTERS) - 1  # block4 and its copies
        for unit in range(n_units):
            name = f"conv{stage + 2}_block{unit + 1}"
            unit_stride = stride if unit == 0 else 1
            unit_rate = rate_before if (unit == 0 and spec["first_unit_keeps_rate"]) else rate
            if multi_grid_stage:
                unit_rate *= multi_grid[unit]
            shortcut = x
            if unit == 0:
                shortcut = bn(f"{name}_0_bn")(conv(4 * filters, 1, f"{name}_0_conv", strides=unit_stride)(x))
            y = conv(filters, 1, f"{name}_1_conv", strides=1 if spec["stride_on_3x3"] else unit_stride)(x)
            y = layers.Activation("relu", name=f"{name}_1_relu")(bn(f"{name}_1_bn")(y))
            if spec["stride_on_3x3"] and unit_stride > 1:
                y = layers.ZeroPadding2D(1, name=f"{name}_2_pad")(y)
                y = conv(filters, 3, f"{name}_2_conv", strides=unit_stride)(y)
            else:
                y = AtrousConv2D(filters, 3, dilation_rate=unit_rate, use_bias=spec["use_bias"],
                                 implementation=atrous_implementation, name=f"{name}_2_conv")(y)
            y = layers.Activation("relu", name=f"{name}_2_relu")(bn(f"{name}_2_bn")(y))
            y = bn(f"{name}_3_bn")(conv(4 * filters, 1, f"{name}_3_conv")(y))
            x = layers.Add(name=f"{name}_add")([shortcut, y])
            x = layers.Activation("relu", name=f"{name}_out")(x)
        features[f"block{stage + 1}"] = x
    return features
