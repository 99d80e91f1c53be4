"""keras_deeplab: DeepLabv3 semantic segmentation for Keras 3 / TensorFlow."""
__version__ = "0.1.0"

from keras_deeplab.allocator import use_pooled_cpu_allocator
from keras_deeplab.tf_logs import quiet_in_the_command

# Before anything creates a TF tensor: TF picks its CPU allocator at the first one.
use_pooled_cpu_allocator()

# The `deeplab` command hides TensorFlow's log lines, including those TF prints while it loads, unless the user sets
# TF_CPP_MIN_LOG_LEVEL; in any other program this import leaves TensorFlow's logging alone (tf_logs.py).
with quiet_in_the_command():
    import tensorflow  # noqa: E402, F401

# Eager on purpose (not a lazy PEP 562 __getattr__): importing these modules registers the custom classes,
# and keras.models.load_model finds custom classes only in that registry (it imports a config's `module`
# only for Keras' own packages), so `import keras_deeplab` must be enough to load a saved .keras file.
# tests/test_model.py::test_saved_model_loads_in_a_fresh_process_after_import_keras_deeplab checks it.

from keras_deeplab.layers import ASPP, AtrousConv2D, ImagePreprocessing, ResizeLike  # noqa: E402
from keras_deeplab.model import DeepLabV3  # noqa: E402

__all__ = ["ASPP", "AtrousConv2D", "DeepLabV3", "ImagePreprocessing", "ResizeLike", "__version__"]
