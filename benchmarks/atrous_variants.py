"""Prototypes of other ways to compute `keras_deeplab.layers.AtrousConv2D` (a library lever, measured here).

Each variant subclasses AtrousConv2D (same kernel variable, so weights load unchanged) and is swapped in for the
library class while a model is built (`patched(variant)`), inside a benchmark worker only.

- "tf_dilated": `tf.nn.conv2d(..., dilations=rate)`, TF's own dilated kernel (oneDNN when enabled) instead of
  Keras' SpaceToBatchND route.
- "rows": shifted matmuls grouped by row offset. For each kernel row i (row shift dy = (i - k // 2) * rate),
  only the input rows that land inside the output are multiplied (exact: the others meet zero padding), by
  the kernel row's taps concatenated into one [Cin, taps * Cout] matrix: one larger GEMM per kernel row
  instead of one per tap, no padded copy of the input. The column shifts are applied to the (Cout-channel)
  products, and each row block is padded back into place.
- "rows_cols": "rows", plus taps with a large column shift multiply only the input columns that land inside
  the output (their own GEMM), where the FLOPs saved outweigh copying those columns.
"""
import contextlib

from keras import ops

from keras_deeplab import layers as library_layers
from keras_deeplab.backbones import resnet as library_resnet


class TFDilatedAtrousConv2D(library_layers.AtrousConv2D):
    """AtrousConv2D through `tf.nn.conv2d(dilations=rate)`."""

    def call(self, inputs):
        import tensorflow as tf

        outputs = tf.nn.conv2d(inputs, self.kernel, strides=1, padding="SAME", dilations=list(self.dilation_rate))
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


class RowGroupedAtrousConv2D(library_layers.AtrousConv2D):
    """AtrousConv2D as one GEMM per kernel row on the rows that matter, column shifts on the products.

    With `trim_columns`, a tap with a large column shift (where the FLOPs saved outweigh copying the input
    columns: |dx| * filters >= COLUMN_TRIM_RATIO * (width - |dx|), static width only) gets its own GEMM on
    the input columns that land inside the output, instead of joining its kernel row's GEMM.
    """

    trim_columns = False
    COLUMN_TRIM_RATIO = 32

    def call(self, inputs):
        if not self._use_shifted():
            return super().call(inputs)
        kh, kw = self.kernel_size
        rh, rw = self.dilation_rate
        static_h, static_w = inputs.shape[1], inputs.shape[2]
        height, width = library_layers.spatial_size(inputs)
        filters = self.filters

        def offsets(k, rate, size):
            # Shifts of the map's size or more read padding only (skipped where the size is static).
            return [(i, (i - k // 2) * rate) for i in range(k)
                    if size is None or abs((i - k // 2) * rate) < size]

        def window(size, static_size, d):
            """(start, stop) of the input positions p + d that stay inside [0, size) (empty when |d| >= size)."""
            if static_size is not None:
                return max(0, d), static_size + min(0, d)
            return max(0, d), ops.maximum(size + min(0, d), 0)

        def shift(x, axis, d, static_size, size):
            """Pads the in-map part `x` of a map shifted by `d` back to full size along `axis`; with a dynamic
            size, crops afterwards (the pad overshoots when |d| >= size)."""
            paddings = [[0, 0]] * 4
            paddings[axis] = [max(0, -d), max(0, d)]
            padded = ops.pad(x, paddings)
            if static_size is not None:
                return padded
            return ops.slice(padded, [0, 0, 0, 0], [size if a == axis else ops.shape(padded)[a] for a in range(4)])

        cols = offsets(kw, rw, static_w)
        trimmed = [(j, dx) for j, dx in cols if self.trim_columns and static_w is not None and dx
                   and abs(dx) * filters >= self.COLUMN_TRIM_RATIO * (static_w - abs(dx))]
        grouped = [tap for tap in cols if tap not in trimmed]
        outputs = None
        for i, dy in offsets(kh, rh, static_h):
            # Output row y reads input row y + dy.
            start, stop = window(height, static_h, dy)
            block = inputs if dy == 0 else inputs[:, start:stop]
            row_sum = None
            if grouped:
                kernel = ops.concatenate([self.kernel[i, j] for j, _ in grouped], axis=-1)
                products = ops.matmul(block, kernel)
                # split (whose gradient is one concat), not slices (one zero-filled full-size gradient each)
                parts = ops.split(products, len(grouped), axis=-1) if len(grouped) > 1 else [products]
                for part, (_, dx) in zip(parts, grouped):
                    if dx:
                        start, stop = window(width, static_w, dx)
                        part = shift(part[:, :, start:stop], 2, dx, static_w, width)
                    row_sum = part if row_sum is None else row_sum + part
            for j, dx in trimmed:
                start, stop = window(width, static_w, dx)
                part = shift(ops.matmul(block[:, :, start:stop], self.kernel[i, j]), 2, dx, static_w, width)
                row_sum = part if row_sum is None else row_sum + part
            if dy:
                row_sum = shift(row_sum, 1, dy, static_h, height)
            outputs = row_sum if outputs is None else outputs + row_sum
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


class RowColumnTrimmedAtrousConv2D(RowGroupedAtrousConv2D):
    """RowGroupedAtrousConv2D that also trims the columns of large column shifts."""

    trim_columns = True


VARIANTS = {"tf_dilated": TFDilatedAtrousConv2D, "rows": RowGroupedAtrousConv2D,
            "rows_cols": RowColumnTrimmedAtrousConv2D}


@contextlib.contextmanager
def patched(variant):
    """Builds models with `VARIANTS[variant]` in place of the library's AtrousConv2D (None: no change)."""
    if variant is None:
        yield
        return
    cls = VARIANTS[variant]
    saved = library_layers.AtrousConv2D, library_resnet.AtrousConv2D
    library_layers.AtrousConv2D = library_resnet.AtrousConv2D = cls
    try:
        yield
    finally:
        library_layers.AtrousConv2D, library_resnet.AtrousConv2D = saved
