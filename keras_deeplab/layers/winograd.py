"""A stride-1, 'same'-padded 3x3 (atrous) convolution as F(4x4, 3x3) Winograd (Lavin & Gray, 2016): 4x fewer
multiplications than the taps, exact up to float rounding (10-20x the direct convolution's)."""
import numpy as np
from keras import ops

from keras_deeplab.layers.preprocessing import spatial_size
from keras_deeplab.layers.recompute import recomputed_products

# Each 4x4 output tile from a 6x6 input tile.
WINOGRAD_OUTPUTS, WINOGRAD_INPUTS = 4, 6
# Interpolation points (and infinity). 1/2 and -2 instead of the usual +-2: the largest float32 error on a
# 512-channel 65x65 map (values up to 5) measured 2.3e-5 instead of 5.6e-5 to 8.0e-5 (the direct convolution's:
# 1.6e-6).
WINOGRAD_POINTS = (0.0, 1.0, -1.0, 0.5, -2.0)


def _winograd_transforms():
    """The 2D transforms of F(4x4, 3x3) as matrices over a tile's row-major positions: output (16 x 36), kernel
    (36 x 9), input (36 x 36). They are kron(M, M) of the 1D (A^T, G, B^T) from the Toom-Cook construction, with
    `y = A^T [(G g) * (B^T d)]` the correlation of 6 inputs `d` with 3 weights `g`."""
    n, taps = WINOGRAD_INPUTS, 3
    points = np.asarray(WINOGRAD_POINTS)
    a_t, g, b_t = np.zeros((WINOGRAD_OUTPUTS, n)), np.zeros((n, taps)), np.zeros((n, n))
    for i, point in enumerate(points):
        others = np.delete(points, i)
        a_t[:, i] = point ** np.arange(WINOGRAD_OUTPUTS)
        g[i] = point ** np.arange(taps) / np.prod(point - others)
        b_t[i, :n - 1] = np.poly(others)[::-1]  # coefficients of prod_{j != i} (x - a_j), lowest power first
    a_t[-1, -1] = g[-1, -1] = 1.0
    b_t[-1] = np.poly(points)[::-1]
    return np.kron(a_t, a_t), np.kron(g, g), np.kron(b_t, b_t)


WINOGRAD_OUTPUT, WINOGRAD_KERNEL, WINOGRAD_INPUT = _winograd_transforms()


def _tile_rows(tiles, rate):
    """[6, tiles, rate] positions along one axis of a map zero-padded by `rate` that the tiles read: tile t's outputs
    t * 4 * rate + i * rate + phase (i < 4, phase < rate) take inputs t * 4 * rate + j * rate + phase, j < 6."""
    tile = ops.reshape(ops.arange(tiles) * WINOGRAD_OUTPUTS * rate, (1, -1, 1))
    tap = ops.reshape(ops.arange(WINOGRAD_INPUTS) * rate, (-1, 1, 1))
    return tile + tap + ops.reshape(ops.arange(rate), (1, 1, -1))


def _transform(matrix, x):
    """`matrix` (p x q) applied to the leading axis (of size q) of `x`: one matmul."""
    shape = ops.shape(x)
    y = ops.matmul(ops.convert_to_tensor(matrix, x.dtype), ops.reshape(x, (shape[0], -1)))
    return ops.reshape(y, (matrix.shape[0],) + tuple(shape[1:]))


