"""The compute precision of an export: float32, or bfloat16 (Keras' `mixed_bfloat16` policy: float32 weights cast
to bfloat16 per call, bfloat16 arithmetic, which oneDNN runs on AVX-512 BF16 / AMX where the CPU has them), and
the label agreement with the float32 model that a bfloat16 export must reach (`benchmarks/precision.md`)."""
import numpy as np

PRECISIONS = ("float32", "bfloat16")
# Percent of the check images' pixels whose bfloat16 label must equal the float32 model's.
DEFAULT_MIN_LABEL_AGREEMENT = 99.5


def check_precision(precision):
    """`precision` if it is one of PRECISIONS, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def with_precision(model, precision):
    """`model` itself for "float32"; for "bfloat16" a copy of the functional `model` whose layers compute under
    `mixed_bfloat16` with `model`'s weights, except the layers that produce its outputs, which it shares with
    `model` in their own policy (a DeepLabV3's logits upsampling stays float32, so labels come from float32
    logits)."""
    import keras

    if check_precision(precision) == "float32":
        return model
    output_layers = {tensor._keras_history.operation.name for tensor in keras.tree.flatten(model.outputs)}

    def clone(layer):
        if layer.name in output_layers:
            return layer  # shared with `model`, as it is
        copy = layer.__class__.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})
        layers.append((copy, layer))
        return copy

    layers = []
    copy = keras.models.clone_model(model, clone_function=clone)
    for new, old in layers:  # built by now
        new.set_weights(old.get_weights())
    return copy


def label_agreement(labels, expected):
    """Percent of the pixels of the label maps `expected` where `labels` (a list of as many) are equal; a map of
    another shape agrees nowhere."""
    pairs = [(np.asarray(a), np.asarray(b)) for a, b in zip(labels, expected)]
    equal = sum(int(np.sum(a == b)) for a, b in pairs if a.shape == b.shape)
    return 100.0 * equal / sum(np.asarray(b).size for b in expected)
