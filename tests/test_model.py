"""DeepLabV3 model tests: shapes at every output stride, the atrous rates really built, serialization,
weights shared across output strides, gradients, parameter counts and the JAX backend. CPU-sized inputs."""
import collections
import functools
import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers.models import RNG, random_images, randomize_weights
from keras_deeplab import DeepLabV3
from keras_deeplab.layers import AtrousConv2D, BatchNormalization, Conv2D
from keras_deeplab.training.recipe import compile_model

SMALL = {"backbone": "mobilenet_v2", "aspp_filters": 16}


@functools.cache
def resnet50(output_stride):
    """A default-configured ResNet-50 DeepLabV3 (21 classes, ASPP 256), shared by the architecture tests."""
    return DeepLabV3(21, backbone="resnet50", output_stride=output_stride)


@functools.cache
def mobilenet(output_stride):
    return DeepLabV3(12, output_stride=output_stride, **SMALL)


def layer_output(model, name, images):
    return keras.Model(model.input, model.get_layer(name).output)(images)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("build", [resnet50, mobilenet], ids=["resnet50", "mobilenet_v2"])
def test_output_shapes_at_every_output_stride(build, output_stride):
    model = build(output_stride)
    for height, width in ((97, 129), (65, 66)):
        images = random_images(1, height, width)
        logits = model(images)
        assert logits.shape == (1, height, width, model.num_classes)
        assert logits.dtype == "float32"
        features = layer_output(model, "aspp", images)
        assert features.shape[1:3] == (math.ceil(height / output_stride), math.ceil(width / output_stride))
    assert np.isfinite(np.asarray(logits)).all()


def unit_rates(model, stage, units):
    return [model.get_layer(f"conv{stage}_block{unit + 1}_2_conv").dilation_rate for unit in range(units)]


@pytest.mark.parametrize("output_stride,block3_rate,block4_rates,aspp_rates", [
    (32, 1, (1, 2, 4), (3, 6, 9)),
    (16, 1, (2, 4, 8), (6, 12, 18)),
    (8, 2, (4, 8, 16), (12, 24, 36)),
])
def test_resnet_atrous_rates_in_built_layers(output_stride, block3_rate, block4_rates, aspp_rates):
    """The paper's rates: block3 dilates only at OS8; block4's rate times multi-grid (1, 2, 4)."""
    model = resnet50(output_stride)
    assert unit_rates(model, 4, 6) == [(block3_rate, block3_rate)] * 6
    assert unit_rates(model, 5, 3) == [(r, r) for r in block4_rates]
    assert all(isinstance(model.get_layer(f"conv5_block{u}_2_conv"), AtrousConv2D) for u in (1, 2, 3))
    stride = {layer.name: layer.strides for layer in model.layers
              if layer.name.endswith(("_0_conv", "_1_conv"))}
    assert stride["conv4_block1_1_conv"] == ((2, 2) if output_stride >= 16 else (1, 1))
    assert stride["conv5_block1_1_conv"] == ((2, 2) if output_stride == 32 else (1, 1))
    aspp = model.get_layer("aspp")
    assert model.atrous_rates == aspp.atrous_rates == aspp_rates
    assert [b.conv.dilation_rate for b in aspp.branches() if b.kind == "atrous"] == [(r, r) for r in aspp_rates]


