"""keras_deeplab.convert.from_torchvision against torchvision's own DeepLabV3 outputs (stored fixture)."""
import sys

import keras
import numpy as np
import pytest

from helpers.torch_format import write_pth
from helpers.conversion import assert_bad_state_dict_is_refused_naming_the_key
from helpers.torchvision_state import FIXTURES, aux_head_keys, deterministic_state, torchvision_keys
from keras_deeplab import DeepLabV3
from keras_deeplab.convert import from_torchvision

# torchvision's ImageNet normalization of images scaled to [0, 1].
TORCH_MEAN = np.array([0.485, 0.456, 0.406])
TORCH_STD = np.array([0.229, 0.224, 0.225])
TORCHVISION_CONFIG = {"output_stride": 8, "multi_grid": (1, 1, 1), "atrous_rates": (12, 24, 36),
                      "head_conv": True, "aspp_dropout": 0.5, "aux_head": True}


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def nhwc(nchw):
    return np.transpose(nchw, (0, 2, 3, 1))


@pytest.fixture(scope="module")
def state():
    return deterministic_state(torchvision_keys(), seed=0)


@pytest.fixture(scope="module")
def converted(state):
    return from_torchvision(state, include_preprocessing=False)


@pytest.fixture(scope="module")
def aux_state():
    return deterministic_state(torchvision_keys() + aux_head_keys(), seed=1)


def test_matches_torchvision_reference_output(converted):
    images = np.load(FIXTURES / "resnet50_seed0_input.npy")
    reference = np.load(FIXTURES / "resnet50_seed0_output.npy")
    assert converted.backbone == "resnet50_v1.5" and converted.num_classes == 21 and not converted.aux_head
    logits = keras.ops.convert_to_numpy(converted(nhwc(images), training=False))
    diff = np.abs(logits - nhwc(reference)).max()
    print(f"max |keras - torchvision| = {diff:.3g} (max |reference| = {np.abs(reference).max():.3g})")
    assert diff <= 1e-5  # a faithful float32 port: ~1e-7; TF 'same' padding on stride 2 would give ~3e-3


def test_state_dict_from_npz_file_with_batch_counters(tmp_path, state, converted):
    counters = {key.replace("running_var", "num_batches_tracked"): np.array(7, np.int64)
                for key in state if key.endswith("running_var")}
    path = tmp_path / "deeplabv3_resnet50.npz"
    np.savez(path, **state, **counters)
    model = from_torchvision(str(path), include_preprocessing=False)
    for ours, reference in zip(model.weights, converted.weights):
        assert ours.path == reference.path
        np.testing.assert_array_equal(ours.numpy(), reference.numpy())


