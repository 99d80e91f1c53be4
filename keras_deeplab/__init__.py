"""keras_deeplab: DeepLabv3 semantic segmentation for Keras 3 / TensorFlow."""
__version__ = "0.1.0"

from keras_deeplab.allocator import use_pooled_cpu_allocator

# Before anything creates a TF tensor: TF picks its CPU allocator at the first one.
use_pooled_cpu_allocator()

# Eager on purpose (not a lazy PEP 562 __getattr__): importing these modules registers the custom classes,
# and keras.models.load_model finds custom classes only in that registry (it imports a config's `module`
# only for Keras' own packages), so `import keras_deeplab` must be enough to load a saved .keras file.
# tests/test_model.py::test_saved_model_loads_in_a_fresh_process_after_import_keras_deeplab checks it.

from keras_deeplab.layers import ASPP, AtrousConv2D, ImagePreprocessing, ResizeLike  # noqa: E402
from keras_deeplab.model import DeepLabV3  # noqa: E402

__all__ = ["ASPP", "AtrousConv2D", "DeepLabV3", "ImagePreprocessing", "ResizeLike", "__version__"]
