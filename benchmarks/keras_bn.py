"""The library's BatchNorm before 2026-11-26, to measure the fused one against.

`keras_deeplab.layers.BatchNormalization` runs TF's fused kernels in training; `use_keras_batch_norm()` makes it
run Keras' own ops (moments, normalization and their gradients, about ten ops each way) for the rest of the
process, as `keras.layers.BatchNormalization` does (benchmark workers only).
"""


def use_keras_batch_norm():
    from keras_deeplab.layers import BatchNormalization

    BatchNormalization._fusable = lambda self, inputs, training, mask: False
