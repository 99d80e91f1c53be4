"""Pretrained presets end to end, offline: a torchvision-format MobileNetV3-Large DeepLabV3 file (deterministic
weights written in torch's zip format from NumPy) is served by an HTTP server on 127.0.0.1 under a test preset;
from_preset downloads, checks and caches it and computes what torchvision computes (stored reference), then the
model is fine-tuned, saved, exported, served and used by `deeplab predict --preset`."""
import dataclasses
import hashlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from helpers.http_files import FileServer
from helpers.model_server import deeplab_serve
from helpers.serving_models import camvid_pixels, CAMVID_FILES, keras_reference, png_bytes
from helpers.torch_format import write_pth
from helpers.torchvision_state import FIXTURES, KEYS_MOBILENET_V3, MOBILENET_V3_BN_WEIGHT_SHIFT
from helpers.torchvision_state import deterministic_state, torchvision_keys
from keras_deeplab import DeepLabV3, export, predict, presets, viz
from keras_deeplab.serving import TFServingClient
from keras_deeplab.weights import WEIGHTS_URL_ENV, WeightsError, WeightsFile

PRESET = "test_mobilenet_v3_large_coco_voc"
TORCH_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
TORCH_STD = np.array([58.395, 57.12, 57.375], np.float32)
# torchvision's published parameter counts (its model docs), aux head included.
TORCHVISION_PARAMETERS = {"deeplabv3_resnet50_coco_voc": 42_004_074, "deeplabv3_resnet101_coco_voc": 60_996_202,
                          "deeplabv3_mobilenet_v3_large_coco_voc": 11_029_328}


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory):
    """The test preset's file on a 127.0.0.1 server, registered as preset PRESET for the module."""
    state = deterministic_state(torchvision_keys(KEYS_MOBILENET_V3), seed=0,
                                bn_weight_shift=MOBILENET_V3_BN_WEIGHT_SHIFT)
    path = tmp_path_factory.mktemp("publisher") / "deeplabv3_mobilenet_v3_large-test.pth"
    write_pth(path, state)
    body = path.read_bytes()
    real = presets.PRESETS["deeplabv3_mobilenet_v3_large_coco_voc"]
    with FileServer() as server, pytest.MonkeyPatch.context() as patch:
        weights = WeightsFile(path.name, server.url + "/models/", len(body), hashlib.sha256(body).hexdigest())
        server.files[f"/models/{path.name}"] = body
        patch.setitem(presets.PRESETS, PRESET, dataclasses.replace(real, name=PRESET, weights=weights))
        patch.delenv(WEIGHTS_URL_ENV, raising=False)
        patch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
        yield server


@pytest.fixture(scope="module")
def pretrained(weights_server):
    return DeepLabV3.from_preset(PRESET)


def raw_pixels(normalized_nchw):
    """RGB in [0, 255] (NHWC) that the model's torch preprocessing turns into the fixture's normalized input."""
    return np.transpose(normalized_nchw, (0, 2, 3, 1)) * TORCH_STD + TORCH_MEAN


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMETERS))
def test_preset_architectures_have_torchvisions_parameter_count(name):
    preset = presets.get_preset(name)
    assert preset.weights.url().startswith(presets.TORCHVISION_MODELS_URL)
    assert len(preset.weights.file_hash) == 64 and preset.weights.file_hash.startswith(
        preset.weights.file.rsplit("-", 1)[1][:8])  # torchvision names files by their SHA-256 prefix
    assert len(preset.class_names) == preset.num_classes == 21
    model = DeepLabV3(num_classes=21, **{**preset.architecture, "aux_head": True})
    assert model.count_params() - non_trainable_statistics(model) == TORCHVISION_PARAMETERS[name]


def non_trainable_statistics(model):
    return sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)


def test_from_preset_downloads_once_and_computes_torchvisions_logits(weights_server, pretrained):
    images = np.load(FIXTURES / "mobilenet_v3_large_seed0_input.npy")
    reference = np.transpose(np.load(FIXTURES / "mobilenet_v3_large_seed0_out.npy"), (0, 2, 3, 1))
    logits = keras.ops.convert_to_numpy(pretrained(raw_pixels(images), training=False))
    assert np.abs(logits - reference).max() <= 1e-5 * np.abs(reference).max()
    DeepLabV3.from_preset(PRESET)  # from the cache
    assert weights_server.requests == [f"/models/{presets.PRESETS[PRESET].weights.file}"]


