"""End to end: export a small DeepLabV3 -> `deeplab serve` on 127.0.0.1 (a subprocess) -> TFServingClient on CamVid
frames equals the in-process Keras model; TF Serving's REST formats, status codes and error bodies; 32 parallel
clients; a new version folder picked up without restart; the JSON codec's rules."""
import ast
import asyncio
import base64
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import keras_deeplab.serving
from keras_deeplab import export
from keras_deeplab.serving import TFServingClient, TFServingError
from keras_deeplab.serving import json_tensor
from helpers.serving_models import CAMVID_FILES, camvid_frames, camvid_pixels, keras_reference, png_bytes, tiny_deeplab

MAX_LONG_SIDE = 128
MAX_BODY_BYTES = 1_000_000
MODEL = "deeplabv3"


@pytest.fixture(scope="module")
def model():
    return tiny_deeplab()


@pytest.fixture(scope="module")
def base_dir(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models") / MODEL
    export.export_saved_model(model, base, max_long_side=MAX_LONG_SIDE, check_images=camvid_frames()[:1])
    return base


@pytest.fixture(scope="module")
def references(model):
    """{name: (pixels, labels, clear)} from the in-process Keras model: a CamVid file as stored (480x360), three
    frames at 160x120 and one at 80x60."""
    images = {f"frame{i}": pixels for i, pixels in enumerate(camvid_frames())}
    images["file"] = camvid_pixels(CAMVID_FILES[0], size=None)
    images["small"] = camvid_pixels(CAMVID_FILES[1], (80, 60))
    return {name: (pixels,) + keras_reference(model, pixels, MAX_LONG_SIDE) for name, pixels in images.items()}


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(base_dir, tmp_path_factory):
    """`deeplab serve` on a free 127.0.0.1 port, ready (model status answered), stopped at the end."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "keras_deeplab.cli", "serve", "--model_name", MODEL,
               "--model_base_path", str(base_dir), "--rest_api_port", str(port),
               "--max_body_bytes", str(MAX_BODY_BYTES), "--file_system_poll_wait_seconds", "0.5"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"deeplab serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models/{MODEL}", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"deeplab serve not ready after 240 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def predict_url(url, suffix=""):
    return f"{url}/v1/models/{MODEL}{suffix}:predict"


def b64(data):
    return base64.b64encode(data).decode("ascii")


def assert_labels(labels, reference):
    pixels, expected, clear = reference
    assert labels.shape == pixels.shape[:2]
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(labels[clear], expected[clear])


def test_client_predicts_camvid_like_the_in_process_model(server, references):
    url, _ = server
    with TFServingClient(url, MODEL, batch_size=3) as client:
        names = ["file", "frame1", "frame2", "small"]
        images = [CAMVID_FILES[0]] + [references[name][0] for name in names[1:]]  # a path, then arrays
        label_maps = client.predict(images)  # two requests of at most 3 images
    assert len(label_maps) == 4
    for labels, name in zip(label_maps, names):
        assert labels.dtype == np.int32
        assert_labels(labels, references[name])


def test_row_and_columnar_formats(server, references):
    url, _ = server
    pixels, _, _ = references["small"]
    image = {"b64": b64(png_bytes(pixels))}
    row = httpx.post(predict_url(url), json={"instances": [image]}, timeout=60)
    assert row.status_code == 200 and row.headers["content-type"] == "application/json"
    prediction = row.json()["predictions"][0]
    assert sorted(prediction) == ["image_size", "label_png_bytes", "labels"]
    labels = np.array(prediction["labels"])
    assert_labels(labels, references["small"])
    assert prediction["image_size"] == [60, 80]
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["label_png_bytes"]["b64"]))))
    np.testing.assert_array_equal(png, labels)

    for inputs in ({"image_bytes": [image]}, [image]):  # keyed by input name, or the single input's value
        columnar = httpx.post(predict_url(url), json={"inputs": inputs, "signature_name": "serving_default"},
                              timeout=60)
        assert columnar.status_code == 200
        outputs = columnar.json()["outputs"]
        assert sorted(outputs) == ["image_size", "label_png_bytes", "labels"]
        np.testing.assert_array_equal(outputs["labels"], [labels])


def test_predict_images_signature_with_uint8_instances(server, model):
    url, _ = server
    pixels = camvid_pixels(CAMVID_FILES[2], (40, 30))
    reply = httpx.post(predict_url(url), json={"signature_name": "predict_images", "instances": [pixels.tolist()]},
                       timeout=60)
    assert reply.status_code == 200, reply.text
    prediction = reply.json()["predictions"][0]
    logits = np.asarray(model.predict_on_batch(pixels[None].astype("float32")))[0]
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(prediction["probabilities"], softmax, atol=1e-5)
    assert_labels(np.array(prediction["labels"]), (pixels,) + keras_reference(model, pixels, MAX_LONG_SIDE))


def test_versions_path_status_and_metadata(server, references):
    url, _ = server
    assert httpx.get(f"{url}/v1/models/{MODEL}").json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert httpx.get(f"{url}/v1/models/{MODEL}/versions/1").json()["model_version_status"][0]["version"] == "1"
    with TFServingClient(url, MODEL, version=1) as client:
        assert_labels(client.predict(references["small"][0])[0], references["small"])
        metadata = client.metadata()
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    serving = signatures["serving_default"]
    assert serving["method_name"] == "tensorflow/serving/predict"
    assert serving["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert serving["inputs"]["image_bytes"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert sorted(serving["outputs"]) == ["image_size", "label_png_bytes", "labels"]
    assert signatures["predict_images"]["inputs"]["images"]["dtype"] == "DT_UINT8"


NOT_AN_IMAGE = {"instances": [{"b64": b64(b"this is not an image")}]}
URL_SAFE = {"instances": [{"b64": base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 4).decode()}]}  # has '-' and '_'
BAD_REQUESTS = [
    # (method, path suffix, body, status, text in the error)
    ("POST", ":predict", b"{not json", 400, "JSON Parse error"),
    ("POST", ":predict", b'{"instances": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, "JSON Parse error"),
    ("POST", ":predict", b"[1, 2]", 400, "must be a JSON object"),
    ("POST", ":predict", {"instances": [1], "inputs": [1]}, 400, "only one of 'inputs' or 'instances'"),
    ("POST", ":predict", {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances'"),
    ("POST", ":predict", {"inputs": {"images": [{"b64": "AAAA"}]}}, 400, "Missing named input: image_bytes"),
    ("POST", ":predict", {"instances": [{"image": {"b64": "AAAA"}}]}, 400, "does not have named input: image_bytes"),
    ("POST", ":predict", {"instances": [1.5]}, 400, "is not of expected type: string"),
    ("POST", ":predict", {"instances": [[[[1, 2, 3.5]]]], "signature_name": "predict_images"}, 400,
     "JSON Value: 3.5 Type: Number is not of expected type: uint8"),
    ("POST", ":predict", {"instances": [[[[1, 2, 3]]], [[[1, 2]]]], "signature_name": "predict_images"}, 400,
     "same shape"),
    ("POST", ":predict", {"instances": [[[[1, 2]]]], "signature_name": "predict_images"}, 400, "Input does not fit"),
    ("POST", ":predict", NOT_AN_IMAGE, 400, "Unknown image file format"),
    ("POST", ":predict", URL_SAFE, 400, "Unable to base64 decode"),
    ("POST", ":predict", {"instances": [{"b64": "AAAA"}], "signature_name": "nope"}, 400,
     'Serving signature name: "nope" not found'),
    ("POST", "/versions/9:predict", NOT_AN_IMAGE, 404, "Servable not found for request: Specific(deeplabv3, 9)"),
    ("GET", "/versions/9", None, 404, "Could not find version 9"),
    ("GET", "/versions/9/metadata", None, 404, "Servable not found"),
    ("DELETE", "", None, 400, "Malformed request: DELETE /v1/models/deeplabv3"),
    ("GET", ":predict", None, 400, "Malformed request: GET"),
    ("POST", "", b"{}", 400, "Malformed request: POST"),
    ("POST", "/versions/x:predict", b"{}", 400, "Malformed request"),
]


@pytest.mark.parametrize("method, suffix, body, status, text", BAD_REQUESTS,
                         ids=[f"{m}{s}-{t[:30]}" for m, s, _, _, t in BAD_REQUESTS])
def test_bad_requests_get_tf_serving_errors(server, method, suffix, body, status, text):
    url, process = server
    content = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    reply = httpx.request(method, f"{url}/v1/models/{MODEL}{suffix}", content=content, timeout=60)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert text in reply.json()["error"]
    assert process.poll() is None and httpx.get(f"{url}/v1/models/{MODEL}").status_code == 200


def test_unknown_model_and_bodies_over_the_limit(server, references):
    url, process = server
    reply = httpx.post(f"{url}/v1/models/nope:predict", json=NOT_AN_IMAGE)
    assert reply.status_code == 404 and "Servable not found for request: Latest(nope)" in reply.json()["error"]
    huge = {"instances": [{"b64": b64(os.urandom(MAX_BODY_BYTES))}]}
    reply = httpx.post(predict_url(url), json=huge, timeout=60)
    assert reply.status_code == 413 and "--max_body_bytes" in reply.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b" " * 65536

    reply = httpx.post(predict_url(url), content=chunks(), timeout=60)
    assert reply.status_code == 413
    assert process.poll() is None
    with TFServingClient(url, MODEL) as client:
        assert_labels(client.predict(references["small"][0])[0], references["small"])


def test_32_parallel_clients_get_correct_labels(server, references):
    url, _ = server
    names = ["frame0", "frame1", "frame2", "small"]

    def one_client(index):
        name = names[index % len(names)]
        with TFServingClient(url, MODEL, timeout=120) as client:
            return name, client.predict(references[name][0])[0]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one_client, range(32)))
    assert len(results) == 32
    for name, labels in results:
        assert_labels(labels, references[name])


def test_client_errors_carry_the_server_text(server):
    url, _ = server
    with pytest.raises(TFServingError, match="Latest\\(nope\\)") as caught:
        TFServingClient(url, "nope").status()
    assert caught.value.status_code == 404
    with pytest.raises(TFServingError, match="Unknown image file format") as caught:
        TFServingClient(url, MODEL).predict(b"not an image")
    assert caught.value.status_code == 400 and "Unknown image file format" in caught.value.message
    with pytest.raises(TFServingError, match="cannot reach") as caught:
        TFServingClient(f"http://127.0.0.1:{_free_port()}", MODEL, timeout=5).status()
    assert caught.value.status_code is None


def _wait_for_status(url, accept, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/v1/models/{MODEL}", timeout=10).json()
        states = {s["version"]: s for s in status["model_version_status"]}
        if accept(states):
            return states
        assert time.monotonic() < deadline, f"server status never changed as expected: {status}"
        time.sleep(0.5)


def test_new_version_folder_is_served_without_restart(server, base_dir, references):
    """Runs last in this module: it changes the served versions."""
    url, process = server
    staging = base_dir / ".2.copying"  # a non-numeric name is ignored, then one rename publishes it
    shutil.copytree(base_dir / "1", staging)
    staging.rename(base_dir / "2")
    states = _wait_for_status(url, lambda s: s.get("2", {}).get("state") == "AVAILABLE" and s["1"]["state"] == "END")
    assert states["2"]["status"]["error_code"] == "OK"
    assert httpx.post(predict_url(url, "/versions/1"), json=NOT_AN_IMAGE).status_code == 404  # latest-1 policy
    with TFServingClient(url, MODEL, version=2) as client:
        assert_labels(client.predict(references["small"][0])[0], references["small"])

    broken = base_dir / ".3.copying"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    broken.rename(base_dir / "3")
    states = _wait_for_status(url, lambda s: s.get("3", {}).get("state") == "END")
    assert states["3"]["status"]["error_code"] != "OK" and states["3"]["status"]["error_message"]
    assert states["2"]["state"] == "AVAILABLE"  # the good version keeps serving
    with TFServingClient(url, MODEL) as client:
        assert_labels(client.predict(references["small"][0])[0], references["small"])
    assert process.poll() is None


def test_model_config_file_serves_several_models_version_labels_and_deadlines(base_dir, references, tmp_path):
    """The app in-process (httpx's ASGI transport) with a models.config: two names for one folder, one pinned to
    version 1 with a label; a 1 ms deadline gives 504."""
    from keras_deeplab.serving.manager import ModelManager
    from keras_deeplab.serving.model_config import ModelConfig, read_models_config, write_models_config
    from keras_deeplab.serving.server import create_app

    folder = tmp_path / "deeplabv3"
    shutil.copytree(base_dir / "1", folder / "1")  # version 1 alone (another test adds versions to base_dir)
    config = write_models_config(tmp_path / "models.config", [
        ModelConfig("plain", str(folder)),
        ModelConfig("pinned", str(folder), versions=[1], version_labels={"stable": 1})])
    manager = ModelManager(read_models_config(config), warmup=False, poll_seconds=0)
    pixels = references["small"][0]
    body = {"instances": [{"b64": b64(png_bytes(pixels))}]}

    async def requests():
        transport = httpx.ASGITransport(app=create_app(manager, timeout_ms=1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            statuses = [await client.get(path) for path in
                        ("/v1/models/plain", "/v1/models/pinned/versions/1", "/v1/models/pinned/labels/stable")]
            return statuses, await client.get("/v1/models/pinned/labels/nope"), await client.post(
                "/v1/models/pinned/labels/stable:predict", json=body)

    manager.start()  # what the app's lifespan does under uvicorn
    try:
        statuses, unknown_label, too_slow = asyncio.run(requests())
        servable = manager.model("pinned").acquire(label="stable")
        try:
            labels = servable.run("serving_default", {"image_bytes": np.array([png_bytes(pixels)], object)})["labels"]
        finally:
            servable.release()
    finally:
        manager.stop()
    for reply in statuses:
        assert reply.status_code == 200 and reply.json()["model_version_status"][0]["state"] == "AVAILABLE"
    assert unknown_label.status_code == 404
    assert too_slow.status_code == 504, too_slow.text  # 1 ms is not enough for a 60x80 image
    assert_labels(labels[0], references["small"])


# ---- The JSON codec alone (no server) ----

def test_float_output_format_round_trips_with_few_digits():
    values = np.array([0.1, 1 / 3, 1.0, 1e-8, 123456.7, np.nan, np.inf, -np.inf], np.float32)
    text = json_tensor.encode_tensor(values)
    tokens = text.strip("[]").split(",")
    assert tokens[0] == "0.1" and tokens[2] == "1" and tokens[5:] == ["NaN", "Infinity", "-Infinity"]
    parsed = np.array(json.loads(text), np.float32)  # Python's json reads the bare NaN/Infinity tokens
    np.testing.assert_array_equal(parsed[:5], values[:5])
    assert math.isnan(parsed[5]) and parsed[6] == np.inf
    assert tokens[1] == "0.333333343"  # 6 digits would not round-trip 1/3 in float32; 9 always do


def test_string_outputs_are_b64_only_for_bytes_names_and_batches_must_agree():
    outputs = {"label_png_bytes": np.array([b"\x89PNG"], object), "name": np.array([b"road"], object),
               "size": np.array([[2, 3]], np.int32)}
    reply = json.loads(json_tensor.predict_response(outputs, row_format=True))
    assert reply == {"predictions": [{"label_png_bytes": {"b64": b64(b"\x89PNG")}, "name": "road", "size": [2, 3]}]}
    assert json.loads(json_tensor.predict_response({"x": np.array([1.5], np.float32)}, row_format=False)) == {
        "outputs": [1.5]}
    with pytest.raises(json_tensor.ServingError, match="inconsistent batch size"):
        json_tensor.predict_response({"a": np.zeros(2), "b": np.zeros(3)}, row_format=True)


@pytest.mark.parametrize("value, dtype, message", [
    ([1, 2.0], "DT_INT32", "JSON Value: 2.0 Type: Number is not of expected type: int32"),
    ([True], "DT_FLOAT", "Type: Bool is not of expected type: float"),
    ([300], "DT_UINT8", "out of range for type: uint8"),
    ([[1], [2, 3]], "DT_FLOAT", "same shape"),
    (["a", {"b64": "!!"}], "DT_STRING", "Unable to base64 decode"),
    ([{"b64": "AAAA"}], "DT_INT64", "Type: Object is not of expected type: int64"),
])
def test_json_values_are_checked_against_the_signature_dtype(value, dtype, message):
    with pytest.raises(json_tensor.ServingError, match=message.replace("(", "\\(")) as caught:
        json_tensor.to_array(value, dtype)
    assert caught.value.status == 400


def test_json_values_convert_to_the_signature_dtype():
    assert json_tensor.to_array([[1, 2]], "DT_FLOAT").dtype == np.float32
    assert json_tensor.to_array([255], "DT_UINT8").tolist() == [255]
    strings = json_tensor.to_array(["a", {"b64": b64(b"\x00\xff")}], "DT_STRING")
    assert strings.tolist() == [b"a", b"\x00\xff"]
    with pytest.raises(json_tensor.ServingError) as caught:
        json_tensor.request_tensors(json_tensor.parse_predict_body(b'{"inputs": [1]}'), {"x": "DT_HALF"})
    assert caught.value.status == 501


def test_serving_package_needs_only_the_savedmodel():
    """serving/ imports no model, layers, training or export code, and the client no TensorFlow."""
    folder = Path(keras_deeplab.serving.__file__).parent
    allowed_client = {"base64", "io", "os", "pathlib", "httpx", "numpy", "PIL"}
    for path in folder.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
        own = {name for name in imported if name.startswith("keras_deeplab")}
        assert all(name.startswith("keras_deeplab.serving") for name in own), (path.name, own)
        assert not any(name == "keras" or name.startswith("keras.") for name in imported), path.name
        if path.name == "client.py":
            assert {name.split(".")[0] for name in imported} <= allowed_client, imported
