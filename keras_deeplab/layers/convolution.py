"""Convolutions: Conv2D (Keras') and AtrousConv2D with the implementation chosen per call
by `choose_implementation`."""
import keras
from keras import ops

from keras_deeplab.layers.ordering import after
from keras_deeplab.layers.registration import PACKAGE
from keras_deeplab.layers.shifted import shifted_conv
from keras_deeplab.layers.winograd import WINOGRAD_OUTPUTS, winograd_conv

IMPLEMENTATIONS = ("auto", "shifted", "native", "winograd")
# The thresholds of "auto" (see choose_implementation), read when a layer is traced: WINOGRAD_MAX_RATE = 0 keeps
# it on the direct forms.
NATIVE_MAX_RATE = 2
WINOGRAD_MAX_RATE = 4
WINOGRAD_MIN_CHANNELS = 256


def choose_implementation(requested, kernel_size, rates, in_channels, out_channels, dtype, spatial_size):
    """The implementation ("native", "shifted" or "winograd") that computes an AtrousConv2D call.

    `requested` other than "auto" is taken as it is. "auto" takes Winograd for 3x3 kernels at rates up to
    WINOGRAD_MAX_RATE with at least WINOGRAD_MIN_CHANNELS input and output channels in float32, on maps of at
    least one tile (`spatial_size`: (height, width), None where unknown), where it measured faster forward and
    backward (narrower layers spend about as much on its transforms as they save; half precision would lose too
    much to them); otherwise native (TF's dilated kernel: SpaceToBatchND, then a dense conv, which wastes
    nothing there and is at least as fast forward and backward) up to rate NATIVE_MAX_RATE, and shifted above it
    (much faster there, and TF's gradient slows with the rate).
    """
    if requested != "auto":
        return requested
    if (tuple(kernel_size) == (3, 3) and max(rates) <= WINOGRAD_MAX_RATE
            and min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS and dtype == "float32"
            and all(size is None or size >= WINOGRAD_OUTPUTS * rate for size, rate in zip(spatial_size, rates))):
        return "winograd"
    return "native" if max(rates) <= NATIVE_MAX_RATE else "shifted"


def weight_when_needed(weight, inputs):
    """`weight` (a variable) read once `inputs` is computed. Ops on weights only (Winograd's kernel transform, the
    shifted form's tap groups) are otherwise ready when a graph starts and run first, and their results then all
    stay alive until their layers run (Winograd's is 4x the kernel)."""
    return after(inputs, ops.convert_to_tensor(weight))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` under the package's registered name, which the backbones' layers and saved models
    carry. Until 2026-12-05 it computed more than 1536 output channels in parts, concatenated; one kernel now
    measures as fast and needs no concatenation, which held a second copy of ResNet's widest outputs (-280 MiB of
    peak memory at 1025x1025, benchmarks/memory.md)."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class AtrousConv2D(keras.layers.Conv2D):
    """A stride-1, 'same'-padded convolution with atrous (dilation) rate, computed the fastest way measured.

    `implementation`: "shifted" (GEMMs of the rows and columns inside the map, shifted into place; `shifted.py`),
    "native" (`Conv2D`'s own kernel), "winograd" (3x3 kernels only: F(4x4, 3x3) Winograd; `winograd.py`), or
    "auto": per call, as `choose_implementation` decides. All compute the same convolution, and the kernel is
    the same variable as `Conv2D`'s, so weights are interchangeable.
    """

    def __init__(self, filters, kernel_size=3, dilation_rate=1, implementation="auto", **kwargs):
        kwargs.pop("padding", None)
        kwargs.pop("strides", None)
        super().__init__(filters, kernel_size, padding="same", dilation_rate=dilation_rate, **kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if self.kernel_size[0] % 2 == 0 or self.kernel_size[1] % 2 == 0:
            raise ValueError(f"AtrousConv2D needs odd kernel sizes, got {self.kernel_size}")
        if implementation == "winograd" and self.kernel_size != (3, 3):
            raise ValueError(f"implementation 'winograd' needs a 3x3 kernel, got {self.kernel_size}")
        self.implementation = implementation

    def call(self, inputs):
        implementation = choose_implementation(self.implementation, self.kernel_size, self.dilation_rate,
                                               inputs.shape[-1], self.filters, self.compute_dtype, inputs.shape[1:3])
        if implementation == "native":
            return super().call(inputs)
        convolution = winograd_conv if implementation == "winograd" else shifted_conv
        outputs = convolution(inputs, weight_when_needed(self.kernel, inputs), self.dilation_rate)
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
