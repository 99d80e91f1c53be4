"""Layers of DeepLabv3: input preprocessing, dynamic-size bilinear resize, BatchNorm, convolutions (plain and
atrous), ASPP.

All layers use `keras.ops` (so they also run on JAX) and serialize completely through `get_config`.
"""
import keras
from keras import ops

PACKAGE = "keras_deeplab"

# Per-channel statistics of the ImageNet-trained backbones, applied to RGB images in [0, 255].
PREPROCESSING_MODES = {
    # keras.applications ResNet ("caffe"): RGB -> BGR, subtract the BGR mean, no scaling.
    "caffe": {"mean": (123.68, 116.779, 103.939), "std": (1.0, 1.0, 1.0), "reverse_channels": True},
    # torchvision: scale to [0, 1], then (x - mean) / std.
    "torch": {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375), "reverse_channels": False},
    # keras.applications MobileNetV2 ("tf"): scale to [-1, 1].
    "tf": {"mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5), "reverse_channels": False},
}


def resize_bilinear(images, size):
    """Bilinear resize (no antialiasing, half-pixel centres) to `size` = (height, width), which may be dynamic.

    Keras' own resize rejects tensor-valued sizes when spatial dims are unknown at trace time on the TF backend
    (see platform notes), so the TF backend calls `tf.image.resize` directly. Equals PyTorch's
    `F.interpolate(mode="bilinear", align_corners=False)`.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        out = tf.image.resize(images, size, method="bilinear", antialias=False)
        return ops.cast(out, images.dtype)
    return ops.image.resize(images, size, interpolation="bilinear", antialias=False)


def spatial_size(x):
    """The (height, width) of an NHWC tensor, as dynamic values where the static ones are unknown."""
    shape = ops.shape(x)
    return shape[1], shape[2]


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImagePreprocessing(keras.layers.Layer):
    """Normalizes RGB images in [0, 255] the way a backbone's pretrained weights expect (`mode` in
    PREPROCESSING_MODES). Keeping this inside the model lets serving send raw pixels."""

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"Unknown preprocessing mode {mode!r}; expected one of {sorted(PREPROCESSING_MODES)}")
        self.mode = mode
        spec = PREPROCESSING_MODES[mode]
        self._mean = spec["mean"]
        self._std = spec["std"]
        self._reverse = spec["reverse_channels"]

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        x = (x - ops.convert_to_tensor(self._mean, self.compute_dtype)) / ops.convert_to_tensor(
            self._std, self.compute_dtype
        )
        if self._reverse:
            x = ops.flip(x, axis=-1)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeLike(keras.layers.Layer):
    """Bilinearly resizes `inputs[0]` to the spatial size of `inputs[1]` (any size, known only at run time)."""

    def call(self, inputs):
        images, reference = inputs
        return resize_bilinear(ops.cast(images, self.compute_dtype), spatial_size(reference))

    def compute_output_shape(self, input_shapes):
        images, reference = input_shapes
        return (images[0], reference[1], reference[2], images[3])


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs TF's fused kernels on the TF backend.

    Keras computes batch moments and the normalization with about ten ops each way; TF's `FusedBatchNormV3`
    and its gradient do it in one (measured in `benchmarks/`). Same variables, config and moving-statistics
    update as Keras (biased batch variance); every case the fused kernel does not cover (inference, other
    backends, synchronized BN, renorm, masks, no scale or center, not channels-last 4D float32) is Keras' own.
    """

    def _fusable(self, inputs, training, mask):
        return (bool(training) and self.trainable and mask is None and keras.backend.backend() == "tensorflow"
                and len(inputs.shape) == 4 and self.axis in (3, -1) and not self.synchronized
                and not self.renorm and self.scale and self.center
                and keras.backend.result_type(inputs.dtype, "float32") == "float32")

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, "float32")
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32"), epsilon=self.epsilon,
            data_format="NHWC", is_training=True)
        # The fused kernel returns the batch variance with Bessel's correction (undefined for one value per
        # channel, as in ASPP's image pooling at batch 1); Keras tracks the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
        variance = tf.where(count > 1.0, variance * (count - 1.0) / count, tf.zeros_like(variance))
        momentum = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, "float32") * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, "float32") * momentum + variance * (1.0 - momentum))
        return ops.cast(outputs, self.compute_dtype)


