"""BatchNorm whose training step runs TF's fused kernels."""
import keras
from keras import ops

from keras_deeplab.layers.registration import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs TF's fused kernels on the TF backend.

    Keras computes batch moments and the normalization with about ten ops each way; TF's `FusedBatchNormV3`
    and its gradient do it in one (measured in `benchmarks/`). Same variables, config and moving-statistics
    update as Keras (biased batch variance); every case the fused kernel does not cover (inference, other
    backends, synchronized BN, renorm, masks, no scale or center, not channels-last 4D float32) is Keras' own.
    """

    def _fusable(self, inputs, training, mask):
        return (bool(training) and self.trainable and mask is None and keras.backend.backend() == "tensorflow"
                and len(inputs.shape) == 4 and self.axis in (3, -1) and not self.synchronized
                and not self.renorm and self.scale and self.center
                and keras.backend.result_type(inputs.dtype, "float32") == "float32")

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, "float32")
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32"), epsilon=self.epsilon,
            data_format="NHWC", is_training=True)
        # The fused kernel returns the batch variance with Bessel's correction (undefined for one value per
        # channel, as in ASPP's image pooling at batch 1); Keras tracks the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
        variance = tf.where(count > 1.0, variance * (count - 1.0) / count, tf.zeros_like(variance))
        momentum = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, "float32") * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, "float32") * momentum + variance * (1.0 - momentum))
        return ops.cast(outputs, self.compute_dtype)
