"""Op order in TF graphs: results that TF's executor would compute as soon as it could, long before they are used,
and keep alive until then, computed when they are needed instead (benchmarks/memory.md)."""
import keras


def run_after(dependency, function, *args):
    """`function(*args)`; in a TF graph its ops run only once `dependency` (a tensor, or None for no order) is
    computed (elsewhere, and in eager execution, that order is the program's anyway)."""
    if dependency is not None and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.control_dependencies([dependency]):  # a no-op in eager execution
            return function(*args)
    return function(*args)


def after(dependency, tensor):
    """`tensor` itself (not a copy), made available to the ops that take it only once `dependency` (as for
    `run_after`) is computed."""
    if dependency is not None and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return run_after(dependency, tf.identity, tensor)
    return tensor