def _winograd_region(padded, kernel, rates, tiles):
    """The outputs [0, 4 * rate_h * tiles_h) x [0, 4 * rate_w * tiles_w) of a stride-1 'same' 3x3 convolution with
    dilation `rates`, from its input zero-padded by the rates: F(4x4, 3x3) Winograd on each phase of the dilation.

    One gather takes the 36 inputs of every tile (tiles of one phase are 4 * rate apart, their taps rate apart);
    after the input transform, each of the 36 positions is one GEMM with the transformed kernel (4x fewer
    multiplications than the 9 taps' GEMMs); the output transform maps the products back to the 16 outputs."""
    batch, width, channels, filters = ops.shape(padded)[0], ops.shape(padded)[2], kernel.shape[2], kernel.shape[3]
    (rate_h, rate_w), (tiles_h, tiles_w) = rates, tiles
    rows, cols = _tile_rows(tiles_h, rate_h), _tile_rows(tiles_w, rate_w)
    # [6, 6, tiles_h, rate_h, tiles_w, rate_w] flat positions in the padded map, tile positions 6x6 leading
    index = (ops.reshape(rows, (WINOGRAD_INPUTS, 1, tiles_h, rate_h, 1, 1)) * width
             + ops.reshape(cols, (1, WINOGRAD_INPUTS, 1, 1, tiles_w, rate_w)))
    index = ops.reshape(index, (WINOGRAD_INPUTS ** 2, -1))

    def transformed(padded, kernel):  # the 36 transformed inputs [tiles' pixels * b, c] and kernels [c, f]
        pixels = ops.reshape(ops.transpose(padded, (1, 2, 0, 3)), (-1, batch, channels))  # [H' * W', b, c]
        d = ops.take(pixels, index, axis=0)  # [36, tiles' pixels, b, c]
        d = ops.unstack(_transform(WINOGRAD_INPUT, ops.reshape(d, (WINOGRAD_INPUTS ** 2, -1, channels))), axis=0)
        g = ops.unstack(_transform(WINOGRAD_KERNEL, ops.reshape(kernel, (9, channels, filters))), axis=0)
        return d, g

    # 36 GEMMs, not one batched matmul (TF's CPU BatchMatMul runs these shapes at about half the speed); the
    # gradient transforms again rather than keeping the tiles (2.25x the input) and kernels (4x the kernel)
    y = ops.stack(recomputed_products(transformed, padded, kernel))
    m = WINOGRAD_OUTPUTS
    y = ops.reshape(_transform(WINOGRAD_OUTPUT, y), (m, m, tiles_h, rate_h, tiles_w, rate_w, batch, filters))
    y = ops.transpose(y, (6, 2, 0, 3, 4, 1, 5, 7))  # [b, tiles_h, 4, rate_h, tiles_w, 4, rate_w, f]
    return ops.reshape(y, (batch, tiles_h * m * rate_h, tiles_w * m * rate_w, filters))


def winograd_conv(inputs, kernel, rates):
    """The stride-1 'same' convolution of NHWC `inputs` with the 3x3 HWIO `kernel` at dilation `rates` (height,
    width), without bias: Winograd on the largest part of the map made of whole tiles (4 * rate outputs per side
    and phase), the direct convolution on the rest (a strip at the bottom and at the right, narrower than
    4 * rate). Works on dynamic sizes."""
    height, width = spatial_size(inputs)
    rate_h, rate_w = rates
    span_h, span_w = WINOGRAD_OUTPUTS * rate_h, WINOGRAD_OUTPUTS * rate_w
    tiles = (height // span_h, width // span_w)
    region_h, region_w = tiles[0] * span_h, tiles[1] * span_w
    padded = ops.pad(inputs, [[0, 0], [rate_h, rate_h], [rate_w, rate_w], [0, 0]])

    def direct(rows, cols):  # outputs in rows x cols = [start, end) x [start, end), one GEMM of the 9 taps
        size = [ops.shape(padded)[0], rows[1] - rows[0], cols[1] - cols[0], kernel.shape[2]]
        taps = [ops.slice(padded, [0, rows[0] + i * rate_h, cols[0] + j * rate_w, 0], size)
                for i in range(3) for j in range(3)]
        return ops.matmul(ops.concatenate(taps, axis=-1), ops.reshape(kernel, (-1, kernel.shape[3])))

    static = isinstance(height, int) and isinstance(width, int)
    if static and (region_h == 0 or region_w == 0):
        return direct((0, height), (0, width))
    outputs = _winograd_region(padded, kernel, rates, tiles)
    if not static or region_w < width:
        outputs = ops.concatenate([outputs, direct((0, region_h), (region_w, width))], axis=2)
    if not static or region_h < height:
        outputs = ops.concatenate([outputs, direct((region_h, height), (0, width))], axis=1)
    return outputs
