"""Export: versioned atomic SavedModel, signatures run through the TF1 Session loader as TF Serving does, labels
against the Keras model, warmup records, XLA scan, models.config, CLI."""
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

import keras_deeplab
from keras_deeplab import export
from keras_deeplab.export import cli as export_cli, publish
from keras_deeplab.serving.contract import atomic_path
from keras_deeplab.serving.model_config import ModelConfig, read_models_config, write_models_config
from helpers.serving_models import (CAMVID_FILES, NUM_CLASSES, camvid_frames, camvid_pixels, keras_reference,
                                    png_bytes, tiny_deeplab)

MAX_LONG_SIDE = 128  # CamVid frames (480x360, 160x120) are shrunk to 128x96 for inference; 80x60 ones are not


def small_camvid():
    """An 80x60 CamVid frame (smaller than MAX_LONG_SIDE, so the model sees it whole)."""
    return camvid_pixels(CAMVID_FILES[1], (80, 60))


@pytest.fixture(scope="module")
def model():
    return tiny_deeplab()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models") / "deeplabv3"
    path = export.export_saved_model(model, base, max_long_side=MAX_LONG_SIDE,
                                     check_images=[CAMVID_FILES[0], small_camvid()],
                                     class_names=[f"class{i}" for i in range(NUM_CLASSES)], colormap="camvid")
    return base, path


@pytest.fixture(scope="module")
def session(exported):
    """The export loaded as TF Serving loads it: TF1 loader, tags serve, fresh graph, a Session."""
    graph = tf.Graph()
    sess = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exported[1]))
    yield sess, meta_graph.signature_def
    sess.close()


def run_signature(session, name, **inputs):
    sess, signatures = session
    signature = signatures[name]
    fetch = {key: info.name for key, info in signature.outputs.items()}
    return sess.run(fetch, {signature.inputs[key].name: value for key, value in inputs.items()})


def test_version_folder_is_complete_and_alone(exported):
    base, path = exported
    assert path == base / "1"
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # no staging folder left behind
    for name in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests"):
        assert (path / name).exists(), name
    info = json.loads((path / export.EXPORT_INFO_FILE).read_text())
    assert info["num_classes"] == NUM_CLASSES and info["max_long_side"] == MAX_LONG_SIDE
    assert info["colormap"] == "camvid" and len(info["class_names"]) == NUM_CLASSES
    assert export.next_version(base) == 2
    umask = os.umask(0)
    os.umask(umask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o777 & ~umask)


def test_signatures_have_tf_serving_names_dtypes_and_shapes(session):
    _, signatures = session

    def describe(infos):
        return {key: (tf.dtypes.as_dtype(info.dtype).name,
                      None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim])
                for key, info in infos.items()}

    serving = signatures["serving_default"]
    assert serving.method_name == "tensorflow/serving/predict"
    assert describe(serving.inputs) == {"image_bytes": ("string", [-1])}
    assert describe(serving.outputs) == {"labels": ("int32", [-1, -1, -1]), "label_png_bytes": ("string", [-1]),
                                         "image_size": ("int32", [-1, 2])}
    images = signatures["predict_images"]
    assert describe(images.inputs) == {"images": ("uint8", [-1, -1, -1, 3])}
    assert describe(images.outputs) == {"labels": ("int32", [-1, -1, -1]),
                                        "probabilities": ("float32", [-1, -1, -1, NUM_CLASSES])}


def test_serving_default_labels_equal_keras_argmax_for_mixed_sizes(session, model):
    big = camvid_frames()[2]  # 120x160: shrunk to 96x128 for the model
    small = small_camvid()  # 60x80: whole
    jpeg = io.BytesIO()
    Image.fromarray(big).save(jpeg, format="JPEG", quality=95)
    jpeg_pixels = tf.io.decode_jpeg(jpeg.getvalue(), channels=3).numpy()
    batch = np.array([png_bytes(small), png_bytes(big), jpeg.getvalue()], dtype=object)
    out = run_signature(session, "serving_default", image_bytes=batch)

    assert out["labels"].shape == (3, 120, 160)
    np.testing.assert_array_equal(out["image_size"], [[60, 80], [120, 160], [120, 160]])
    for index, pixels in enumerate([small, big, jpeg_pixels]):
        height, width = pixels.shape[:2]
        expected, clear = keras_reference(model, pixels, MAX_LONG_SIDE)
        labels = out["labels"][index, :height, :width]
        np.testing.assert_array_equal(labels[clear], expected[clear])
        assert clear.mean() > 0.99
        png = np.asarray(Image.open(io.BytesIO(out["label_png_bytes"][index])))
        np.testing.assert_array_equal(png, labels)
    assert (out["labels"][0, 60:, :] == export.PAD_LABEL).all() and (out["labels"][0, :, 80:] == 255).all()
    assert len(np.unique(out["labels"][1])) > 1  # a real label map, not a constant


