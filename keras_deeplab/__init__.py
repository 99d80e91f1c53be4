"""keras_deeplab: DeepLabv3 semantic segmentation for Keras 3 / TensorFlow."""
__version__ = "0.1.0"

from keras_deeplab.allocator import select_cpu_allocator
from keras_deeplab.tf_logs import is_deeplab_command, quiet_in_the_command

__all__ = ["ASPP", "AtrousConv2D", "DeepLabV3", "DeepLabV3Cascade", "DeepLabV3Plus", "ImagePreprocessing", "ResizeLike",
           "__version__"]

# Before anything creates a TF tensor: TF picks its CPU allocator at the first one.
select_cpu_allocator()


def load_classes():
    """Imports TensorFlow and the modules that register the package's Keras classes, binding the names of
    `__all__`: what `import keras_deeplab` does, except in the `deeplab` command, whose cli.py calls this before it
    runs a subcommand (so that `deeplab --help` needs no TensorFlow).

    Eager on purpose (not a lazy PEP 562 __getattr__): keras.models.load_model finds custom classes only in Keras'
    registry (it imports a config's `module` only for Keras' own packages), so `import keras_deeplab` must be
    enough to load a saved .keras file; tests/test_model.py checks it. The `deeplab` command hides TensorFlow's log
    lines, including those TF prints while it loads, unless the user sets TF_CPP_MIN_LOG_LEVEL; in any other
    program TensorFlow's logging is left alone (tf_logs.py)."""
    global ASPP, AtrousConv2D, DeepLabV3, DeepLabV3Cascade, DeepLabV3Plus, ImagePreprocessing, ResizeLike
    with quiet_in_the_command():
        import tensorflow  # noqa: F401
    from keras_deeplab.layers import ASPP, AtrousConv2D, ImagePreprocessing, ResizeLike
    from keras_deeplab.cascade import DeepLabV3Cascade
    from keras_deeplab.model import DeepLabV3
    from keras_deeplab.deeplabv3_plus import DeepLabV3Plus
    import keras_deeplab.fold  # noqa: F401 - registers FoldedBatchNorm, so folded .keras files load too
    import keras_deeplab.optimizers  # noqa: F401 - registers SGDWithL2, so trained .keras files load compiled


if not is_deeplab_command():
    load_classes()