@pytest.mark.parametrize("output_stride,strided_blocks,rates", [
    # rates: block -> depthwise dilation rate, for the blocks not at rate 1. A block that gives up its stride
    # keeps the rate before it; the blocks after it use the rate times that stride (TF DeepLab's rule).
    (32, (1, 3, 6, 13), {}),
    (16, (1, 3, 6), {14: 2, 15: 2, 16: 2}),
    (8, (1, 3), {**{b: 2 for b in range(7, 14)}, 14: 4, 15: 4, 16: 4}),
])
def test_mobilenet_v2_dilation_rates_in_built_layers(output_stride, strided_blocks, rates):
    model = mobilenet(output_stride)
    names = ["expanded_conv_depthwise"] + [f"block_{b}_depthwise" for b in range(1, 17)]
    depthwise = [model.get_layer(name) for name in names]
    assert [b for b, layer in enumerate(depthwise) if layer.strides == (2, 2)] == list(strided_blocks)
    assert all(layer.strides in ((1, 1), (2, 2)) for layer in depthwise)
    assert [layer.dilation_rate for layer in depthwise] == [(rates.get(b, 1),) * 2 for b in range(17)]
    aspp = model.get_layer("aspp")
    expected_aspp = tuple(r * 16 // output_stride for r in (6, 12, 18))
    assert [b.conv.dilation_rate for b in aspp.branches() if b.kind == "atrous"] == [(r, r) for r in expected_aspp]


def test_resnet152_builds_with_its_unit_counts():
    model = DeepLabV3(3, backbone="resnet152", aspp_filters=8)
    images = random_images(1, 65, 67)
    logits = model(images)
    assert logits.shape == (1, 65, 67, 3) and np.isfinite(np.asarray(logits)).all()
    names = {layer.name for layer in model.layers}
    for stage, units in zip((2, 3, 4, 5), (3, 8, 36, 3)):
        assert f"conv{stage}_block{units}_out" in names and f"conv{stage}_block{units + 1}_out" not in names
    assert unit_rates(model, 5, 3) == [(2, 2), (4, 4), (8, 8)]
    assert (count(model.trainable_weights), count(model.weights)) == \
        expected_parameters(152, num_classes=3, aspp_filters=8)


def test_custom_multi_grid_and_rates_survive_the_config():
    model = DeepLabV3(5, backbone="resnet50", output_stride=16, multi_grid=(1, 2, 1), atrous_rates=(4, 8),
                      aspp_filters=8)
    assert unit_rates(model, 5, 3) == [(2, 2), (4, 4), (2, 2)]
    assert model.get_layer("aspp").atrous_rates == (4, 8)
    rebuilt = DeepLabV3.from_config(json.loads(json.dumps(model.get_config())))
    assert unit_rates(rebuilt, 5, 3) == [(2, 2), (4, 4), (2, 2)]
    assert rebuilt.get_layer("aspp").atrous_rates == (4, 8)
    with pytest.raises(ValueError, match="multi_grid needs 3 values"):
        DeepLabV3(5, backbone="resnet50", multi_grid=(1, 2), aspp_filters=8)
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        DeepLabV3(5, backbone="resnet50", output_stride=4, aspp_filters=8)


def test_logits_are_float32_under_mixed_precision():
    reference = randomize_weights(DeepLabV3(4, **SMALL))
    images = random_images(1, 65, 65)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = DeepLabV3(4, **SMALL)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.mixed_precision.global_policy().name == previous.name
    model.set_weights(reference.get_weights())
    assert model.get_layer("aspp").compute_dtype == "float16"
    logits = model(images)
    assert logits.dtype == "float32"
    expected = np.asarray(reference(images))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, atol=0.05 * scale)


def save_and_load(model, path):
    """`model` saved to `path` (.keras) and loaded back, checked to be a DeepLabV3 with the same config."""
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, DeepLabV3)
    assert loaded.get_config() == model.get_config()
    return loaded


def test_save_and_load_keeps_outputs_and_config(tmp_path):
    model = randomize_weights(DeepLabV3(6, backbone="mobilenet_v2", output_stride=8, multi_grid=(1, 2, 1),
                                        atrous_rates=(3, 5), aspp_filters=8, aspp_dropout=0.1))
    images = random_images(2, 65, 81)
    loaded = save_and_load(model, tmp_path / "m.keras")
    assert (loaded.multi_grid, loaded.atrous_rates, loaded.output_stride, loaded.backbone) == \
        ((1, 2, 1), (3, 5), 8, "mobilenet_v2")
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


