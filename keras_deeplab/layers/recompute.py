"""GEMMs whose left operands are made from a layer's input (copies of its rows, Winograd's transformed tiles) and
whose gradient makes them again, instead of keeping them from the forward pass until the backward (in a training
step at crop 321 about 250 MiB each for the shifted form's copies and Winograd's tiles; benchmarks/memory.md,
"Training memory")."""
import keras
from keras import ops

from keras_deeplab.layers.ordering import after


def products(operands, x, kernel):
    """`[a @ b for a, b in zip(*operands(x, kernel))]` (each a GEMM over the last axis of `a`), with Keras' ops and
    their gradients, which keep every `a` and `b` for the backward."""
    return [ops.matmul(a, b) for a, b in zip(*operands(x, kernel))]


def recomputed_products(operands, x, kernel):
    """`products(operands, x, kernel)`; on TF its gradient keeps only `x` and `kernel` and calls `operands` again
    (after the incoming gradient: late, and not merged with the forward's by grappler). It computes the GEMMs'
    gradients with the ops of TF's own MatMul gradient: the same numbers to float rounding."""
    if keras.backend.backend() != "tensorflow":
        return products(operands, x, kernel)
    import tensorflow as tf

    @tf.custom_gradient
    def forward(x, kernel):
        def gradient(*dys):
            inputs = [after(dys[0], x), after(dys[0], kernel)]
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                lefts, rights = operands(*inputs)
            d_lefts, d_rights = [], []
            for left, right, dy in zip(lefts, rights, dys):
                rows, dy_rows = tf.reshape(left, (-1, right.shape[0])), tf.reshape(dy, (-1, right.shape[1]))
                d_lefts.append(tf.reshape(tf.matmul(dy_rows, right, transpose_b=True), tf.shape(left)))
                d_rights.append(tf.matmul(rows, dy_rows, transpose_a=True))
            return tape.gradient(lefts + rights, inputs, output_gradients=d_lefts + d_rights)

        return products(operands, x, kernel), gradient

    return forward(tf.convert_to_tensor(x), tf.convert_to_tensor(kernel))
