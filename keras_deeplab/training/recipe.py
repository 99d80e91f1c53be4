"""The DeepLabv3 training recipe: loss, metric, poly learning rate, SGD with weight decay, frozen BatchNorm.

Weight decay is an explicit L2 penalty `weight_decay / 2 * sum(w**2)` on every convolution kernel (not on
BatchNorm parameters or biases), added to the loss as in the reference TF DeepLab code
(`slim.l2_regularizer`): its gradient `weight_decay * w` goes through SGD's momentum like the data gradient.
Keras' built-in `weight_decay` is *decoupled* (AdamW-style, `w -= lr * wd * w` outside the momentum), which
with momentum 0.9 decays about ten times less than the paper's setting, so it is not used.
"""
import keras

from keras_deeplab.viz import IGNORE_LABEL
CONV_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)  # AtrousConv2D is a Conv2D


def segmentation_loss(ignore_label=IGNORE_LABEL):
    """Per-pixel softmax cross-entropy on logits, averaged over the pixels not labelled `ignore_label`."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_label)


def mean_iou_metric(num_classes, ignore_label=IGNORE_LABEL, name="mean_iou"):
    """Mean IoU over classes with a non-zero union, from logits (argmax), ignoring `ignore_label` pixels."""
    return keras.metrics.MeanIoU(num_classes, ignore_class=ignore_label, sparse_y_pred=False, name=name)


def poly_schedule(learning_rate, steps, power=0.9, end_learning_rate=0.0):
    """The paper's "poly" schedule `lr0 * (1 - step / steps) ** power` over `steps` global steps."""
    if steps < 1:
        raise ValueError(f"poly schedule needs steps >= 1, got {steps}")
    return keras.optimizers.schedules.PolynomialDecay(learning_rate, decay_steps=int(steps), power=power,
                                                      end_learning_rate=end_learning_rate)


def add_weight_decay(model, weight_decay):
    """Puts an L2 penalty `weight_decay / 2 * sum(w**2)` on the kernel of every convolution of `model` (it
    appears in `model.losses`). Returns the number of kernels decayed."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    regularizer = keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, CONV_LAYERS):
            layer.kernel.regularizer = regularizer
            count += 1
    return count


def freeze_batch_norm(model):
    """Freezes every BatchNormalization layer (inference-mode statistics, no gamma/beta updates), as for
    fine-tuning at output stride 8. Call before `compile`. Returns the number of layers frozen."""
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            count += 1
    return count


def compile_model(model, *, num_classes, steps, learning_rate=0.007, lr_power=0.9, end_learning_rate=0.0,
                  momentum=0.9, weight_decay=1e-4, ignore_label=IGNORE_LABEL, jit_compile="auto"):
    """Compiles `model` with the paper's recipe: SGD(momentum) on a poly schedule over `steps` global steps,
    L2 weight decay on conv kernels, cross-entropy ignoring `ignore_label`, and the MeanIoU metric.
    Call inside the strategy scope."""
    add_weight_decay(model, weight_decay)
    optimizer = keras.optimizers.SGD(poly_schedule(learning_rate, steps, lr_power, end_learning_rate),
                                     momentum=momentum)
    model.compile(optimizer=optimizer, loss=segmentation_loss(ignore_label),
                  metrics=[mean_iou_metric(num_classes, ignore_label)], jit_compile=jit_compile)
    return model
