"""`deeplab predict` on SavedModels with the export's serving contract, run through the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.model_server import deeplab_serve, free_port
from keras_deeplab import cli, predict, viz
from keras_deeplab.export import EXPORT_INFO_FILE

FIXTURES = Path(__file__).parent / "fixtures" / "viz"
IMAGES = [FIXTURES / "camvid_0016E5_07959_120x90.png", FIXTURES / "camvid_0016E5_08085_96x72.png"]


def _red_channel_labels(path, divisor):
    return np.array(Image.open(path).convert("RGB"))[..., 0].astype(np.int32) // divisor


def _save_red_channel_model(path, divisor):
    """A SavedModel with the export's `serving_default` contract whose label map is `R // divisor`."""
    import tensorflow as tf

    def decode(encoded):
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    class RedChannelSegmenter(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, image_bytes):
            sizes = tf.map_fn(lambda s: tf.shape(decode(s))[:2], image_bytes, fn_output_signature=tf.int32)
            largest = tf.reduce_max(sizes, axis=0)

            def padded_labels(encoded):
                labels = tf.cast(decode(encoded)[..., 0], tf.int32) // divisor
                missing = largest - tf.shape(labels)
                return tf.pad(labels, [[0, missing[0]], [0, missing[1]]], constant_values=255)

            labels = tf.map_fn(padded_labels, image_bytes, fn_output_signature=tf.int32)
            pngs = tf.map_fn(lambda s: tf.io.encode_png(decode(s)[..., :1] // divisor), image_bytes,
                             fn_output_signature=tf.string)
            return {"labels": labels, "image_size": sizes, "label_png_bytes": pngs}

    module = RedChannelSegmenter()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    """A model base folder with versions 1 (labels R // 128) and 2 (labels R // 64)."""
    base = tmp_path_factory.mktemp("saved_models") / "deeplabv3"
    _save_red_channel_model(base / "1", divisor=128)
    _save_red_channel_model(base / "2", divisor=64)
    (base / "not_a_version").mkdir()
    return base


def _predict(*argv):
    return cli.main(["predict", *map(str, argv)])


def test_predict_writes_exact_label_pngs_and_overlays_of_the_highest_version(model_base, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(*IMAGES, "--model", model_base, "--out", out, "--batch-size", 2) == 0
    printed = capsys.readouterr().out
    camvid = viz.get_colormap("camvid")
    for image_path in IMAGES:
        expected = _red_channel_labels(image_path, 64)
        label_png = Image.open(out / f"{image_path.stem}_labels.png")
        assert label_png.mode == "P"
        np.testing.assert_array_equal(np.array(label_png), expected)  # padding of the batch cut off
        np.testing.assert_array_equal(np.array(label_png.getpalette(), np.uint8).reshape(-1, 3), camvid)
        overlay = np.array(Image.open(out / f"{image_path.stem}_overlay.png"))
        image = np.array(Image.open(image_path).convert("RGB"))
        np.testing.assert_array_equal(overlay, viz.overlay(image, expected, camvid,
                                                           class_names=viz.class_names("camvid")))
        assert str(out / f"{image_path.stem}_labels.png") in printed
        assert str(out / f"{image_path.stem}_overlay.png") in printed


def test_predict_with_a_version_folder_or_version_number(model_base, tmp_path):
    for argv in (["--model", model_base / "1"], ["--model", model_base, "--version", 1]):
        out = tmp_path / str(len(argv))
        assert _predict(IMAGES[1], *argv, "--out", out) == 0
        labels = np.array(Image.open(out / f"{IMAGES[1].stem}_labels.png"))
        np.testing.assert_array_equal(labels, _red_channel_labels(IMAGES[1], 128))


def test_model_runs_through_the_servers_tf1_session_path(model_base, tmp_path, monkeypatch):
    """`--model` loads with `Servable` (TF1 loader, Session, tensor names), as `deeplab serve` does, and closes it."""
    import tensorflow as tf

    from keras_deeplab.serving import servable

    def no_tf2_loader(*args, **kwargs):
        raise AssertionError("deeplab predict used tf.saved_model.load")

    loaded, retired = [], []

    class RecordingServable(servable.Servable):
        def __init__(self, path, *args, **kwargs):
            super().__init__(path, *args, **kwargs)
            loaded.append((Path(path), kwargs.get("warmup")))

        def retire(self):
            retired.append(self.path)
            super().retire()

    monkeypatch.setattr(tf.saved_model, "load", no_tf2_loader)
    monkeypatch.setattr(servable, "Servable", RecordingServable)
    out = tmp_path / "out"
    assert _predict(*IMAGES, "--model", model_base, "--out", out, "--batch_size", 2) == 0
    assert loaded == [(model_base / "2", False)] and retired == [str(model_base / "2")]
    for image_path in IMAGES:
        np.testing.assert_array_equal(np.array(Image.open(out / f"{image_path.stem}_labels.png")),
                                      _red_channel_labels(image_path, 64))


def test_a_savedmodel_without_the_serving_signature_is_named(tmp_path, capsys):
    import tensorflow as tf

    class Other(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x):
            return {"y": 2 * x}

    module = Other()
    tf.saved_model.save(module, str(tmp_path / "model" / "1"), signatures={"double": module.double})
    assert _predict(IMAGES[0], "--model", tmp_path / "model", "--out", tmp_path / "out") == 1
    assert "has no 'serving_default' signature (it has ['double'])" in capsys.readouterr().err


def test_colormap_comes_from_the_export_info_unless_given(model_base, tmp_path):
    version = tmp_path / "model" / "3"
    _save_red_channel_model(version, divisor=64)
    (version / EXPORT_INFO_FILE).parent.mkdir()
    (version / EXPORT_INFO_FILE).write_text(json.dumps({"num_classes": 4, "colormap": "pascal"}))
    for extra, colormap in (([], "pascal"), (["--colormap", "cityscapes"], "cityscapes")):
        out = tmp_path / colormap
        assert _predict(IMAGES[0], "--model", version.parent, "--out", out, *extra) == 0
        palette = Image.open(out / f"{IMAGES[0].stem}_labels.png").getpalette()
        np.testing.assert_array_equal(np.array(palette, np.uint8).reshape(-1, 3), viz.get_colormap(colormap))


def test_missing_and_corrupt_images_are_named(model_base, tmp_path, capsys):
    missing = tmp_path / "missing.png"
    assert _predict(IMAGES[0], missing, "--model", model_base, "--out", tmp_path) == 1
    assert f"input image not found: {missing}" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert _predict(corrupt, "--model", model_base, "--out", tmp_path) == 1
    assert f"cannot decode input image {corrupt}" in capsys.readouterr().err
    same_stem = tmp_path / f"{IMAGES[0].stem}.png"
    same_stem.write_bytes(IMAGES[0].read_bytes())
    assert _predict(IMAGES[0], same_stem, "--model", model_base, "--out", tmp_path) == 1
    assert "would write the same outputs" in capsys.readouterr().err


def test_an_image_the_model_cannot_decode_is_named(model_base, tmp_path, capsys):
    tiff = tmp_path / "frame.tif"  # PIL reads TIFF, TensorFlow's decode_image does not
    Image.open(IMAGES[1]).save(tiff)
    assert _predict(tiff, "--model", model_base, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"{tiff}: the SavedModel rejected the input" in err and "Traceback" not in err


@pytest.mark.parametrize("layout, message", [
    ("absent", "model directory not found"),
    ("empty", "no SavedModel in"),
    ("version", "version 7 not found"),
    ("version_folder", "is a SavedModel version folder"),
])
def test_bad_model_dirs_give_a_clear_error(model_base, tmp_path, capsys, layout, message):
    model = {"absent": tmp_path / "nothing", "empty": tmp_path, "version": model_base,
             "version_folder": model_base / "2"}[layout]
    assert _predict(IMAGES[0], "--model", model, "--version", 7, "--out", tmp_path / "out") == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_flags_are_spelled_with_dashes_and_underscores(capsys):
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    help_text = capsys.readouterr().out
    assert "--batch-size BATCH_SIZE, --batch_size BATCH_SIZE" in help_text
    assert "--weights-url WEIGHTS_URL, --weights_url WEIGHTS_URL" in help_text


def test_model_or_url_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _predict(IMAGES[0])
    assert exit_info.value.code == 2
    assert "--model" in capsys.readouterr().err


def version_2_available(status):
    return {s["version"]: s["state"] for s in status["model_version_status"]}.get("2") == "AVAILABLE"


@pytest.fixture(scope="module")
def served_url(model_base, tmp_path_factory):
    """`deeplab serve` of `model_base` as "deeplabv3" on a free local port once it serves version 2, running until
    the module ends."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with deeplab_serve(model_base, "deeplabv3", log_path, "--file_system_poll_wait_seconds", "0", timeout=120,
                       ready=version_2_available) as (url, _):
        yield url


def test_predict_through_a_tf_serving_rest_endpoint(served_url, tmp_path, capsys):
    for extra in ([], ["--version", 2]):  # the server serves the highest version (R // 64)
        out = tmp_path / str(len(extra))
        assert _predict(*IMAGES, "--url", served_url, "--out", out, "--batch_size", 2, *extra) == 0, \
            capsys.readouterr().err
        for image_path in IMAGES:
            labels = np.array(Image.open(out / f"{image_path.stem}_labels.png"))
            np.testing.assert_array_equal(labels, _red_channel_labels(image_path, 64))
            assert (out / f"{image_path.stem}_overlay.png").is_file()


def test_unreachable_url_or_unknown_model_or_version_gives_a_clear_error(served_url, tmp_path, capsys):
    assert _predict(IMAGES[0], "--url", f"http://127.0.0.1:{free_port()}", "--out", tmp_path) == 1
    assert "cannot reach the server" in capsys.readouterr().err
    assert _predict(IMAGES[0], "--url", served_url, "--model_name", "other", "--out", tmp_path) == 1
    assert "HTTP 404" in capsys.readouterr().err
    # Like TF Serving's default version policy, only the highest version is loaded.
    assert _predict(IMAGES[0], "--url", served_url, "--version", 1, "--out", tmp_path) == 1
    assert "Servable not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_predict_on_a_real_export_of_a_tiny_deeplabv3(tmp_path):
    import keras

    from keras_deeplab import DeepLabV3
    from keras_deeplab.export import export_saved_model

    keras.utils.set_random_seed(0)
    model = DeepLabV3(num_classes=12, backbone="mobilenet_v2", aspp_filters=32)
    # Untrained, its logits are ~1e-11 (ties everywhere); scale the classifier so that argmax is decisive.
    first = np.array(Image.open(IMAGES[0]).convert("RGB"))[None].astype(np.float32)
    scale = float(np.std(model(first, training=False)))
    classifier = model.get_layer("logits_conv")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel / scale, bias])
    base = tmp_path / "saved_models" / "deeplabv3"
    export_saved_model(model, base, check_images=IMAGES[:1])
    out = tmp_path / "out"
    assert _predict(*IMAGES, "--model", base, "--out", out, "--batch_size", 2) == 0
    for image_path in IMAGES:
        image = np.array(Image.open(image_path).convert("RGB"))
        logits = np.asarray(model(image[None].astype(np.float32), training=False))[0]
        top2 = np.sort(logits, axis=-1)[..., -2:]
        decided = top2[..., 1] - top2[..., 0] > 1e-4 * np.maximum(1.0, np.abs(top2[..., 1]))
        labels = np.array(Image.open(out / f"{image_path.stem}_labels.png"))
        assert labels.shape == image.shape[:2] and decided.mean() > 0.9
        np.testing.assert_array_equal(labels[decided], np.argmax(logits, axis=-1)[decided])
        overlay = Image.open(out / f"{image_path.stem}_overlay.png")
        assert overlay.height == image.shape[0] and overlay.width > image.shape[1]