def test_predict_images_labels_and_probabilities(session, model):
    images = np.stack(camvid_frames()[:2])
    out = run_signature(session, "predict_images", images=images)
    assert out["labels"].shape == (2, 120, 160) and out["probabilities"].shape == (2, 120, 160, NUM_CLASSES)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    for index in range(2):
        expected, clear = keras_reference(model, images[index], MAX_LONG_SIDE)
        np.testing.assert_array_equal(out["labels"][index][clear], expected[clear])
        np.testing.assert_array_equal(out["probabilities"][index].argmax(-1)[clear], expected[clear])


def test_non_image_bytes_are_invalid_argument_and_session_survives(session):
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        run_signature(session, "serving_default", image_bytes=np.array([b"not an image at all"], dtype=object))
    out = run_signature(session, "serving_default", image_bytes=np.array([png_bytes(small_camvid())], dtype=object))
    assert out["labels"].shape == (1, 60, 80)


def test_warmup_records_are_predict_logs_that_run(exported, session):
    path = exported[1] / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r)
            for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["serving_default", "predict_images"]
    assert {log.predict_log.request.model_spec.name for log in logs} == {"deeplabv3"}
    for log in logs:
        request = log.predict_log.request
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        out = run_signature(session, request.model_spec.signature_name, **inputs)
        assert out["labels"].ndim == 3


def test_verify_checks_everything_and_catches_wrong_labels(exported, model, tmp_path):
    data, pixels = export.encoded_image(camvid_frames()[0])
    labels, ties = export.reference_labels(model, pixels, MAX_LONG_SIDE)
    wrong = (labels + 1) % NUM_CLASSES
    reference = tmp_path / "reference.npz"
    np.savez(reference, count=1, bytes_0=np.frombuffer(data, np.uint8), pixels_0=pixels, labels_0=wrong, ties_0=ties)
    report = export.verify_saved_model(exported[1], reference)
    assert report["warmup_records"] == 2 and report["checked_images"] == 1
    assert sorted(p.split(" labels of")[0] for p in report["problems"]) == ["predict_images", "serving_default"]
    assert all("differs from the Keras model's argmax" in p for p in report["problems"])


def test_checks_default_to_the_real_images_shipped_with_the_package(exported, model):
    images = export.sample_images()
    sizes = [export.encoded_image(data)[1].shape for data in images]
    assert sizes == [(120, 160, 3), (128, 96, 3)]  # landscape JPEG and portrait PNG: padding in both directions
    assert images[0][:2] == b"\xff\xd8" and images[1][:8] == b"\x89PNG\r\n\x1a\n"
    folder = Path(keras_deeplab.__file__).parent / export.SAMPLE_IMAGES_FOLDER
    assert "NON-COMMERCIAL" in (folder / "SOURCE.md").read_text()
    assert sorted(p.name for p in folder.iterdir()) == sorted(export.SAMPLE_IMAGES + ("SOURCE.md",))
    pixels = export.encoded_image(images[0])[1]
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # a photo, not a gradient
    report = export.check_export(exported[1], model, MAX_LONG_SIDE)  # no images given
    assert report["problems"] == [] and report["checked_images"] == 2
    # The warmup defaults to the first shipped image (the fixture gave no warmup_images).
    path = exported[1] / export.WARMUP_FILE
    first = prediction_log_pb2.PredictionLog.FromString(next(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()))
    assert tf.make_ndarray(first.predict_log.request.inputs["image_bytes"]).tolist() == [images[0]]


def test_package_data_lists_the_shipped_images():
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["keras_deeplab"]
    folder = Path(keras_deeplab.__file__).parent
    for name in export.SAMPLE_IMAGES + ("SOURCE.md",):
        path = f"{export.SAMPLE_IMAGES_FOLDER}/{name}"
        assert any(Path(path).match(pattern) for pattern in patterns), path
        assert (folder / path).stat().st_size < 64 * 1024


