"""The optimizer of the training recipe, registered so that a trained, compiled .keras file loads after
`import keras_deeplab`."""
import keras
from keras import ops

from keras_deeplab.layers.ordering import after
from keras_deeplab.layers.registration import PACKAGE

DECAYED_VARIABLES = ("kernel",)  # Keras' name for the kernel of Conv2D and DepthwiseConv2D (and Dense)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SGDWithL2(keras.optimizers.SGD):
    """SGD with momentum that adds `l2 * w` to the gradient of every kernel before the momentum: the gradient of
    an L2 penalty `l2 / 2 * sum(w**2)` in the loss, as torch's `SGD(weight_decay=l2)`.

    Each kernel's `l2 * w` and its momentum's `momentum * m` are computed once the kernel's gradient exists. In a
    TF graph they depend on variables alone, so TF would otherwise compute all of them at the start of the step
    and keep them until the backward reaches each kernel (a model's weights twice over, benchmarks/memory.md);
    with the penalty in the loss, so would its gradient."""

    def __init__(self, learning_rate=0.01, momentum=0.0, l2=0.0, name="SGDWithL2", **kwargs):
        if l2 < 0:
            raise ValueError(f"weight decay (l2) must be >= 0, got {l2}")
        if kwargs.pop("nesterov", False):
            raise ValueError("SGDWithL2 has no Nesterov momentum")
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)
        self.l2 = l2
        self._decayed = set()  # keys of the variables named in DECAYED_VARIABLES, once built

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._decayed = {self._var_key(v) for v in variables if v.name in DECAYED_VARIABLES}

    def decays(self, variable):
        """Whether `variable` (one this optimizer was built for) gets the L2 term."""
        return bool(self.l2) and self._var_key(variable) in self._decayed

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        gradient = ops.cast(gradient, dtype)
        if self.decays(variable):
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2, dtype), after(gradient, variable)))
        step = ops.multiply(gradient, ops.cast(learning_rate, dtype))  # what the variable loses
        if self.momentum:
            m = self.momentums[self._get_variable_index(variable)]
            step = ops.subtract(step, ops.multiply(after(gradient, m), ops.cast(self.momentum, dtype)))
            self.assign(m, ops.negative(step))
        self.assign_sub(variable, step)

    def get_config(self):
        config = super().get_config()
        del config["nesterov"]
        return {**config, "l2": self.l2}
