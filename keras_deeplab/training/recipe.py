"""The DeepLabv3 training recipe: loss, metric, poly learning rate, SGD with weight decay, frozen BatchNorm.

Weight decay is the reference TF DeepLab code's L2 penalty `weight_decay / 2 * sum(w**2)` on every convolution
kernel (not on BatchNorm parameters or biases, `slim.l2_regularizer`): its gradient `weight_decay * w` goes
through SGD's momentum like the data gradient. `SGDWithL2` (optimizers.py) adds that gradient where it applies
each kernel's gradient (as torch's `SGD(weight_decay=...)` does) rather than putting the penalty in the loss.
Keras' built-in `weight_decay` is *decoupled* (AdamW-style, `w -= lr * wd * w` outside the momentum), which with
momentum 0.9 decays about ten times less than the paper's setting, so it is not used.
"""
import keras

from keras_deeplab.optimizers import SGDWithL2
from keras_deeplab.viz import IGNORE_LABEL


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


def sgd(*, steps, learning_rate=0.007, lr_power=0.9, end_learning_rate=0.0, momentum=0.9, weight_decay=1e-4):
    """The paper's optimizer: SGD with momentum on the poly schedule over `steps` global steps, with L2 weight
    decay on convolution kernels."""
    return SGDWithL2(poly_schedule(learning_rate, steps, lr_power, end_learning_rate), momentum=momentum,
                     l2=weight_decay)


def freeze_batch_norm(model):
    """Freezes every BatchNormalization layer (inference-mode statistics, no gamma/beta updates), as for
    fine-tuning at output stride 8. Call before `compile`. Returns the number of layers frozen."""
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            count += 1
    return count


def compile_model(model, *, num_classes, ignore_label=IGNORE_LABEL, jit_compile="auto", **optimizer):
    """Compiles `model` with the paper's recipe: `sgd(**optimizer)` (SGD with momentum on a poly schedule over
    `steps` global steps, L2 weight decay on conv kernels), cross-entropy ignoring `ignore_label`, and the MeanIoU
    metric. Call inside the strategy scope."""
    model.compile(optimizer=sgd(**optimizer), loss=segmentation_loss(ignore_label),
                  metrics=[mean_iou_metric(num_classes, ignore_label)], jit_compile=jit_compile)
    build_optimizer(model)
    return model


def build_optimizer(model):
    """Creates the compiled optimizer's variables (momentum) now. Left to the first step, they are created
    inside the traced train function, and TF then traces it a second time and keeps both graphs: about 150 MiB
    more for R50 OS8 (benchmarks/memory.md)."""
    model.optimizer.build(model.trainable_variables)