def _add_bias(x, bias):
    """`x + bias` along the last axis; `tf.nn.bias_add` on the TF backend."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.nn.bias_add(x, bias)
    return x + bias


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that computes more than MAX_OUTPUT_CHANNELS output channels in parts of at most that
    many, concatenated: the same kernel variable and the same result (each output channel is its own dot product).

    On the CPU measured in `benchmarks/`, TF's oneDNN kernel for 2048 output channels (ResNet's last-stage 1x1
    convolutions) runs at about 110 GFLOP/s forward, two halves of 1024 at about 145 including the concat; the
    backward is no slower. `MAX_OUTPUT_CHANNELS = None` turns the split off.
    """

    MAX_OUTPUT_CHANNELS = 1536

    def call(self, inputs):
        limit = self.MAX_OUTPUT_CHANNELS
        if limit is None or self.filters <= limit or self.groups != 1 or self.data_format != "channels_last":
            return super().call(inputs)
        parts = -(-self.filters // limit)
        size = -(-self.filters // parts)
        bounds = list(range(size, self.filters, size))
        outputs = [self.convolution_op(inputs, kernel) for kernel in ops.split(self.kernel, bounds, axis=-1)]
        if self.use_bias:
            # per part, before the concat: TF's grappler fuses Conv2D + BiasAdd (not + AddV2) into one kernel
            outputs = [_add_bias(part, bias) for part, bias in zip(outputs, ops.split(self.bias, bounds))]
        outputs = ops.concatenate(outputs, axis=-1)
        return outputs if self.activation is None else self.activation(outputs)


def _tap_offsets(kernel_size, rate, size):
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
    return ops.slice(x, begin, [length if a == axis else shape[a] for a in range(4)])


def _shift_back(x, axis, shift, static_size, size):
    """Pads `x`, the in-map part of a map shifted by `shift` along `axis`, back to full size with zeros; with a
    dynamic size, crops afterwards (the padding overshoots when |shift| >= size)."""
    paddings = [[0, 0]] * 4
    paddings[axis] = [max(0, -shift), max(0, shift)]
    padded = ops.pad(x, paddings)
    if static_size is not None:
        return padded
    return ops.slice(padded, [0] * 4, [size if a == axis else ops.shape(padded)[a] for a in range(4)])


# F(4x4, 3x3) Winograd (Lavin & Gray, 2016): each 4x4 output tile from a 6x6 input tile.
WINOGRAD_OUTPUTS, WINOGRAD_INPUTS = 4, 6
# Interpolation points (and infinity). 1/2 and -2 instead of the usual +-2: the largest float32 error on a
# 512-channel 65x65 map (values up to 5) measured 2.3e-5 instead of 5.6e-5 to 8.0e-5 (the direct convolution's:
# 1.6e-6).
WINOGRAD_POINTS = (0.0, 1.0, -1.0, 0.5, -2.0)


def _winograd_transforms():
    """The 2D transforms of F(4x4, 3x3) as matrices over a tile's row-major positions: output (16 x 36), kernel
    (36 x 9), input (36 x 36). They are kron(M, M) of the 1D (A^T, G, B^T) from the Toom-Cook construction, with
    `y = A^T [(G g) * (B^T d)]` the correlation of 6 inputs `d` with 3 weights `g`."""
    import numpy as np

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
    pixels = ops.reshape(ops.transpose(padded, (1, 2, 0, 3)), (-1, batch, channels))  # [H' * W', b, c]
    d = ops.take(pixels, ops.reshape(index, (WINOGRAD_INPUTS ** 2, -1)), axis=0)  # [36, tiles' pixels, b, c]
    d = ops.unstack(_transform(WINOGRAD_INPUT, ops.reshape(d, (WINOGRAD_INPUTS ** 2, -1, channels))), axis=0)
    g = ops.unstack(_transform(WINOGRAD_KERNEL, ops.reshape(kernel, (9, channels, filters))), axis=0)
    # 36 GEMMs, not one batched matmul: TF's CPU BatchMatMul runs these shapes at about half the speed
    y = ops.stack([ops.matmul(a, b) for a, b in zip(d, g)])
    m = WINOGRAD_OUTPUTS
    y = ops.reshape(_transform(WINOGRAD_OUTPUT, y), (m, m, tiles_h, rate_h, tiles_w, rate_w, batch, filters))
    y = ops.transpose(y, (6, 2, 0, 3, 4, 1, 5, 7))  # [b, tiles_h, 4, rate_h, tiles_w, 4, rate_w, f]
    return ops.reshape(y, (batch, tiles_h * m * rate_h, tiles_w * m * rate_w, filters))


def _winograd_same_conv(inputs, kernel, rates):
    """A stride-1 'same' 3x3 convolution with dilation `rates`: Winograd on the largest part of the map made of
    whole tiles (4 * rate outputs per side and phase), the direct convolution on the rest (a strip at the bottom and
    at the right, narrower than 4 * rate). Works on dynamic sizes."""
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class AtrousConv2D(keras.layers.Conv2D):
    """A stride-1, 'same'-padded convolution with atrous (dilation) rate, computed as shifted matmuls.

    TF's CPU gradient of dilated convolutions (SpaceToBatchND) is very slow at large rates. Here each kernel row
    is one GEMM of the input rows that land inside the output (no padded copy of the input) with that row's taps
    side by side; the products are shifted into place by their column offsets and summed. Work that would only
    meet zero padding is skipped: rows and columns outside the map, and whole taps whose shift is at least the
    feature size (paper, Figure 4). The result is exact, and the kernel is the same variable as `Conv2D`'s, so
    weights are interchangeable. Measured in `benchmarks/` (README there).

    `implementation`: "shifted" (above), "native" (`Conv2D`'s own kernel), "winograd" (3x3 kernels only:
    F(4x4, 3x3) Winograd, 4x fewer multiplications than the taps, exact up to float rounding 10-20x the direct
    convolution's), or "auto": Winograd for 3x3 kernels at rates up to WINOGRAD_MAX_RATE with at least
    WINOGRAD_MIN_CHANNELS input and output channels in float32, where it measured faster forward and backward
    (narrower layers spend about as much on its transforms as they save); otherwise native up to rate
    NATIVE_MAX_RATE, where TF's dilated kernel (SpaceToBatchND, then a dense conv) wastes nothing and is at least
    as fast forward and backward, and shifted above it (much faster there, and TF's gradient slows with the
    rate). `WINOGRAD_MAX_RATE = 0` keeps "auto" on the direct forms.
    """

    # Give a tap its own GEMM on the columns inside the map when |dx| * filters >= ratio * (width - |dx|):
    # 64 trims ASPP's rates 24/36 but not 12 at 65x65 (and 12/18 but not 6 at 33x33), the fastest forward +
    # backward there (benchmarks/results/layer_timing_trim_*).
    COLUMN_TRIM_RATIO = 64
    NATIVE_MAX_RATE = 2
    WINOGRAD_MAX_RATE = 4
    WINOGRAD_MIN_CHANNELS = 256
    IMPLEMENTATIONS = ("auto", "shifted", "native", "winograd")

    def __init__(self, filters, kernel_size=3, dilation_rate=1, implementation="auto", **kwargs):
        kwargs.pop("padding", None)
        kwargs.pop("strides", None)
        super().__init__(filters, kernel_size, padding="same", dilation_rate=dilation_rate, **kwargs)
        if implementation not in self.IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {self.IMPLEMENTATIONS}, got {implementation!r}")
        if self.kernel_size[0] % 2 == 0 or self.kernel_size[1] % 2 == 0:
            raise ValueError(f"AtrousConv2D needs odd kernel sizes, got {self.kernel_size}")
        if implementation == "winograd" and self.kernel_size != (3, 3):
            raise ValueError(f"implementation 'winograd' needs a 3x3 kernel, got {self.kernel_size}")
        self.implementation = implementation

    def _choose(self, inputs):
        """The implementation that computes this call."""
        if self.implementation != "auto":
            return self.implementation
        if (self.kernel_size == (3, 3) and max(self.dilation_rate) <= self.WINOGRAD_MAX_RATE
                and min(inputs.shape[-1], self.filters) >= self.WINOGRAD_MIN_CHANNELS
                and self.compute_dtype == "float32"
                and all(size is None or size >= WINOGRAD_OUTPUTS * rate
                        for size, rate in zip(inputs.shape[1:3], self.dilation_rate))):
            return "winograd"
        return "native" if max(self.dilation_rate) <= self.NATIVE_MAX_RATE else "shifted"

    def call(self, inputs):
        implementation = self._choose(inputs)
        if implementation == "native":
            return super().call(inputs)
        kernel = ops.convert_to_tensor(self.kernel)
        if implementation == "winograd":
            outputs = _winograd_same_conv(inputs, kernel, self.dilation_rate)
        else:
            outputs = self._shifted_conv(inputs, kernel)
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _shifted_conv(self, inputs, kernel):
        """The convolution (no bias) as shifted GEMMs, as the class docstring describes."""
        kh, kw = self.kernel_size
        rh, rw = self.dilation_rate
        static_h, static_w = inputs.shape[1], inputs.shape[2]
        height, width = spatial_size(inputs)
        cols = _tap_offsets(kw, rw, static_w)
        # A tap with a large column shift gets its own GEMM on the input columns that land inside the output,
        # where the FLOPs saved outweigh copying those columns; the others share their kernel row's GEMM.
        trimmed = [(j, dx) for j, dx in cols if static_w is not None and dx
                   and abs(dx) * self.filters >= self.COLUMN_TRIM_RATIO * (static_w - abs(dx))]
        grouped = [tap for tap in cols if tap not in trimmed]
        # Unstacked, not indexed: the gradient is one Pack instead of a kernel-sized StridedSliceGrad per tap.
        taps = [ops.unstack(row, axis=0) for row in ops.unstack(kernel, axis=0)]
        outputs = None
        for i, dy in _tap_offsets(kh, rh, static_h):
            # Output row y reads input row y + dy: only the rows that land inside the output are multiplied.
            block = inputs if dy == 0 else _inside(inputs, 1, dy, static_h, height)
            row_sum = None
            if grouped:
                products = ops.matmul(block, ops.concatenate([taps[i][j] for j, _ in grouped], axis=-1))
                # split, not slices: its gradient is one concat rather than one zero-filled tensor per part
                parts = ops.split(products, len(grouped), axis=-1) if len(grouped) > 1 else [products]
                for part, (_, dx) in zip(parts, grouped):
                    if dx:
                        part = _shift_back(_inside(part, 2, dx, static_w, width), 2, dx, static_w, width)
                    row_sum = part if row_sum is None else row_sum + part
            for j, dx in trimmed:
                part = ops.matmul(_inside(block, 2, dx, static_w, width), taps[i][j])
                part = _shift_back(part, 2, dx, static_w, width)
                row_sum = part if row_sum is None else row_sum + part
            if dy:
                row_sum = _shift_back(row_sum, 1, dy, static_h, height)
            outputs = row_sum if outputs is None else outputs + row_sum
        return outputs

    def get_config(self):
        config = super().get_config()
        config.pop("padding", None)
        config.pop("strides", None)
        config["implementation"] = self.implementation
        return config


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
    optional dropout. Works on any (dynamic) feature size.

    Sublayers, in branch order: `branch_convs`/`branch_bns` (1x1, then one per rate, then pooling if any),
    `project_conv`/`project_bn`. `batch_norm=False` is the inference form with BatchNorm folded into biased
    convolutions (`keras_deeplab.fold`): no BN sublayers (`branch_bns` holds None).
    """

    def __init__(self, filters=256, atrous_rates=(6, 12, 18), image_pooling=True, dropout=0.0,
                 bn_momentum=0.9997, bn_epsilon=1e-5, synchronized_bn=False, implementation="auto",
                 batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.atrous_rates = tuple(int(r) for r in atrous_rates)
        self.image_pooling = bool(image_pooling)
        self.dropout = float(dropout)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.synchronized_bn = bool(synchronized_bn)
        self.implementation = implementation
        self.batch_norm = bool(batch_norm)
        bn_kwargs = {"momentum": self.bn_momentum, "epsilon": self.bn_epsilon, "synchronized": self.synchronized_bn}
        bn_kwargs = bn_kwargs if self.batch_norm else None
        args = {"dtype": self.dtype_policy, "bn_kwargs": bn_kwargs, "implementation": implementation}
        specs = [(1, 1, "aspp_1x1")] + [(3, r, f"aspp_rate{r}") for r in self.atrous_rates]
        if self.image_pooling:
            specs.append((1, 1, "aspp_pool"))
        pairs = [_conv_bn(self.filters, k, r, name, **args) for k, r, name in specs]
        self.branch_convs = [conv for conv, _ in pairs]
        self.branch_bns = [bn for _, bn in pairs]
        self.project_conv, self.project_bn = _conv_bn(self.filters, 1, 1, "aspp_project", **args)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy) if self.dropout else None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        branch_shape = input_shape[:-1] + (self.filters,)
        for index, (conv, bn) in enumerate(zip(self.branch_convs, self.branch_bns)):
            pooled = self.image_pooling and index == len(self.branch_convs) - 1
            conv.build((input_shape[0], 1, 1, input_shape[-1]) if pooled else input_shape)
            if bn is not None:
                bn.build((input_shape[0], 1, 1, self.filters) if pooled else branch_shape)
        self.project_conv.build(input_shape[:-1] + (self.filters * len(self.branch_convs),))
        if self.project_bn is not None:
            self.project_bn.build(branch_shape)
        self.built = True

    def call(self, features, training=None):
        def conv_bn_relu(conv, bn, x):
            x = conv(x)
            return ops.relu(x if bn is None else bn(x, training=training))

        outputs = []
        for index, (conv, bn) in enumerate(zip(self.branch_convs, self.branch_bns)):
            if self.image_pooling and index == len(self.branch_convs) - 1:
                pooled = conv_bn_relu(conv, bn, ops.mean(features, axis=(1, 2), keepdims=True))
                # Bilinear upsampling of a 1x1 map is a broadcast; this form works for dynamic sizes everywhere.
                outputs.append(pooled * ops.ones_like(outputs[0][..., :1]))
            else:
                outputs.append(conv_bn_relu(conv, bn, features))
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
