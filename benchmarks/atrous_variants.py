"""Other ways to compute `keras_deeplab.layers.AtrousConv2D`, kept to measure the library's choice against.

Each variant subclasses AtrousConv2D (same kernel variable, so weights load unchanged) and is swapped in for the
library class while a model is built (`patched(variant)`), inside a benchmark worker only. Every variant computes
all rates > 1 its own way (the library's "auto" sends rates <= NATIVE_MAX_RATE to TF's dilated kernel).

- "per_tap": the library's form before 2026-11-25: the input zero-padded once, then one 1x1 matmul per kernel
  tap on a shifted window of it, summed; whole taps that see only padding are skipped.
- "rows": the library's row-grouped GEMMs without column trimming.
- "tf_dilated": `tf.nn.conv2d(..., dilations=rate)`, TF's own dilated kernel (oneDNN when enabled) instead of
  Keras' SpaceToBatchND route. Forward only: TF has no CPU gradient for it ("Current CPU implementations do not
  yet support dilation rates larger than 1").
"""
import contextlib

from keras import ops

from keras_deeplab.backbones import resnet as library_resnet
from keras_deeplab.layers import AtrousConv2D as Library, aspp as library_aspp, spatial_size
from keras_deeplab.layers.shifted import COLUMN_TRIM_RATIO, shifted_conv, tap_offsets


def _bias_and_activation(layer, outputs):
    """What a convolution layer's call does after the convolution itself."""
    if layer.use_bias:
        outputs = outputs + layer.bias
    return outputs if layer.activation is None else layer.activation(outputs)


class PerTapAtrousConv2D(Library):
    """One matmul per kernel tap on a shifted window of the zero-padded input."""

    def call(self, inputs):
        kh, kw = self.kernel_size
        rh, rw = self.dilation_rate
        rows = tap_offsets(kh, rh, inputs.shape[1])
        cols = tap_offsets(kw, rw, inputs.shape[2])
        pad_h = max(abs(d) for _, d in rows)
        pad_w = max(abs(d) for _, d in cols)
        padded = ops.pad(inputs, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        height, width = spatial_size(inputs)
        outputs = None
        for i, dy in rows:
            for j, dx in cols:
                window = inputs if dy == dx == 0 else ops.slice(
                    padded, [0, pad_h + dy, pad_w + dx, 0], [ops.shape(inputs)[0], height, width, ops.shape(inputs)[3]])
                term = ops.matmul(window, self.kernel[i, j])
                outputs = term if outputs is None else outputs + term
        return _bias_and_activation(self, outputs)


class ShiftedAtrousConv2D(Library):
    """The library's shifted form at every rate > 1 (no native kernel or Winograd at small rates), trimming
    columns at `column_trim_ratio`."""

    column_trim_ratio = COLUMN_TRIM_RATIO

    def call(self, inputs):
        if max(self.dilation_rate) == 1:
            return super().call(inputs)
        outputs = shifted_conv(inputs, ops.convert_to_tensor(self.kernel), self.dilation_rate, self.column_trim_ratio)
        return _bias_and_activation(self, outputs)


class RowGroupedAtrousConv2D(ShiftedAtrousConv2D):
    """The library's shifted form without column trimming, at every rate > 1."""

    column_trim_ratio = float("inf")


class TFDilatedAtrousConv2D(Library):
    """AtrousConv2D through `tf.nn.conv2d(dilations=rate)`."""

    def call(self, inputs):
        import tensorflow as tf

        outputs = tf.nn.conv2d(inputs, self.kernel, strides=1, padding="SAME", dilations=list(self.dilation_rate))
        return _bias_and_activation(self, outputs)


VARIANTS = {"per_tap": PerTapAtrousConv2D, "rows": RowGroupedAtrousConv2D, "shifted": ShiftedAtrousConv2D,
            "tf_dilated": TFDilatedAtrousConv2D}


@contextlib.contextmanager
def patched(variant):
    """Builds models with `VARIANTS[variant]` in place of the library's AtrousConv2D (None: no change)."""
    if variant is None:
        yield
        return
    cls = VARIANTS[variant]
    saved = library_aspp.AtrousConv2D, library_resnet.AtrousConv2D
    library_aspp.AtrousConv2D = library_resnet.AtrousConv2D = cls
    try:
        yield
    finally:
        library_aspp.AtrousConv2D, library_resnet.AtrousConv2D = saved
