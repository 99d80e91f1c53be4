"""Layers of DeepLabv3: input preprocessing, dynamic-size bilinear resize, atrous convolution and ASPP.

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
class AtrousConv2D(keras.layers.Conv2D):
    """A stride-1, 'same'-padded convolution with atrous (dilation) rate, computed as a sum of shifted matmuls.

    TF's CPU gradient of dilated convolutions (SpaceToBatchND) is very slow at large rates. Here each of the
    k*k taps is a 1x1 convolution (a matmul) of the zero-padded input shifted by (i*rate, j*rate), summed.
    Taps whose shift is at least the feature size see only padding and are skipped (paper, Figure 4), so
    the result is exact. The kernel is the same variable as `Conv2D`'s, so weights are interchangeable.

    `implementation`: "shifted" (above), "native" (`Conv2D`'s own kernel), or "auto" (shifted when rate > 1).
    """

    def __init__(self, filters, kernel_size=3, dilation_rate=1, implementation="auto", **kwargs):
        kwargs.pop("padding", None)
        kwargs.pop("strides", None)
        super().__init__(filters, kernel_size, padding="same", dilation_rate=dilation_rate, **kwargs)
        if implementation not in ("auto", "shifted", "native"):
            raise ValueError(f"implementation must be 'auto', 'shifted' or 'native', got {implementation!r}")
        if self.kernel_size[0] % 2 == 0 or self.kernel_size[1] % 2 == 0:
            raise ValueError(f"AtrousConv2D needs odd kernel sizes, got {self.kernel_size}")
        self.implementation = implementation

    def _use_shifted(self):
        if self.implementation == "native":
            return False
        return self.implementation == "shifted" or max(self.dilation_rate) > 1

    def call(self, inputs):
        if not self._use_shifted():
            return super().call(inputs)
        kh, kw = self.kernel_size
        rh, rw = self.dilation_rate
        height, width = inputs.shape[1], inputs.shape[2]

        def kept_offsets(k, rate, size):
            offsets = [(i, (i - k // 2) * rate) for i in range(k)]
            # A shift of the map's size or more reads padding only; skip it (needs the static size).
            return [(i, d) for i, d in offsets if size is None or abs(d) < size]

        rows = kept_offsets(kh, rh, height)
        cols = kept_offsets(kw, rw, width)
        pad_h = max(abs(d) for _, d in rows)
        pad_w = max(abs(d) for _, d in cols)
        kernel = self.kernel
        padded = ops.pad(inputs, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]]) if pad_h or pad_w else inputs
        dyn_h, dyn_w = spatial_size(inputs)
        outputs = None
        for i, dy in rows:
            for j, dx in cols:
                if dy == 0 and dx == 0:
                    window = inputs
                else:
                    window = ops.slice(padded, [0, pad_h + dy, pad_w + dx, 0],
                                       [ops.shape(inputs)[0], dyn_h, dyn_w, ops.shape(inputs)[3]])
                term = ops.matmul(window, kernel[i, j])
                outputs = term if outputs is None else outputs + term
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.pop("padding", None)
        config.pop("strides", None)
        config["implementation"] = self.implementation
        return config


def _conv_bn(filters, kernel_size, rate, name, *, dtype, bn_kwargs, implementation):
    conv = AtrousConv2D(filters, kernel_size, dilation_rate=rate, use_bias=False, name=f"{name}_conv",
                        implementation=implementation, dtype=dtype)
    bn = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype, **bn_kwargs)
    return conv, bn


@keras.saving.register_keras_serializable(package=PACKAGE)
class ASPP(keras.layers.Layer):
    """Atrous Spatial Pyramid Pooling (DeepLabv3, Sec. 3.3).

    Parallel branches on the backbone features: a 1x1 conv, one 3x3 atrous conv per rate in `atrous_rates`,
    and (if `image_pooling`) global average pooling -> 1x1 conv -> upsample to the feature size; each conv is
    followed by BatchNorm + ReLU. The branches are concatenated and projected by 1x1 conv + BN + ReLU, then
    optional dropout. Works on any (dynamic) feature size.

    Sublayers, in branch order: `branch_convs`/`branch_bns` (1x1, then one per rate, then pooling if any),
    `project_conv`/`project_bn`.
    """

    def __init__(self, filters=256, atrous_rates=(6, 12, 18), image_pooling=True, dropout=0.0,
                 bn_momentum=0.9997, bn_epsilon=1e-5, synchronized_bn=False, implementation="auto", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.atrous_rates = tuple(int(r) for r in atrous_rates)
        self.image_pooling = bool(image_pooling)
        self.dropout = float(dropout)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.synchronized_bn = bool(synchronized_bn)
        self.implementation = implementation
        bn_kwargs = {"momentum": self.bn_momentum, "epsilon": self.bn_epsilon, "synchronized": self.synchronized_bn}
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
            bn.build((input_shape[0], 1, 1, self.filters) if pooled else branch_shape)
        self.project_conv.build(input_shape[:-1] + (self.filters * len(self.branch_convs),))
        self.project_bn.build(branch_shape)
        self.built = True

    def call(self, features, training=None):
        outputs = []
        for index, (conv, bn) in enumerate(zip(self.branch_convs, self.branch_bns)):
            if self.image_pooling and index == len(self.branch_convs) - 1:
                pooled = ops.mean(features, axis=(1, 2), keepdims=True)
                pooled = ops.relu(bn(conv(pooled), training=training))
                # Bilinear upsampling of a 1x1 map is a broadcast; this form works for dynamic sizes everywhere.
                outputs.append(pooled * ops.ones_like(outputs[0][..., :1]))
            else:
                outputs.append(ops.relu(bn(conv(features), training=training)))
        x = ops.relu(self.project_bn(self.project_conv(ops.concatenate(outputs, axis=-1)), training=training))
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
        }
