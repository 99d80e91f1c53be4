"""Layer tests: the checks every custom layer passes (`run_layer_test`), and the computations against independent
references: Keras' own dilated Conv2D, keras.applications preprocessing, tf.image.resize and a NumPy ASPP."""
import functools
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers.graphs import downstream
from helpers.layer_test import run_layer_test
from keras_deeplab.layers import ASPP, AtrousConv2D, BatchNormalization, Conv2D, ImagePreprocessing, ResizeLike
from keras_deeplab.layers.convolution import (IMPLEMENTATIONS, NATIVE_MAX_RATE, WINOGRAD_MAX_RATE,
                                              WINOGRAD_MIN_CHANNELS, choose_implementation)
from keras_deeplab.layers.shifted import shifted_conv
from keras_deeplab.layers.winograd import winograd_conv

RNG = np.random.default_rng(0)


def random_images(shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, shape).astype("float32")


def atrous_and_reference(rate, in_channels=5, filters=4, kernel_size=3, implementation="shifted"):
    """An AtrousConv2D and a Keras Conv2D(dilation_rate, padding='same') holding the same kernel and bias."""
    atrous = AtrousConv2D(filters, kernel_size, dilation_rate=rate, implementation=implementation)
    reference = keras.layers.Conv2D(filters, kernel_size, dilation_rate=rate, padding="same")
    atrous.build((None, None, None, in_channels))
    reference.build((None, None, None, in_channels))
    kernel = RNG.normal(size=atrous.kernel.shape).astype("float32")
    bias = RNG.normal(size=(filters,)).astype("float32")
    atrous.set_weights([kernel, bias])
    reference.set_weights([kernel, bias])
    return atrous, reference


# Sizes are odd and non-square; rates 18 and 40 exceed some of them, so whole taps fall off the map.
ATROUS_CASES = [(rate, size) for rate in (1, 2, 6, 18, 40) for size in ((13, 17), (9, 21), (33, 7))]


@pytest.mark.parametrize("rate,size", ATROUS_CASES)
def test_atrous_conv_equals_keras_dilated_conv(rate, size):
    atrous, reference = atrous_and_reference(rate)
    x = random_images((2, *size, 5))
    np.testing.assert_allclose(atrous(x), reference(x), atol=1e-5, rtol=1e-5)


