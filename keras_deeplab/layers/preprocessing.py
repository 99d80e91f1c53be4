"""Input normalization inside the model, and bilinear resizing to a size known only at run time."""
import keras
from keras import ops

from keras_deeplab.layers.registration import PACKAGE

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
