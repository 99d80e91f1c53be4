"""A stride-1, 'same'-padded (atrous) convolution as shifted GEMMs that skip the work meeting only zero padding.

TF's CPU gradient of dilated convolutions (SpaceToBatchND) is very slow at large rates. Here each kernel row is one
GEMM of the input rows that land inside the output (no padded copy of the input) with that row's taps side by
side; the products are shifted into place by their column offsets and summed. Rows and columns outside the map,
and whole taps whose shift is at least the feature size (paper, Figure 4), are skipped. Exact; measured in
`benchmarks/` (README there).
"""
from keras import ops

from keras_deeplab.layers.ordering import after
from keras_deeplab.layers.preprocessing import spatial_size
from keras_deeplab.layers.recompute import recomputed_products

# Give a tap its own GEMM on the columns inside the map when |dx| * filters >= ratio * (width - |dx|):
# 64 trims ASPP's rates 24/36 but not 12 at 65x65 (and 12/18 but not 6 at 33x33), the fastest forward +
# backward there (benchmarks/results/layer_timing_trim_*).
COLUMN_TRIM_RATIO = 64


def tap_offsets(kernel_size, rate, size):
    """(index, shift) of each kernel tap along one axis; shifts of the map's size or more read padding only and
    are skipped where the size is static (the paper's Figure 4)."""
    offsets = [(i, (i - kernel_size // 2) * rate) for i in range(kernel_size)]
    return [(i, d) for i, d in offsets if size is None or abs(d) < size]


def _inside(x, axis, shift, static_size, size):
    """The part of `x` along `axis` (1 or 2) at the positions p + shift, p in [0, size), that stay inside the map.

    `ops.slice`, not indexing: TF's gradient of Slice is one Pad, much faster on CPU than StridedSliceGrad.
    """
    if static_size is not None:
        start, length = max(0, shift), static_size - abs(shift)
    else:  # |shift| >= size leaves nothing
        start, length = ops.minimum(max(0, shift), size), ops.maximum(size - abs(shift), 0)
    shape = ops.shape(x)
    begin = [0, 0, 0, 0]
    begin[axis] = start

    def copy():
        return ops.slice(x, begin, [length if a == axis else shape[a] for a in range(4)])

    def view():
        # One image's rows are one block of memory: sliced along the leading axis of a [rows, row] view, TF's Slice
        # returns that block without copying (ASPP's input: 2048 channels, two row slices per rate).
        rows = ops.reshape(x, (shape[1], -1))
        return ops.reshape(ops.slice(rows, [start, 0], [length, ops.shape(rows)[1]]), (1, length, shape[2], shape[3]))

    if axis != 1 or x.shape[0] not in (1, None):
        return copy()
    # A batch of unknown size (Keras' fit and evaluate, an exported signature) is most often one image.
    return view() if x.shape[0] == 1 else ops.cond(ops.equal(shape[0], 1), view, copy)


def _shift_back(x, axis, shift, static_size, size):
    """Pads `x`, the in-map part of a map shifted by `shift` along `axis`, back to full size with zeros; with a
    dynamic size, crops afterwards (the padding overshoots when |shift| >= size)."""
    paddings = [[0, 0]] * 4
    paddings[axis] = [max(0, -shift), max(0, shift)]
    padded = ops.pad(x, paddings)
    if static_size is not None:
        return padded
    return ops.slice(padded, [0] * 4, [size if a == axis else ops.shape(padded)[a] for a in range(4)])


def _matmul_of(function, x, kernel):
    """`function(x) @ kernel` (a GEMM over the last axis), whose gradient copies the rows or columns of `x` again
    (`function`) instead of keeping the copy."""
    return recomputed_products(lambda x, kernel: ([function(x)], [kernel]), x, kernel)[0]


def shifted_conv(inputs, kernel, rates, column_trim_ratio=COLUMN_TRIM_RATIO):
    """The stride-1 'same' convolution of NHWC `inputs` with the odd-sized HWIO `kernel` at dilation `rates`
    (height, width), without bias, as the module docstring describes. Works on dynamic sizes."""
    kh, kw, _, filters = kernel.shape
    rh, rw = rates
    static_h, static_w = inputs.shape[1], inputs.shape[2]
    height, width = spatial_size(inputs)
    cols = tap_offsets(kw, rw, static_w)
    # A tap with a large column shift gets its own GEMM on the input columns that land inside the output,
    # where the FLOPs saved outweigh copying those columns; the others share their kernel row's GEMM.
    trimmed = [(j, dx) for j, dx in cols if static_w is not None and dx
               and abs(dx) * filters >= column_trim_ratio * (static_w - abs(dx))]
    grouped = [tap for tap in cols if tap not in trimmed]
    # Unstacked, not indexed: the gradient is one Pack instead of a kernel-sized StridedSliceGrad per tap.
    taps = [ops.unstack(row, axis=0) for row in ops.unstack(kernel, axis=0)]
    outputs = None
    # The latest sum: each use of the input (a copy of rows or columns, a GEMM) comes after the previous GEMM's
    # products are added up, so that a layer has one copy and one GEMM's products alive at a time (in a TF graph
    # they are otherwise all made at once when the input is ready: 160 MB of copies in ASPP at 513x513, and three
    # GEMM outputs of 3x the layer's output with their split parts in ResNet's last stage at 1025x1025).
    last = None
    for i, dy in tap_offsets(kh, rh, static_h):
        # Output row y reads input row y + dy: only the rows that land inside the output are multiplied.
        rows = (lambda x, dy=dy: _inside(x, 1, dy, static_h, height)) if dy else (lambda x: x)
        row_sum = None
        if grouped:
            products = _matmul_of(rows, after(last, inputs),
                                  ops.concatenate([taps[i][j] for j, _ in grouped], axis=-1))
            # split, not slices: its gradient is one concat rather than one zero-filled tensor per part
            parts = ops.split(products, len(grouped), axis=-1) if len(grouped) > 1 else [products]
            for part, (_, dx) in zip(parts, grouped):
                if dx:
                    part = _shift_back(_inside(part, 2, dx, static_w, width), 2, dx, static_w, width)
                row_sum = part if row_sum is None else row_sum + part
            last = row_sum
        for j, dx in trimmed:
            part = _matmul_of(lambda x, rows=rows, dx=dx: _inside(rows(x), 2, dx, static_w, width),
                              after(last, inputs), taps[i][j])
            part = _shift_back(part, 2, dx, static_w, width)
            row_sum = last = part if row_sum is None else row_sum + part
        if dy:
            row_sum = _shift_back(row_sum, 1, dy, static_h, height)
        outputs = last = row_sum if outputs is None else outputs + row_sum
    return outputs
