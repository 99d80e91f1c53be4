"""keras_deeplab: DeepLabv3 semantic segmentation for Keras 3 / TensorFlow."""
__version__ = "0.1.0"

from keras_deeplab.layers import ASPP, AtrousConv2D, ImagePreprocessing, ResizeLike  # noqa: E402
from keras_deeplab.model import DeepLabV3  # noqa: E402

__all__ = ["ASPP", "AtrousConv2D", "DeepLabV3", "ImagePreprocessing", "ResizeLike", "__version__"]