def test_atrous_conv_rectangular_rate_and_kernel():
    atrous, reference = atrous_and_reference((2, 7), kernel_size=(3, 5))
    x = random_images((1, 11, 15, 5))
    np.testing.assert_allclose(atrous(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["auto", "native"])
def test_atrous_conv_other_implementations_equal_keras(implementation):
    atrous, reference = atrous_and_reference(3, implementation=implementation)
    x = random_images((1, 10, 12, 5))
    np.testing.assert_allclose(atrous(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rate", [2, 18, 40])
def test_atrous_conv_with_unknown_spatial_dims(rate):
    """Inside a tf.function traced for [None, None, None, C] no tap can be skipped statically."""
    atrous, reference = atrous_and_reference(rate)
    run = tf.function(atrous, input_signature=[tf.TensorSpec([None, None, None, 5], tf.float32)])
    for size in ((13, 17), (33, 7)):
        x = random_images((2, *size, 5))
        np.testing.assert_allclose(run(x), reference(x), atol=1e-5, rtol=1e-5)


def assert_same_outputs_and_gradients(conv, x_shape, kernel_shape, rates, **tolerance):
    """`conv(x, kernel, rates)` computes Keras' dilated convolution, and the same gradients of a weighted sum of
    its outputs for x and the kernel."""
    x = tf.constant(random_images(x_shape))
    kernel = tf.constant(RNG.normal(size=kernel_shape).astype("float32"))
    upstream = tf.constant(RNG.normal(size=x_shape[:3] + kernel_shape[3:]).astype("float32"))

    def outputs_and_gradients(function):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = function(x, kernel)
            loss = tf.reduce_sum(y * upstream)
        return [y, *tape.gradient(loss, [x, kernel])]

    got = outputs_and_gradients(lambda x, kernel: conv(x, kernel, rates))
    want = outputs_and_gradients(lambda x, kernel: keras.ops.conv(x, kernel, padding="same", dilation_rate=rates))
    for got_part, want_part in zip(got, want):
        np.testing.assert_allclose(got_part, want_part, **tolerance)


@pytest.mark.parametrize("rate,size", [(1, (13, 17)), (6, (13, 17)), (18, (13, 17)), (40, (9, 21))])
def test_shifted_conv_gradients_equal_keras(rate, size):
    assert_same_outputs_and_gradients(shifted_conv, (2, *size, 5), (3, 3, 5, 4), (rate, rate), atol=1e-4, rtol=1e-5)


def test_shifted_conv_column_trimmed_taps_equal_keras():
    """Taps with large column shifts take their own GEMM on the columns inside the map (the rule depends on
    the filter count; ratio 0 sends every column-shifted tap down that path, the centre column stays grouped)."""
    assert_same_outputs_and_gradients(functools.partial(shifted_conv, column_trim_ratio=0), (2, 11, 13, 5),
                                      (3, 3, 5, 4), (4, 4), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("run", [lambda f: f, tf.function], ids=["eager", "graph"])
@pytest.mark.parametrize("trim_ratio", [0, 64])
def test_shifted_conv_of_one_image_equals_keras(run, trim_ratio):
    """Batch 1 slices the input rows as the leading axis of a [rows, row] view: the same outputs and gradients,
    with and without the column-trimmed taps."""
    conv = functools.partial(shifted_conv, column_trim_ratio=trim_ratio)
    assert_same_outputs_and_gradients(run(conv), (1, 11, 13, 5), (3, 3, 5, 4), (4, 4), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("spec", [[None, 11, 13, 5], [None, None, None, 5]], ids=["batch", "batch_and_size"])
def test_shifted_conv_with_an_unknown_batch_equals_keras_for_one_image_and_several(spec):
    """Traced for an unknown batch size (Keras' fit, an exported signature), the row slices choose at run time:
    the [rows, row] view for one image, copies for several. Both give Keras' outputs and gradients."""
    def conv(x, kernel, rates):
        return tf.function(lambda x, kernel: shifted_conv(x, kernel, rates, column_trim_ratio=0),
                           input_signature=[tf.TensorSpec(spec), tf.TensorSpec(kernel.shape)])(x, kernel)

    graph = tf.function(lambda x: shifted_conv(x, tf.zeros([3, 3, 5, 4]), (4, 4))).get_concrete_function(
        tf.TensorSpec(spec)).graph
    assert any(op.type in ("If", "StatelessIf") for op in graph.get_operations())
    for batch in (1, 2):
        assert_same_outputs_and_gradients(conv, (batch, 11, 13, 5), (3, 3, 5, 4), (4, 4), atol=1e-4, rtol=1e-5)


def graph_of(layer, shape):
    """The graph of `layer` traced for inputs of `shape`."""
    layer.build((None, None, None, shape[-1]))
    return tf.function(layer).get_concrete_function(tf.TensorSpec(shape)).graph


def ops_on_weights_alone(graph):
    """Types of the ops of a traced layer computed from its weights and nothing of its input (besides the reads):
    TF's executor runs these first, and their results then wait for the layer."""
    from_input = downstream(graph, {graph.inputs[0].op.name})
    reads = {op.name for op in graph.get_operations() if op.type == "ReadVariableOp"}
    return {graph.get_operation_by_name(name).type for name in downstream(graph, reads) - from_input - reads}


@pytest.mark.parametrize("layer", [
    AtrousConv2D(WINOGRAD_MIN_CHANNELS, 3, dilation_rate=2, implementation="winograd"),
    AtrousConv2D(8, 3, dilation_rate=6, implementation="shifted"),
], ids=["winograd", "shifted"])
def test_kernel_work_waits_for_the_input(layer):
    """Winograd's kernel transform and the shifted form's tap groups run after the input
    exists, not all at the start of a graph (where they would stay alive until their layers run)."""
    graph = graph_of(layer, [1, 17, 17, 8])
    assert ops_on_weights_alone(graph) == set()


def test_shifted_conv_copies_input_columns_one_after_another():
    """Each copy of input columns for a column-trimmed tap is made after the previous tap's GEMM: in a graph, no
    two of them are ready at once."""
    x = tf.TensorSpec([2, 11, 13, 5])
    kernel = tf.constant(RNG.normal(size=(3, 3, 5, 4)).astype("float32"))
    graph = tf.function(lambda x: shifted_conv(x, kernel, (4, 4), column_trim_ratio=0)).get_concrete_function(
        x).graph
    copies = [op for op in graph.get_operations() if op.type == "Slice" and op.inputs[0].shape[2] == 13
              and op.outputs[0].shape[2] < 13]
    assert len(copies) == 6  # 3 kernel rows x 2 trimmed taps
    for previous, copy in zip(copies, copies[1:]):
        assert copy.name in downstream(graph, {previous.name})


def test_shifted_conv_runs_a_gemm_after_the_previous_products_are_summed():
    """Each kernel row's GEMM starts once every part of the previous row's products has been shifted and added
    (not merely computed): a layer holds one GEMM's products at a time."""
    x = tf.TensorSpec([1, 11, 13, 5])
    kernel = tf.constant(RNG.normal(size=(3, 3, 5, 4)).astype("float32"))
    graph = tf.function(lambda x: shifted_conv(x, kernel, (4, 4), column_trim_ratio=10 ** 9)).get_concrete_function(
        x).graph
    gemms = [op for op in graph.get_operations() if op.type == "MatMul"]
    assert len(gemms) == 3  # one per kernel row, its three taps side by side
    for previous, gemm in zip(gemms, gemms[1:]):
        from_previous_only = downstream(graph, {previous.name}) - downstream(graph, {gemm.name})
        uses_of_products = [op for op in graph.get_operations()
                            if op.name in from_previous_only and op.type in ("Slice", "Pad", "AddV2")]
        assert uses_of_products
        for use in uses_of_products:
            assert gemm.name in downstream(graph, {use.name}), use.name


@pytest.mark.parametrize("requested,kernel_size,rate,channels,dtype,size,expected", [
    ("auto", 3, 1, (4, 4), "float32", 9, "native"),
    ("auto", 3, NATIVE_MAX_RATE, (4, 4), "float32", 9, "native"),
    ("auto", 3, NATIVE_MAX_RATE + 1, (4, 4), "float32", 9, "shifted"),
    ("auto", 3, 12, (4, 4), "float32", 65, "shifted"),
    ("auto", 3, 2, (WINOGRAD_MIN_CHANNELS,) * 2, "float32", 9, "winograd"),  # a wide 3x3 layer
    ("auto", 3, WINOGRAD_MAX_RATE, (WINOGRAD_MIN_CHANNELS,) * 2, "float32", 16, "winograd"),  # one tile
    ("auto", 3, 2, (WINOGRAD_MIN_CHANNELS - 1, 512), "float32", 9, "native"),  # narrower inputs
    ("auto", 3, 2, (512, WINOGRAD_MIN_CHANNELS - 1), "float32", 9, "native"),  # narrower outputs
    ("auto", 3, WINOGRAD_MAX_RATE + 1, (256, 256), "float32", 25, "shifted"),  # rate above (ASPP's)
    ("auto", 3, 2, (256, 256), "float32", 7, "native"),  # map smaller than one tile
    ("auto", 3, 2, (256, 256), "float32", None, "winograd"),  # unknown size (the exported serving graph)
    ("auto", 3, 2, (256, 256), "float16", 9, "native"),  # half precision would lose too much to the transforms
    ("auto", 5, 2, (256, 256), "float32", 9, "native"),
    ("shifted", 3, 1, (4, 4), "float32", 9, "shifted"),
    ("native", 3, 12, (4, 4), "float32", 9, "native"),
    ("winograd", 3, 12, (4, 4), "float32", 3, "winograd"),
])
def test_choose_implementation(requested, kernel_size, rate, channels, dtype, size, expected):
    assert choose_implementation(requested, (kernel_size,) * 2, (rate, rate), *channels, dtype,
                                 (size, size)) == expected


@pytest.mark.parametrize("channels,rate", [(4, 2), (4, 6), (WINOGRAD_MIN_CHANNELS, 2)])  # native, shifted, winograd
def test_atrous_conv_runs_the_chosen_implementation(channels, rate):
    """In the traced graph: TF's Conv2D op for "native", the gather of Winograd's tiles, or neither (shifted)."""
    layer = AtrousConv2D(channels, 3, dilation_rate=rate)
    layer.build((None, None, None, channels))
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec([1, 9, 9, channels])).graph
    ops_used = {op.type for op in graph.get_operations()}
    chosen = choose_implementation("auto", layer.kernel_size, layer.dilation_rate, channels, channels,
                                   layer.compute_dtype, (9, 9))
    expected = {"native": (True, False), "shifted": (False, False), "winograd": (False, True)}[chosen]
    assert ("Conv2D" in ops_used, "GatherV2" in ops_used) == expected


def test_atrous_conv_rejects_even_kernel_and_unknown_implementation():
    with pytest.raises(ValueError, match="odd kernel"):
        AtrousConv2D(4, 2, dilation_rate=2)
    with pytest.raises(ValueError, match="implementation"):
        AtrousConv2D(4, 3, implementation="fast")


# Sizes with and without leftover strips (4 * rate does not divide them), and too small for one tile.
WINOGRAD_CASES = [(1, (16, 16)), (1, (13, 18)), (2, (17, 21)), (4, (33, 16)), ((2, 3), (19, 25)), (2, (5, 7))]


@pytest.mark.parametrize("rate,size", WINOGRAD_CASES)
def test_winograd_conv_equals_keras_dilated_conv(rate, size):
    rates = rate if isinstance(rate, tuple) else (rate, rate)
    x = random_images((2, *size, 6))
    kernel = RNG.normal(size=(3, 3, 6, 7)).astype("float32")
    want = np.asarray(keras.ops.conv(x, kernel, padding="same", dilation_rate=rates))
    scale = np.abs(want).max()
    np.testing.assert_allclose(winograd_conv(x, kernel, rates), want, atol=1e-5 * scale)
    run = tf.function(lambda x: winograd_conv(x, kernel, rates),
                      input_signature=[tf.TensorSpec([None, None, None, 6], tf.float32)])
    np.testing.assert_allclose(run(x), want, atol=1e-5 * scale)


def test_winograd_conv_float32_error_against_float64():
    """Winograd trades multiplications for rounding: on 256 channels its largest error against a float64
    reference stays within 25x the direct float32 convolution's (measured 16-20x; the usual points +-2 in place
    of WINOGRAD_POINTS' 1/2 and -2 give 41-49x)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 33, 33, 256))
    kernel = rng.normal(size=(3, 3, 256, 256)) / np.sqrt(9 * 256)
    exact = numpy_conv_same(x, kernel, 2)
    x, kernel = x.astype("float32"), kernel.astype("float32")
    direct_error = np.abs(np.asarray(tf.nn.conv2d(x, kernel, 1, "SAME", dilations=2)) - exact).max()
    winograd_error = np.abs(np.asarray(winograd_conv(x, kernel, (2, 2))) - exact).max()
    assert winograd_error < 25 * direct_error, (winograd_error, direct_error)


def test_winograd_conv_gradients_equal_keras():
    assert_same_outputs_and_gradients(winograd_conv, (2, 17, 19, 5), (3, 3, 5, 4), (2, 2), atol=5e-4, rtol=1e-4)


def _gradients_and_kept(convolution, x, kernel, dy):
    """(gradients of `convolution(x, kernel)` for the output gradient `dy`, the op types of the forward ops whose
    results the backward reads, through reshapes and identities) in one traced graph."""
    forward_ops = {}

    @tf.function
    def gradients(x, kernel, dy):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = convolution(x, kernel)
        forward_ops["count"] = len(tf.compat.v1.get_default_graph().get_operations())
        return tape.gradient(y, [x, kernel], output_gradients=dy)

    graph = gradients.get_concrete_function(x, kernel, dy).graph
    operations = graph.get_operations()
    forward = set(operations[:forward_ops["count"]])
    kept = set()
    for tensor in (t for op in operations[forward_ops["count"]:] for t in op.inputs if t.op in forward):
        while tensor.op.type in ("Reshape", "Identity") and tensor.op.inputs:  # views: their source is what is kept
            tensor = tensor.op.inputs[0]
        kept.add(tensor.op.type)
    return [np.asarray(g) for g in gradients(x, kernel, dy)], kept


@pytest.mark.parametrize("form,convolution,x_shape,kept_op", [
    ("winograd", functools.partial(winograd_conv, rates=(2, 2)), (2, 17, 19, 6), "Unpack"),
    ("shifted", functools.partial(shifted_conv, rates=(3, 3), column_trim_ratio=1), (2, 9, 11, 6), "Slice"),
], ids=["winograd", "shifted"])
def test_gradient_makes_the_gemm_operands_again(monkeypatch, form, convolution, x_shape, kept_op):
    """The backward keeps none of the GEMMs' operands made from the input (Winograd's transformed tiles and
    kernels, the forward's Unpack results; the shifted form's copies of input rows and columns, its Slice results,
    trimmed taps included): it makes them again from the input, and its gradients are TF's own (the GEMMs'
    gradients kept from the forward)."""
    from keras_deeplab.layers import recompute, shifted, winograd

    x, kernel = random_images(x_shape), random_images((3, 3, 6, 5))
    dy = random_images(x_shape[:3] + (5,))
    got, kept = _gradients_and_kept(convolution, x, kernel, dy)
    assert kept_op not in kept, kept
    monkeypatch.setattr({"winograd": winograd, "shifted": shifted}[form], "recomputed_products", recompute.products)
    want, kept_by_tf = _gradients_and_kept(convolution, x, kernel, dy)
    assert kept_op in kept_by_tf, kept_by_tf
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


WINOGRAD_JAX_SCRIPT = textwrap.dedent("""
    import sys
    import jax  # the test must fail, not skip, without JAX
    import keras
    import numpy as np
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from keras_deeplab.layers import AtrousConv2D

    folder = sys.argv[1]
    arrays = np.load(folder + "/arrays.npz")
    layer = AtrousConv2D(4, 3, dilation_rate=2, use_bias=False, implementation="winograd")
    layer.build(arrays["x"].shape)
    layer.set_weights([arrays["kernel"]])
    np.save(folder + "/y.npy", np.asarray(layer(arrays["x"])))
""")


def test_winograd_conv_on_jax_equals_numpy(tmp_path):
    """The Winograd path is keras.ops only: on the JAX backend (a subprocess) it computes the convolution too."""
    x = random_images((2, 19, 26, 5))
    kernel = RNG.normal(size=(3, 3, 5, 4)).astype("float32")
    np.savez(tmp_path / "arrays.npz", x=x, kernel=kernel)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", WINOGRAD_JAX_SCRIPT, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    want = numpy_conv_same(x.astype("float64"), kernel.astype("float64"), 2)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-5 * np.abs(want).max())


def test_atrous_conv_winograd_needs_a_3x3_kernel():
    with pytest.raises(ValueError, match="3x3"):
        AtrousConv2D(4, 5, implementation="winograd")


def numpy_conv_same(x, kernel, rate):
    """Stride-1 'same' convolution with dilation `rate` by explicit loops over taps (NHWC, HWIO)."""
    kh, kw = kernel.shape[:2]
    ph, pw = rate * (kh // 2), rate * (kw // 2)
    padded = np.pad(x, [(0, 0), (ph, ph), (pw, pw), (0, 0)])
    height, width = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i * rate:i * rate + height, j * rate:j * rate + width]
            out += window @ kernel[i, j]
    return out


def randomize_batchnorm(bn):
    """Non-trivial gamma, beta, moving mean and variance, so that inference-mode BN is not the identity."""
    channels = bn.gamma.shape[0]
    bn.set_weights([RNG.uniform(0.5, 1.5, channels), RNG.normal(0, 0.5, channels),
                    RNG.normal(0, 0.5, channels), RNG.uniform(0.5, 2.0, channels)])


def numpy_batchnorm(x, bn):
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    return (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta


def bn_training_step(layer, x, weights):
    """Output, gradients (input, gamma, beta) of a weighted sum, and moving statistics after one training call."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x, training=True)
        loss = tf.reduce_sum(outputs * weights)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return [outputs, *grads, layer.moving_mean, layer.moving_variance]


@pytest.mark.parametrize("shape", [(2, 9, 7, 5), (1, 1, 1, 3)])
def test_fused_batchnorm_trains_like_keras_and_numpy(shape):
    """The library's BatchNormalization (TF's fused kernels in training) against Keras' own layer with the same
    weights (outputs, gradients, moving statistics) and against a NumPy batch normalization."""
    x = RNG.normal(2.0, 3.0, shape).astype("float32")
    weights = tf.constant(RNG.normal(size=shape).astype("float32"))
    ours = BatchNormalization(momentum=0.9, epsilon=1e-3)
    keras_bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    for layer in (ours, keras_bn):
        layer.build(shape)
    randomize_batchnorm(ours)
    keras_bn.set_weights(ours.get_weights())
    moving_mean, moving_variance = ours.moving_mean.numpy(), ours.moving_variance.numpy()
    ours_results = bn_training_step(ours, x, weights)
    assert ours._fusable(x, True, None)
    for mine, theirs in zip(ours_results, bn_training_step(keras_bn, x, weights)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    x64 = x.astype(np.float64)
    mean, variance = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    gamma, beta = ours.gamma.numpy(), ours.beta.numpy()
    np.testing.assert_allclose(ours_results[0], (x64 - mean) / np.sqrt(variance + 1e-3) * gamma + beta,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours_results[-2], 0.9 * moving_mean + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours_results[-1], 0.9 * moving_variance + 0.1 * variance, rtol=1e-5, atol=1e-6)


def test_fused_batchnorm_falls_back_to_keras_where_the_kernel_does_not_apply():
    x = RNG.normal(size=(2, 3, 4, 5)).astype("float32")
    frozen = BatchNormalization()
    frozen.build(x.shape)
    frozen.trainable = False
    assert not BatchNormalization()._fusable(x, False, None)  # inference
    assert not frozen._fusable(x, True, None)
    assert not BatchNormalization(axis=1)._fusable(x, True, None)
    assert not BatchNormalization(center=False)._fusable(x, True, None)
    assert not BatchNormalization(synchronized=True)._fusable(x, True, None)
    assert not BatchNormalization()._fusable(x[:, 0], True, None)
    assert not BatchNormalization()._fusable(x.astype(np.float64), True, None)


def build_random_aspp(in_channels, **kwargs):
    aspp = ASPP(**kwargs)
    aspp.build((None, None, None, in_channels))
    for part in aspp.parts():
        part.conv.set_weights([RNG.normal(0, 0.3, part.conv.kernel.shape).astype("float32")])
        randomize_batchnorm(part.bn)
    return aspp


def test_aspp_equals_numpy_reference():
    """1x1 branch, one rate-2 branch and image pooling, concatenated and projected, in inference mode."""
    aspp = build_random_aspp(6, filters=5, atrous_rates=(2,), image_pooling=True)
    x = random_images((2, 7, 9, 6)).astype(np.float64)
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    assert [part.kind for part in aspp.branches()] == ["1x1", "atrous", "pooling"]
    conv_1x1, conv_rate2, conv_pool = (np.asarray(part.conv.kernel, np.float64) for part in aspp.branches())
    bn_1x1, bn_rate2, bn_pool = (part.bn for part in aspp.branches())
    branch_1x1 = relu(numpy_batchnorm(x @ conv_1x1[0, 0], bn_1x1))
    branch_rate2 = relu(numpy_batchnorm(numpy_conv_same(x, conv_rate2, 2), bn_rate2))
    pooled = relu(numpy_batchnorm(x.mean(axis=(1, 2)) @ conv_pool[0, 0], bn_pool))  # [N, filters]
    branch_pool = np.broadcast_to(pooled[:, None, None, :], branch_1x1.shape)
    concat = np.concatenate([branch_1x1, branch_rate2, branch_pool], axis=-1)
    project = np.asarray(aspp.project_conv.kernel, np.float64)[0, 0]
    expected = relu(numpy_batchnorm(concat @ project, aspp.project_bn))
    got = aspp(x.astype("float32"), training=False)
    assert got.shape == (2, 7, 9, 5)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_aspp_image_pooling_branch_sees_the_global_mean():
    """Only the pooling branch differs between two inputs whose local content (1x1 and rate-1 3x3 views of the
    top-left corner) is equal; its contribution must follow the change of the global mean."""
    aspp = build_random_aspp(3, filters=4, atrous_rates=(), image_pooling=True)
    without_pool = build_random_aspp(3, filters=4, atrous_rates=(), image_pooling=False)
    # Share the 1x1 branch and the part of the projection that reads it.
    (_, conv_1x1, bn_1x1, _), pool = aspp.branches()
    without_pool.branches()[0].conv.set_weights(conv_1x1.get_weights())
    without_pool.branches()[0].bn.set_weights(bn_1x1.get_weights())
    project = aspp.project_conv.get_weights()[0]
    project[:, :, 4:] = 0.0  # silence the pooling branch
    aspp.project_conv.set_weights([project])
    without_pool.project_conv.set_weights([project[:, :, :4]])
    without_pool.project_bn.set_weights(aspp.project_bn.get_weights())
    x = random_images((1, 6, 8, 3))
    np.testing.assert_allclose(aspp(x), without_pool(x), atol=1e-5)

    # With the projection reading only the pooling branch, the output is spatially constant and equals
    # relu(BN(relu(BN(mean(x) @ W_pool)) @ P_pool)).
    project = aspp.project_conv.get_weights()[0]
    project[:, :, :4] = 0.0
    project[:, :, 4:] = RNG.normal(size=(4, 4))
    aspp.project_conv.set_weights([project])
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    pooled = relu(numpy_batchnorm(x.mean(axis=(1, 2)) @ pool.conv.get_weights()[0][0, 0], pool.bn))
    expected = relu(numpy_batchnorm(pooled @ project[0, 0, 4:], aspp.project_bn))
    got = np.asarray(aspp(x))
    np.testing.assert_allclose(got, np.broadcast_to(expected[:, None, None], got.shape), atol=1e-5)


def test_aspp_on_dynamic_sizes():
    aspp = build_random_aspp(8, filters=6, atrous_rates=(2, 4, 40))
    run = tf.function(lambda v: aspp(v, training=False),
                      input_signature=[tf.TensorSpec([None, None, None, 8], tf.float32)])
    for size in ((5, 5), (9, 13), (1, 1), (33, 17)):
        x = random_images((2, *size, 8))
        eager = aspp(x, training=False)
        assert eager.shape == (2, *size, 6)
        np.testing.assert_allclose(run(x), eager, atol=1e-4, rtol=1e-4)


def test_image_preprocessing_modes_equal_hand_computed_numpy():
    x = random_images((2, 5, 6, 3), 0, 255)
    caffe = x[..., ::-1] - np.array([103.939, 116.779, 123.68])
    torch = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    tf_mode = x / 127.5 - 1.0
    for mode, expected in (("caffe", caffe), ("torch", torch), ("tf", tf_mode)):
        np.testing.assert_allclose(ImagePreprocessing(mode)(x), expected, atol=2e-4, rtol=1e-5, err_msg=mode)


def test_image_preprocessing_equals_keras_applications():
    x = random_images((1, 4, 4, 3), 0, 255)
    expected = {
        "caffe": keras.applications.resnet.preprocess_input(x.copy()),
        "tf": keras.applications.mobilenet_v2.preprocess_input(x.copy()),
        "torch": keras.applications.imagenet_utils.preprocess_input(x.copy(), mode="torch"),
    }
    for mode, want in expected.items():
        np.testing.assert_allclose(ImagePreprocessing(mode)(x), want, atol=2e-4, rtol=1e-5, err_msg=mode)


def test_image_preprocessing_rejects_unknown_mode():
    with pytest.raises(ValueError, match="Unknown preprocessing mode 'bgr'"):
        ImagePreprocessing("bgr")


@pytest.mark.parametrize("source,target", [((5, 7), (9, 13)), ((65, 65), (513, 513)), ((20, 9), (7, 4))])
def test_resize_like_equals_tf_image_resize(source, target):
    images = random_images((2, *source, 3))
    reference = np.zeros((2, *target, 1), "float32")
    expected = tf.image.resize(images, target, method="bilinear")
    np.testing.assert_allclose(ResizeLike()([images, reference]), expected, atol=1e-5)
    run = tf.function(ResizeLike(), input_signature=[[tf.TensorSpec([None, None, None, 3]),
                                                      tf.TensorSpec([None, None, None, 1])]])
    np.testing.assert_allclose(run([images, reference]), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
def test_image_preprocessing_layer(mode):
    run_layer_test(ImagePreprocessing, {"mode": mode}, random_images((2, 4, 5, 3), 0, 255),
                   expected_output_shape=(2, 4, 5, 3), expected_num_trainable_weights=0)


def test_resize_like_layer():
    inputs = [random_images((2, 4, 5, 2)), np.zeros((2, 9, 7, 1), "float32")]
    run_layer_test(ResizeLike, {}, inputs, expected_output_shape=(2, 9, 7, 2), expected_num_trainable_weights=0)


def test_batch_normalization_layer():
    run_layer_test(BatchNormalization, {"momentum": 0.5, "epsilon": 1e-4}, random_images((2, 3, 5, 4)),
                   expected_output_shape=(2, 3, 5, 4), expected_num_trainable_weights=2,
                   expected_num_non_trainable_weights=2)


def test_conv2d_layer():
    run_layer_test(Conv2D, {"filters": 6, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"},
                   random_images((2, 9, 11, 2)), expected_output_shape=(2, 5, 6, 6),
                   expected_num_trainable_weights=2)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_atrous_conv_layer(implementation):
    run_layer_test(AtrousConv2D, {"filters": 4, "kernel_size": 3, "dilation_rate": (2, 3),
                                  "implementation": implementation},
                   random_images((2, 9, 11, 5)), expected_output_shape=(2, 9, 11, 4), expected_num_trainable_weights=2)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_aspp_layer(batch_norm):
    """Five convolutions (1x1, two rates, pooling, projection), each with a BatchNorm or a bias."""
    run_layer_test(ASPP, {"filters": 5, "atrous_rates": (2, 3), "image_pooling": True, "dropout": 0.25,
                          "bn_momentum": 0.9, "bn_epsilon": 1e-3, "batch_norm": batch_norm},
                   random_images((2, 7, 9, 6)), expected_output_shape=(2, 7, 9, 5),
                   expected_num_trainable_weights=15 if batch_norm else 10,
                   expected_num_non_trainable_weights=10 if batch_norm else 0)