def _rewrite_signature_defs(version_dir, edit):
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(version_dir) / "saved_model.pb"
    proto = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    edit(proto.meta_graphs[0].signature_def)
    path.write_bytes(proto.SerializeToString())


def test_verify_checks_signature_shapes_and_method_names(exported, tmp_path):
    import shutil

    assert export.verify_saved_model(exported[1])["problems"] == []
    broken = tmp_path / "1"
    shutil.copytree(exported[1], broken)

    def edit(signatures):
        signatures["predict_images"].method_name = "tensorflow/serving/classify"
        signatures["serving_default"].outputs["image_size"].tensor_shape.dim[1].size = 3
        signatures["serving_default"].inputs["image_bytes"].tensor_shape.unknown_rank = True
        signatures["predict_images"].outputs["probabilities"].tensor_shape.dim[3].size = NUM_CLASSES + 1

    _rewrite_signature_defs(broken, edit)
    problems = export.verify_saved_model(broken)["problems"]
    assert sorted(problems) == sorted([
        "signature predict_images has method_name 'tensorflow/serving/classify', expected "
        "'tensorflow/serving/predict'",
        "signature serving_default output image_size has shape [-1, 3], expected [-1, 2]",
        "signature serving_default input image_bytes has shape unknown rank, expected [-1]",
        f"signature predict_images output probabilities has shape [-1, -1, -1, {NUM_CLASSES + 1}], expected "
        f"[-1, -1, -1, {NUM_CLASSES}]",
    ])


def test_export_serves_the_model_with_batch_norm_folded(exported, session):
    """BatchNorm is folded into the convolutions (the labels tests above compare with the unfolded model):
    the served graph computes no normalization (no Rsqrt of a variance), and the export info says so."""
    info = json.loads((exported[1] / export.EXPORT_INFO_FILE).read_text())
    assert info["batch_norm_folded"] is True
    graph_def = session[0].graph.as_graph_def()
    op_types = {node.op for node in graph_def.node}
    op_types |= {node.op for function in graph_def.library.function for node in function.node_def}
    assert "Conv2D" in op_types and not op_types & {"Rsqrt", "FusedBatchNormV3"}


def test_xla_scan_finds_jit_compiled_functions(session):
    @tf.function(jit_compile=True)
    def compiled(x):
        return x * 2.0

    @tf.function
    def outer(x):
        return compiled(x) + 1.0

    graph_def = outer.get_concrete_function(tf.TensorSpec([None], tf.float32)).graph.as_graph_def()
    assert any("_XlaMustCompile" in item for item in export.find_xla_ops(graph_def))
    sess, _ = session
    assert export.find_xla_ops(sess.graph.as_graph_def()) == []


def test_refuses_existing_version_and_failed_export_leaves_nothing(exported, model, monkeypatch):
    base, path = exported
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    with pytest.raises(FileExistsError, match="already exists"):
        export.export_saved_model(model, base, version=1)

    class PartialArchive:  # writes part of a SavedModel, then the checks fail
        def write_out(self, folder, verbose=True):
            Path(folder, "saved_model.pb").write_bytes(b"half written")

    def failing_check(*args, **kwargs):
        raise export.ExportCheckError("injected failure")

    monkeypatch.setattr(publish, "build_export_archive", lambda model, max_long_side: (PartialArchive(), NUM_CLASSES))
    monkeypatch.setattr(publish, "check_export", failing_check)
    for version, overwrite in ((None, False), (1, True)):
        with pytest.raises(export.ExportCheckError, match="injected"):
            export.export_saved_model(model, base, version=version, overwrite=overwrite)
        assert sorted(p.name for p in base.iterdir()) == ["1"]
        assert sorted(p.relative_to(path) for p in path.rglob("*")) == before


def test_publish_replaces_an_old_version_only_when_allowed(tmp_path):
    base = tmp_path / "model"
    (base / "3").mkdir(parents=True)
    (base / "3" / "old").write_text("old")
    for content in ("new", "newer"):
        if content == "new":
            with pytest.raises(FileExistsError), atomic_path(base / "3", folder=True, overwrite=False) as staging:
                (staging / "new").write_text(content)
            assert (base / "3" / "old").exists() and sorted(p.name for p in base.iterdir()) == ["3"]
        with atomic_path(base / "3", folder=True) as staging:
            assert staging.name.startswith(".3.partial-")  # not a version while it is written
            (staging / "new").write_text(content)
        assert sorted(p.name for p in base.iterdir()) == ["3"]
        assert (base / "3" / "new").read_text() == content