def test_resnet_save_and_load_keeps_outputs_config_and_rates(tmp_path):
    """The torchvision-like head options on a v1 ResNet: OS8, multi-grid (1, 2, 1), head conv, aux head, no
    image pooling, no in-model preprocessing; all survive model.save/load_model, as do the applied rates."""
    model = randomize_weights(DeepLabV3(3, backbone="resnet50", output_stride=8, multi_grid=(1, 2, 1),
                                        aspp_filters=8, head_conv=True, aux_head=True, image_pooling=False,
                                        preprocessing=None))
    images = RNG.normal(size=(1, 65, 65, 3)).astype("float32")  # pre-normalized: no preprocessing layer
    loaded = save_and_load(model, tmp_path / "resnet.keras")
    assert (loaded.backbone, loaded.output_stride, loaded.multi_grid, loaded.atrous_rates) == \
        ("resnet50", 8, (1, 2, 1), (12, 24, 36))
    assert (loaded.head_conv, loaded.aux_head, loaded.image_pooling, loaded.preprocessing) == \
        (True, True, False, None)
    names = {layer.name for layer in loaded.layers}
    assert {"head_conv", "aux_conv", "aux_logits"} <= names and "preprocessing" not in names
    assert unit_rates(loaded, 4, 6) == [(2, 2)] * 6
    assert unit_rates(loaded, 5, 3) == [(4, 4), (8, 8), (4, 4)]
    aspp = loaded.get_layer("aspp")
    assert not aspp.image_pooling and [b.kind for b in aspp.branches()] == ["1x1", "atrous", "atrous", "atrous"]
    assert [b.conv.dilation_rate for b in aspp.branches()[1:]] == [(12, 12), (24, 24), (36, 36)]
    expected, got = model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    assert set(got) == {"out", "aux"} and got["out"].shape == got["aux"].shape == (1, 65, 65, 3)
    assert np.abs(expected["out"]).max() > 0
    for key in ("out", "aux"):
        np.testing.assert_array_equal(got[key], expected[key])


LOAD_SCRIPT = textwrap.dedent("""
    import sys
    path, images, out = sys.argv[1:4]
    if sys.argv[4] == "keras_first":
        # Without keras_deeplab imported, Keras cannot find the classes: it imports a config's `module` only
        # for its own packages (keras, keras_hub, ...), so registration must happen at `import keras_deeplab`.
        import keras
        try:
            keras.models.load_model(path)
        except TypeError as err:
            assert "Could not locate class 'DeepLabV3'" in str(err), err
        else:
            raise AssertionError("loaded without keras_deeplab imported")
        import keras_deeplab  # noqa: F401  (registers the classes; no attribute touched)
    else:
        import keras_deeplab  # noqa: F401
        import keras
    import numpy as np
    model = keras.models.load_model(path)
    assert type(model).__module__ == "keras_deeplab.model", type(model)
    assert (type(model.optimizer).__name__, model.optimizer.l2) == ("SGDWithL2", 3e-4), model.optimizer  # compiled
    np.save(out, model.predict(np.load(images), verbose=0))
""")


@pytest.mark.parametrize("order", ["keras_deeplab_first", "keras_first"])
def test_saved_model_loads_in_a_fresh_process_after_import_keras_deeplab(tmp_path, order):
    """`import keras_deeplab` alone (no attribute access) is what makes load_model work in a new process, compiled
    as `deeplab train` saves it; this is why keras_deeplab/__init__.py imports the model eagerly rather than
    lazily."""
    model = randomize_weights(DeepLabV3(4, **SMALL))
    compile_model(model, num_classes=4, steps=10, weight_decay=3e-4)
    images = random_images(1, 65, 65)
    np.save(tmp_path / "images.npy", images)
    model.save(tmp_path / "m.keras")
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "m.keras"),
                             str(tmp_path / "images.npy"), str(tmp_path / "out.npy"), order],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), model.predict(images, verbose=0))