def test_pth_file_is_read_without_torch(tmp_path, monkeypatch, state, converted):
    """A full-size .pth in torch.save's format (with torchvision's int64 `num_batches_tracked` buffers) gives the
    same weights as the in-memory state dict, with `import torch` failing."""
    tensors = {}
    for key, value in state.items():
        tensors[key] = value
        if key.endswith("running_var"):
            tensors[key.replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
    path = tmp_path / "deeplabv3_resnet50.pth"
    write_pth(path, tensors)
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    model = from_torchvision(path, include_preprocessing=False)
    for ours, reference in zip(model.weights, converted.weights):
        np.testing.assert_array_equal(ours.numpy(), reference.numpy())


def test_real_pth_round_trip_equals_the_npz_model(tmp_path, state):
    """A state dict of torch tensors (with torchvision's int64 `num_batches_tracked` buffers) saved by
    torch.save and read back by from_torchvision computes exactly what the same weights read from .npz do."""
    torch = pytest.importorskip("torch")
    tensors = {}
    for key, value in state.items():
        tensors[key] = torch.from_numpy(value.copy())
        if key.endswith("running_var"):
            tensors[key.replace("running_var", "num_batches_tracked")] = torch.tensor(7, dtype=torch.int64)
    pth_path, npz_path = tmp_path / "deeplabv3_resnet50.pth", tmp_path / "deeplabv3_resnet50.npz"
    torch.save(tensors, pth_path)
    np.savez(npz_path, **state)
    from_pth = from_torchvision(pth_path, include_preprocessing=False)
    from_npz = from_torchvision(str(npz_path), include_preprocessing=False)
    images = nhwc(np.load(FIXTURES / "resnet50_seed0_input.npy"))
    logits = keras.ops.convert_to_numpy(from_pth(images, training=False))
    np.testing.assert_array_equal(logits, keras.ops.convert_to_numpy(from_npz(images, training=False)))
    reference = nhwc(np.load(FIXTURES / "resnet50_seed0_output.npy"))
    assert np.abs(logits - reference).max() <= 1e-5


def test_pth_file_not_in_torch_format_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights\.pth is not a PyTorch state dict file"):
        from_torchvision(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        from_torchvision(tmp_path / "nothere.npz")


@pytest.mark.parametrize("change, key", [
    ("drop", "backbone.layer2.1.bn2.running_var"),
    ("add", "classifier.5.weight"),
    ("add", "backbone.layer1.0.bn1.num_batches_tracked_extra"),
    ("reshape", "classifier.0.project.1.bias"),
    ("reshape", "backbone.layer4.2.conv2.weight"),
])
def test_bad_state_dict_names_the_key(state, converted, change, key):
    assert_bad_state_dict_is_refused_naming_the_key(converted, state, change, key)


def test_not_a_deeplabv3_state_dict(state):
    no_layer3 = {k: v for k, v in state.items() if not k.startswith("backbone.layer3.")}
    with pytest.raises(ValueError, match="ResNet depth"):
        from_torchvision(no_layer3)
    with pytest.raises(ValueError, match="classifier.4.weight"):
        from_torchvision({k: v for k, v in state.items() if not k.startswith("classifier.4.")})


def test_aux_head_true_needs_aux_keys(state):
    with pytest.raises(ValueError, match="aux_classifier"):
        from_torchvision(state, aux_head=True)


def test_aux_head_and_preprocessing(aux_state):
    """Aux keys give {"out", "aux"} outputs whose aux logits equal a numpy FCN head on block3; the model
    with preprocessing (and aux_head=False) on [0, 255] images equals the one without on torch-normalized
    images."""
    model = from_torchvision(aux_state, include_preprocessing=False)
    assert model.aux_head and model.preprocessing is None
    rng = np.random.default_rng(3)
    raw = rng.uniform(0, 255, (1, 67, 90, 3)).astype(np.float32)
    normalized = ((raw / 255.0 - TORCH_MEAN) / TORCH_STD).astype(np.float32)
    outputs = model(normalized, training=False)
    assert set(outputs) == {"out", "aux"} and outputs["aux"].shape == (1, 67, 90, 21)

    probe = keras.Model(model.input, [model.get_layer("conv4_block6_out").output,
                                      model.get_layer("aux_logits_conv").output])
    block3, aux_logits = (keras.ops.convert_to_numpy(t).astype(np.float64) for t in probe(normalized))
    height, width = block3.shape[1:3]
    padded = np.pad(block3, ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel = aux_state["aux_classifier.0.weight"]
    hidden = sum(padded[:, i:i + height, j:j + width] @ kernel[:, :, i, j].T
                 for i in range(3) for j in range(3))
    bn = {name: aux_state[f"aux_classifier.1.{name}"]
          for name in ("weight", "bias", "running_mean", "running_var")}
    hidden = (hidden - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-5) * bn["weight"] + bn["bias"]
    expected = np.maximum(hidden, 0) @ aux_state["aux_classifier.4.weight"][:, :, 0, 0].T
    expected += aux_state["aux_classifier.4.bias"]
    np.testing.assert_allclose(aux_logits, expected, atol=1e-4 * np.abs(expected).max())

    with_preprocessing = from_torchvision(aux_state, include_preprocessing=True, aux_head=False)
    assert not with_preprocessing.aux_head and with_preprocessing.preprocessing == "torch"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(with_preprocessing(raw, training=False)),
                               keras.ops.convert_to_numpy(outputs["out"]), atol=1e-5)


def test_resnet50_parameter_count_equals_torchvision():
    model = DeepLabV3(21, backbone="resnet50_v1.5", **TORCHVISION_CONFIG)
    assert trainable_count(model) == 42_004_074  # torchvision's published deeplabv3_resnet50 num_params


def test_number_of_classes_comes_from_the_state_dict():
    """A 5-class torchvision state dict (main and aux classifiers) gives a 5-class model carrying its weights."""
    keys = [(key, (5,) + shape[1:] if key.startswith(("classifier.4.", "aux_classifier.4.")) else shape)
            for key, shape in torchvision_keys() + aux_head_keys()]
    state = deterministic_state(keys)
    model = from_torchvision(state)
    assert model.num_classes == 5 and model.aux_head
    outputs = model(np.zeros((1, 33, 33, 3), "float32"))
    assert outputs["out"].shape == outputs["aux"].shape == (1, 33, 33, 5)
    np.testing.assert_array_equal(model.get_layer("logits_conv").bias.numpy(), state["classifier.4.bias"])
    np.testing.assert_array_equal(model.get_layer("aux_logits_conv").kernel.numpy()[0, 0],
                                  state["aux_classifier.4.weight"][:, :, 0, 0].T)


def test_resnet101_state_dict_converts_with_torchvision_parameter_count():
    # torchvision's ResNet-101 differs from ResNet-50 only in having 23 units in layer3 (units 1.. alike).
    keys = []
    for key, shape in torchvision_keys() + aux_head_keys():
        keys.append((key, shape))
        if key.startswith("backbone.layer3.5."):
            keys += [(key.replace("layer3.5.", f"layer3.{unit}."), shape) for unit in range(6, 23)]
    state = deterministic_state(keys)
    parameters = sum(v.size for k, v in state.items() if not k.endswith(("running_mean", "running_var")))
    assert parameters == 60_996_202  # torchvision's published deeplabv3_resnet101 num_params
    model = from_torchvision(state)
    assert model.backbone == "resnet101_v1.5" and model.aux_head
    assert trainable_count(model) == 60_996_202
    np.testing.assert_array_equal(model.get_layer("conv4_block23_3_bn").moving_variance.numpy(),
                                  state["backbone.layer3.22.bn3.running_var"])