def test_inference_size_policy():
    assert export.inference_size(120, 160, None) == (120, 160)
    assert export.inference_size(120, 160, 160) == (120, 160)
    assert export.inference_size(120, 160, 128) == (96, 128)
    assert export.inference_size(2000, 1000, 513) == (513, 257)  # 256.5 rounds up
    assert export.inference_size(1000, 1, 10) == (10, 1)  # never below one pixel
    assert export.inference_size(60, 80, 128) == (60, 80)  # small images are not enlarged


def test_models_config_round_trip(tmp_path):
    path = tmp_path / "models.config"
    models = [ModelConfig("deeplabv3", "/models/deeplabv3"),
              {"name": "deeplabv3_os8", "base_path": "/models/os8", "versions": [2, 1],
               "version_labels": {"stable": 1}},
              ModelConfig("all_versions", "/models/all", versions="all")]
    write_models_config(path, models)
    proto = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    configs = proto.model_config_list.config
    assert [c.name for c in configs] == ["deeplabv3", "deeplabv3_os8", "all_versions"]
    assert all(c.model_platform == "tensorflow" for c in configs)
    assert list(configs[1].model_version_policy.specific.versions) == [1, 2]
    assert dict(configs[1].version_labels) == {"stable": 1}
    assert configs[2].model_version_policy.WhichOneof("policy_choice") == "all"
    read = read_models_config(path)
    assert [(m.name, m.base_path, m.versions) for m in read] == [
        ("deeplabv3", "/models/deeplabv3", None), ("deeplabv3_os8", "/models/os8", (1, 2)),
        ("all_versions", "/models/all", "all")]
    assert read[1].select([1, 2, 3]) == [1, 2] and read[0].select([1, 2, 3]) == [3]
    with pytest.raises(ValueError, match="unique"):
        write_models_config(path, [models[0], models[0]])


def test_cli_loads_the_keras_file_and_merges_models_config(model, tmp_path, monkeypatch, capsys):
    model_file = tmp_path / "model.keras"
    model.save(model_file)
    calls = []

    def fake_export(loaded, base_dir, version, **kwargs):
        calls.append((loaded, base_dir, version, kwargs))
        return Path(base_dir) / "7"

    monkeypatch.setattr(export_cli, "export_saved_model", fake_export)
    config = tmp_path / "models.config"
    write_models_config(config, [ModelConfig("other", "/models/other")])
    frames = [str(path) for path in CAMVID_FILES[:2]]
    assert export.main(["--model", str(model_file), "--base-dir", str(tmp_path / "deeplabv3"), "--version", "7",
                        "--max-long-side", "256", "--models-config", str(config), "--check-images", *frames]) == 0
    loaded, base_dir, version, kwargs = calls[0]
    assert isinstance(loaded, keras_deeplab.DeepLabV3) and version == 7 and kwargs["max_long_side"] == 256
    assert kwargs["check_images"] == frames and kwargs["warmup_images"] is None
    for mine, theirs in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    assert [(m.name, m.base_path) for m in read_models_config(config)] == [
        ("other", "/models/other"), ("deeplabv3", "/models/deeplabv3")]
    with pytest.raises(SystemExit):
        export.main(["--model", str(tmp_path / "missing.keras")])
    with pytest.raises(SystemExit, match="--check-images .*nope.png is not a file"):
        export.main(["--model", str(model_file), "--check_images", frames[0], str(tmp_path / "nope.png")])
    export.main(["--model", str(model_file), "--base_dir", str(tmp_path / "deeplabv3")])
    assert calls[-1][3]["check_images"] is None  # export_saved_model then checks on the shipped real images

    def refusing_export(*args, **kwargs):
        raise FileExistsError("deeplabv3/7 already exists")

    monkeypatch.setattr(export_cli, "export_saved_model", refusing_export)
    assert export.main(["--model", str(model_file), "--version", "7"]) == 1
    assert "deeplabv3/7 already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export.main(["--help"])
    assert "--base-dir BASE_DIR, --base_dir BASE_DIR" in capsys.readouterr().out  # dashes first, underscores too
