"""Prototype of a library lever: BatchNorm in training through TF's fused kernel (FusedBatchNormV3).

Keras 3's BatchNormalization on the TF backend computes batch moments and the normalisation with separate
ops (Mean, SquaredDifference, Mul, Add, ...), and its gradient with as many more (BroadcastTo, Sum, ...);
TF's fused kernel does the forward in one op and the backward in one (FusedBatchNormGradV3). This subclass
takes the fused path for NHWC float32 inputs in training and updates the moving statistics as Keras does
(biased batch variance, `moving = moving * momentum + batch * (1 - momentum)`); everything else is Keras'.
`patched()` makes the library build its models with it (benchmark workers only).
"""
import contextlib

import keras


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose training-mode forward and backward are TF's fused kernels."""

    def call(self, inputs, training=None, mask=None):
        import tensorflow as tf

        fused = (training and self.trainable and len(inputs.shape) == 4 and self.axis in (3, -1)
                 and inputs.dtype == tf.float32 and not self.synchronized and mask is None
                 and self.gamma is not None and self.beta is not None)
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        outputs, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        # The fused op returns the unbiased (n / (n - 1)) variance; Keras tracks the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        biased_variance = batch_variance * (count - 1.0) / count
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + batch_mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + biased_variance * (1.0 - momentum))
        return outputs


@contextlib.contextmanager
def patched(enabled=True):
    """Builds models with FusedBatchNormalization in place of keras.layers.BatchNormalization."""
    if not enabled:
        yield
        return
    saved = keras.layers.BatchNormalization
    keras.layers.BatchNormalization = FusedBatchNormalization
    try:
        yield
    finally:
        keras.layers.BatchNormalization = saved
