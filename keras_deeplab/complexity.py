"""Model size and compute: parameter counts and multiply-accumulates (MACs) of the convolutions.

Conventions: one MAC is one multiply plus one add; FLOPs = 2 * MACs. Only convolutions are counted (every
Conv2D, atrous or not, DepthwiseConv2D, and the convolutions inside ASPP), at their nominal size: an atrous
3x3 conv counts all 9 taps even where `AtrousConv2D` skips taps that only read padding. BatchNorm, ReLU,
additions, pooling and resizing are left out (under 1 % of a DeepLabV3's total).

torchvision's "GFLOPS" for deeplabv3_resnet50/101 (178.7 / 258.7 at 520x520) are in fact GMACs: the same
structure (ResNet v1.5, OS8, ASPP 12/24/36, extra head conv, FCN aux head) counts 178.7 / 258.7 G MACs here,
i.e. 357 / 517 GFLOPs in the FLOPs = 2 * MACs convention (tests/test_complexity.py checks this).
"""
import argparse
import math

import keras

from keras_deeplab.cascade import DeepLabV3Cascade
from keras_deeplab.layers import ASPP
from keras_deeplab.model import DeepLabV3


def count_parameters(model):
    """(trainable, total) number of scalar weights; total adds BatchNorm's moving statistics."""
    trainable = sum(math.prod(v.shape) for v in model.trainable_weights)
    total = sum(math.prod(v.shape) for v in model.weights)
    return trainable, total


def static_copy(model, image_size):
    """`model` with a static [image_size, channels] input, to read every layer's output shape.

    DeepLabV3 and DeepLabV3Cascade are rebuilt from their config (the copy has fresh weights: only shapes
    matter); other functional models are cloned onto a new input. A model already built for that size is
    returned as it is.
    """
    height, width = image_size
    channels = model.input.shape[-1]
    if tuple(model.input.shape[1:3]) == (height, width):
        return model
    if isinstance(model, (DeepLabV3, DeepLabV3Cascade)):
        return type(model).from_config({**model.get_config(), "input_shape": [height, width, channels]})
    return keras.models.clone_model(model, input_tensors=keras.Input((height, width, channels)))


def _conv_macs(conv, output_shape):
    """MACs of one image through a conv: output positions x kernel size.

    A Conv2D kernel is [kh, kw, cin / groups, cout] and a DepthwiseConv2D kernel [kh, kw, cin, multiplier], so
    each output element of either costs kernel.size / output channels MACs.
    """
    return math.prod(output_shape[1:3]) * math.prod(conv.kernel.shape)


def _aspp_macs(aspp, input_shape):
    """MACs of ASPP's sublayers on a feature map of `input_shape` (the pooling branch runs on 1x1)."""
    feature_shape = tuple(input_shape[:-1]) + (aspp.filters,)
    pooled_shape = (input_shape[0], 1, 1, aspp.filters)
    return sum(_conv_macs(part.conv, pooled_shape if part.kind == "pooling" else feature_shape)
               for part in aspp.parts())


def count_macs(model, image_size=None):
    """Multiply-accumulates of all convolutions for one image of `image_size` = (height, width) (None: the
    model's own static input size). Multiply by 2 for FLOPs."""
    if image_size is not None:
        model = static_copy(model, image_size)
    if any(dim is None for dim in model.input.shape[1:]):
        raise ValueError(f"count_macs needs a static input size; the model's input is {model.input.shape}: "
                         "pass image_size=(height, width)")
    macs = 0
    for layer in model.layers:
        if isinstance(layer, ASPP):
            macs += _aspp_macs(layer, layer.input.shape)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            macs += _conv_macs(layer, layer.output.shape)
        elif any(v.name == "kernel" for v in layer.weights):
            raise ValueError(f"count_macs does not know layer {layer.name!r} ({type(layer).__name__})")
    return macs


def summary_variants():
    """(label, model keyword arguments) of the variants `deeplab summary` tabulates; "architecture" names the
    class when it is not DeepLabV3."""
    from keras_deeplab.convert import TORCHVISION_CONFIG

    variants = []
    for backbone in ("resnet50", "resnet101", "resnet152", "mobilenet_v2"):
        for output_stride in (8, 16, 32):
            kwargs = {"backbone": backbone, "output_stride": output_stride}
            variants.append((f"{backbone} OS{output_stride}", kwargs))
    for depth in (50, 101):
        variants.append((f"torchvision-compatible R{depth} (v1.5, OS8, head conv, aux head)",
                         {**TORCHVISION_CONFIG, "backbone": f"resnet{depth}_v1.5", "aux_head": True}))
    for depth, output_stride, multi_grid in ((50, 16, (1, 1, 1)), (50, 8, (1, 1, 1)), (101, 16, (1, 2, 1))):
        variants.append((f"cascaded R{depth} block7 OS{output_stride} MG{multi_grid} (no ASPP)",
                         {"architecture": DeepLabV3Cascade, "backbone": f"resnet{depth}", "last_block": 7,
                          "output_stride": output_stride, "multi_grid": multi_grid}))
    return variants


def summary_table(size=513, num_classes=21):
    """A Markdown table of parameters and compute of the `summary_variants()` at size x size."""
    lines = [f"| Model ({num_classes} classes) | ASPP rates | Parameters (M) | GMACs | GFLOPs |",
             "|---|---|---:|---:|---:|"]
    for label, kwargs in summary_variants():
        kwargs = dict(kwargs)
        model = kwargs.pop("architecture", DeepLabV3)(num_classes, input_shape=(size, size, 3), **kwargs)
        trainable, total = count_parameters(model)
        macs = count_macs(model)
        rates = "/".join(str(r) for r in getattr(model, "atrous_rates", ())) or "none"
        lines.append(f"| {label} | {rates} | {trainable / 1e6:.2f} | {macs / 1e9:.1f} "
                     f"| {2 * macs / 1e9:.1f} |")
        del model
        keras.backend.clear_session()
    return "\n".join(lines)


SUMMARY_DESCRIPTION = ("Markdown table of DeepLabV3 variants and cascaded models: trainable parameters and convolution "
                       "GMACs / GFLOPs (FLOPs = 2 x MACs) for one size x size image.")


def main(argv):
    parser = argparse.ArgumentParser(prog="deeplab summary", description=SUMMARY_DESCRIPTION)
    parser.add_argument("--size", type=int, default=513, help="square input size in pixels (default 513)")
    parser.add_argument("--num-classes", type=int, default=21, help="number of classes (default 21)")
    args = parser.parse_args(argv)
    if args.size < 1 or args.num_classes < 1:
        parser.error("--size and --num-classes must be positive")
    print(summary_table(args.size, args.num_classes))
    return 0