def neutralize_image_pooling(model):
    """Zero the ASPP projection weights that read the image-pooling branch (the last `filters` channels)."""
    aspp = model.get_layer("aspp")
    kernel = aspp.project_conv.kernel.numpy()
    kernel[:, :, -aspp.filters:, :] = 0.0
    aspp.project_conv.kernel.assign(kernel)


def test_weights_move_between_output_strides():
    """Atrous convolution computes the same function more densely: with the same weights, the pre-upsampling
    logits at OS s equal those at OS s/2 sampled every other pixel. Exact except through image pooling (a mean
    over more positions), so its projection weights are zeroed for that comparison."""
    base = resnet50(16)
    weights = base.get_weights()
    images = random_images(1, 97, 129)
    os8 = base.with_output_stride(8)
    assert os8.output_stride == 8 and os8.atrous_rates == (12, 24, 36)
    assert unit_rates(os8, 5, 3) == [(4, 4), (8, 8), (16, 16)]

    via_set_weights = resnet50(8)
    via_set_weights.set_weights(weights)
    out16, out8 = np.asarray(base(images)), np.asarray(os8(images))
    np.testing.assert_array_equal(via_set_weights(images), out8)
    assert out8.shape == out16.shape and np.isfinite(out8).all()
    assert np.abs(out8 - out16).max() > 1e-3 * np.abs(out16).max()
    np.testing.assert_array_equal(os8.with_output_stride(16)(images), out16)

    dense = {}
    for output_stride in (32, 16, 8):
        model = resnet50(output_stride)
        model.set_weights(weights)
        neutralize_image_pooling(model)
        dense[output_stride] = np.asarray(layer_output(model, "logits_conv", images))
    scale = np.abs(dense[32]).max()
    assert scale > 0
    for coarse, fine in ((32, 16), (16, 8)):
        np.testing.assert_allclose(dense[coarse], dense[fine][:, ::2, ::2], atol=1e-4 * scale, rtol=1e-4)
    base.set_weights(weights)


def conv_biases_feeding_batchnorm(model):
    """Paths of the biases of convolutions whose only consumer is a BatchNormalization layer."""
    consumers = collections.defaultdict(list)
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for parent in node.parent_nodes:
                consumers[parent.operation.name].append(layer)
    return {layer.bias.path: consumers[layer.name][0] for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D) and layer.use_bias and len(consumers[layer.name]) == 1
            and isinstance(consumers[layer.name][0], keras.layers.BatchNormalization)}


@pytest.mark.parametrize("backbone, n_bn_fed_biases",
                         [("mobilenet_v2", 0), ("resnet50_v1.5", 0), ("resnet50", 53)])
