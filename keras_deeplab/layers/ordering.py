"""Op order in TF graphs: results that TF's executor would compute as soon as it could, long before they are used,
and keep alive until then, computed when they are needed instead (benchmarks/memory.md)."""
import keras


def after(dependency, tensor):
    """`tensor` itself (not a copy), made available to the ops that take it only once `dependency` (a tensor, or
    None for no order) is computed, in a TF graph (elsewhere, and in eager execution, that order is the program's
    anyway)."""
    if dependency is not None and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.control_dependencies([dependency]):  # a no-op in eager execution
            return tf.identity(tensor)
    return tensor