def test_num_classes_replaces_only_the_classifier(weights_server, pretrained):
    model = DeepLabV3.from_preset(PRESET, num_classes=5)
    assert model.num_classes == 5 and model.get_layer("logits_conv").kernel.shape == (1, 1, 256, 5)
    for layer in model.layers:
        if layer.weights and layer.name != "logits_conv":
            for ours, theirs in zip(layer.get_weights(), pretrained.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(ours, theirs)
    os32 = model.with_output_stride(32)
    assert os32.output_stride == 32 and os32(np.zeros((1, 65, 97, 3), np.float32)).shape == (1, 65, 97, 5)


def test_unknown_presets_and_imagenet_presets_without_num_classes_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="Unknown preset 'deeplabv3_resnet18'.*deeplabv3_resnet50_coco_voc"):
        DeepLabV3.from_preset("deeplabv3_resnet18")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        DeepLabV3.from_preset(str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 not found"):
        DeepLabV3.from_preset("resnet50_imagenet", num_classes=3, base_url=str(tmp_path))


def test_a_local_weight_file_works_without_a_server(weights_server, pretrained, tmp_path):
    path = tmp_path / "mine.pth"
    path.write_bytes(weights_server.files[f"/models/{presets.PRESETS[PRESET].weights.file}"])
    model = DeepLabV3.from_preset(str(path), aux_head=False)
    for ours, theirs in zip(model.weights, pretrained.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.slow
def test_preset_round_trip_save_load_export_serve(pretrained, tmp_path):
    """from_preset -> model.save -> load_model -> export -> deeplab serve: the same labels as the preset model."""
    pretrained.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    frames = [camvid_pixels(path, (97, 65)) for path in CAMVID_FILES[:2]]
    np.testing.assert_array_equal(loaded.predict_on_batch(np.stack(frames).astype("float32")),
                                  pretrained.predict_on_batch(np.stack(frames).astype("float32")))
    base_dir = tmp_path / "saved_models" / "pretrained"
    export.export_saved_model(loaded, str(base_dir), version=1, **presets.preset_info(PRESET))
    with deeplab_serve(base_dir, "pretrained", tmp_path / "server.log") as (url, _):
        served = TFServingClient(url, "pretrained").predict([png_bytes(frame) for frame in frames])
    for frame, labels in zip(frames, served):
        expected, clear = keras_reference(pretrained, frame)
        np.testing.assert_array_equal(labels[clear], expected[clear])


def test_deeplab_predict_with_a_preset_writes_voc_pictures(weights_server, pretrained, tmp_path, monkeypatch):
    image = tmp_path / "photo.png"
    pixels = camvid_pixels(CAMVID_FILES[0], (97, 65))
    Image.fromarray(pixels).save(image)
    legends, save_overlay = [], viz.save_overlay

    def recording_save_overlay(*args, **kwargs):
        legends.append(kwargs["class_names"])
        return save_overlay(*args, **kwargs)

    monkeypatch.setattr(viz, "save_overlay", recording_save_overlay)
    assert predict.main([str(image), "--preset", PRESET, "--out", str(tmp_path / "out")]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "photo_labels.png"))
    expected, clear = keras_reference(pretrained, pixels)
    np.testing.assert_array_equal(labels[clear], expected[clear])
    assert legends == [list(viz.class_names("pascal"))]
    assert Image.open(tmp_path / "out" / "photo_overlay.png").size[1] >= 65


def test_deeplab_presets_lists_every_preset_and_what_is_cached(tmp_path):
    preset = presets.PRESETS["deeplabv3_mobilenet_v3_large_coco_voc"]
    cached = tmp_path / "models" / preset.weights.file
    cached.parent.mkdir()
    with open(cached, "wb") as f:
        f.truncate(preset.weights.size)  # the listing checks sizes only; use checks the hash
    result = subprocess.run([sys.executable, "-m", "keras_deeplab.cli", "presets", "--cache_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:] if line.strip()}
    assert set(presets.PRESETS) - {PRESET} <= set(rows)  # the test preset exists in this process only
    assert rows[preset.name][-1] == "yes" and rows["deeplabv3_resnet50_coco_voc"][-1] == "no"
    assert "mIoU 66.4" in result.stdout and "160.5 MiB" in result.stdout


@pytest.mark.slow
def test_deeplab_export_with_a_preset_writes_a_servable_version_with_its_classes(weights_server, tmp_path):
    base_dir = tmp_path / "saved_models" / "deeplabv3"
    assert export.main(["--preset", PRESET, "--base_dir", str(base_dir)]) == 0
    info = predict.read_export_info(base_dir / "1")
    assert info["class_names"] == list(viz.class_names("pascal")) and info["colormap"] == "pascal"
    assert info["max_long_side"] == presets.PRESETS[PRESET].max_long_side