def test_gradients_reach_every_trainable_weight(backbone, n_bn_fed_biases):
    """Every trainable weight gets a gradient, non-zero except where zero is exact by construction:
    keras.applications' ResNet v1 layout (our "resnet50") has conv biases feeding straight into BatchNorm,
    which in training subtracts the batch mean and so removes any per-channel constant: d loss / d bias = 0
    in exact arithmetic (float32 leaves ~1e-7 of the following BN's beta gradient). Those biases are found
    structurally (a biased conv whose only consumer is a BatchNormalization); the 53 of ResNet-50 are
    conv1 + 3 per unit x 16 units + 4 shortcut convs."""
    model = randomize_weights(DeepLabV3(3, backbone=backbone, aspp_filters=8, head_conv=True))
    images = random_images(2, 65, 65)
    target = tf.constant(RNG.normal(size=(2, 65, 65, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(images, training=True) - target) ** 2)
    grads = dict(zip((v.path for v in model.trainable_variables),
                     tape.gradient(loss, model.trainable_variables)))
    assert len(grads) == len(model.trainable_variables) > 0
    batch_norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and all(isinstance(bn, BatchNormalization) for bn in batch_norms)  # the fused one
    if backbone.startswith("resnet"):  # 2048-channel convs computed in parts (layers.Conv2D)
        assert type(model.get_layer("conv5_block1_0_conv")) is Conv2D
    missing = [path for path, g in grads.items() if g is None]
    assert not missing, f"no gradient: {missing}"
    bn_fed = conv_biases_feeding_batchnorm(model)
    assert len(bn_fed) == n_bn_fed_biases
    zero = [path for path, g in grads.items() if path not in bn_fed and not np.any(g)]
    assert not zero, f"all-zero gradient: {zero}"
    for path, bn in bn_fed.items():
        assert np.abs(grads[path]).max() <= 1e-4 * np.abs(grads[bn.beta.path]).max(), path


def expected_parameters(depth, num_classes=21, aspp_filters=256, n_rates=3):
    """(trainable, total) of a ResNet v1 (conv biases, keras.applications layout) DeepLabV3, counted from the
    architecture: each conv k*k*cin*cout (+ cout bias), each BatchNorm 2*c trainable + 2*c moving
    statistics."""
    units = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}[depth]
    trainable, bn_channels = 0, 0

    def conv(k, cin, cout, bias):
        nonlocal trainable
        trainable += k * k * cin * cout + (cout if bias else 0)

    def bn(channels):
        nonlocal trainable, bn_channels
        trainable += 2 * channels
        bn_channels += channels

    conv(7, 3, 64, True), bn(64)
    cin = 64
    for n_units, width in zip(units, (64, 128, 256, 512)):
        for unit in range(n_units):
            if unit == 0:
                conv(1, cin, 4 * width, True), bn(4 * width)
            conv(1, cin, width, True), bn(width)
            conv(3, width, width, True), bn(width)
            conv(1, width, 4 * width, True), bn(4 * width)
            cin = 4 * width
    branches = [1] + [3] * n_rates + [1]  # 1x1, atrous 3x3s, image pooling
    for k in branches:
        conv(k, cin, aspp_filters, False), bn(aspp_filters)
    conv(1, len(branches) * aspp_filters, aspp_filters, False), bn(aspp_filters)
    conv(1, aspp_filters, num_classes, True)
    return trainable, trainable + 2 * bn_channels


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("depth", [50, 101])
def test_parameter_counts_match_the_architecture(depth, capsys):
    model = resnet50(16) if depth == 50 else DeepLabV3(21, backbone="resnet101", output_stride=16)
    trainable, total = count(model.trainable_weights), count(model.weights)
    with capsys.disabled():
        print(f"\nDeepLabV3 ResNet-{depth} (21 classes, OS16): {trainable:,} trainable, "
              f"{total:,} total parameters")
    assert (trainable, total) == expected_parameters(depth)


JAX_SCRIPT = textwrap.dedent("""
    import sys
    import jax  # the test must fail, not skip, without JAX
    import keras
    import numpy as np
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from keras_deeplab import DeepLabV3

    config, weights, out = sys.argv[1:4]
    model = DeepLabV3.from_config(__import__("json").load(open(config)))
    model.load_weights(weights)
    inputs = np.load(out + "/inputs.npz")
    for name in inputs.files:
        logits = model.predict(inputs[name], verbose=0)
        np.save(f"{out}/jax_{name}.npy", logits)
        print(name, logits.shape, logits.dtype)
""")


def test_jax_backend_forward_matches_tensorflow(tmp_path):
    """A subprocess with KERAS_BACKEND=jax builds the same model, loads its weights and runs two input
    sizes; its logits must equal TensorFlow's."""
    model = randomize_weights(DeepLabV3(12, **SMALL))
    (tmp_path / "config.json").write_text(json.dumps(model.get_config()))
    model.save_weights(tmp_path / "model.weights.h5")
    inputs = {"a": random_images(1, 65, 65), "b": random_images(2, 81, 97)}
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           # Cheap XLA compiles: the build initializes each weight shape with its own compiled kernel.
           "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "config.json"),
                             str(tmp_path / "model.weights.h5"), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, images in inputs.items():
        expected = np.asarray(model(images))
        got = np.load(tmp_path / f"jax_{name}.npy")
        assert got.shape == images.shape[:3] + (12,)
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-4)
