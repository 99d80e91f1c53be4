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
from keras_deeplab.serving import images, json_tensor
from helpers.model_server import deeplab_serve, free_port
from helpers.serving_models import (CAMVID_FILES, camvid_frames, camvid_pixels, keras_reference, png_bytes,
                                    png_declaring, tiny_deeplab)

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


@pytest.fixture(scope="module")
def server(base_dir, tmp_path_factory):
    """`deeplab serve` on a free 127.0.0.1 port, ready (model status answered), stopped at the end."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with deeplab_serve(base_dir, MODEL, log_path, "--max_body_bytes", str(MAX_BODY_BYTES),
                       "--file_system_poll_wait_seconds", "0.5") as running:
        yield running


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


PNG_BOMB = png_declaring(10000, 10000)  # 1e8 pixels: 300 MB decoded, more than the default 64 megapixels
NOT_AN_IMAGE = {"instances": [{"b64": b64(b"this is not an image")}]}
URL_SAFE = {"instances": [{"b64": base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 4).decode()}]}  # has '-' and '_'
BAD_REQUESTS = [
    # (method, path suffix, body, status, text in the error)
    ("POST", ":predict", b"{not json", 400, "JSON Parse error"),
    ("POST", ":predict", b'{"instances": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, "JSON Parse error"),
    ("POST", ":predict", b"[1, 2]", 400, "Is not object"),  # TF Serving util/json_tensor.cc ParseJson
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
    ("POST", ":predict", {"instances": [[[[1, 2, True]]]], "signature_name": "predict_images"}, 400,
     "JSON Value: true Type: Bool is not of expected type: uint8"),
    ("POST", ":predict", {"instances": [{"b64": b64(PNG_BOMB)}]}, 400,
     "Image too large: input image_bytes item 0 is a PNG image of 10000x10000 = 100000000 pixels, more than the "
     "server's --max_image_pixels 67108864"),
    # Unknown versions and labels: the contract's wording for versions, TF Serving's for labels.
    ("POST", "/versions/9:predict", NOT_AN_IMAGE, 404, "Servable not found for request: Specific(deeplabv3, 9)"),
    ("GET", "/versions/9", None, 404, "Servable not found for request: Specific(deeplabv3, 9)"),
    ("GET", "/versions/9/metadata", None, 404, "Servable not found for request: Specific(deeplabv3, 9)"),
    ("GET", "/labels/nope", None, 400, "Unrecognized servable version label: nope"),
    ("GET", "/labels/nope/metadata", None, 400, "Unrecognized servable version label: nope"),
    ("POST", "/labels/nope:predict", NOT_AN_IMAGE, 400, "Unrecognized servable version label: nope"),
    # Methods and paths the API does not have: 400 JSON, whatever the method.
    ("DELETE", "", None, 400, "Malformed request: DELETE /v1/models/deeplabv3"),
    ("PUT", ":predict", b"{}", 400, "Malformed request: PUT /v1/models/deeplabv3:predict"),
    ("PATCH", "/metadata", b"{}", 400, "Malformed request: PATCH /v1/models/deeplabv3/metadata"),
    ("OPTIONS", "", None, 400, "Malformed request: OPTIONS /v1/models/deeplabv3"),
    ("TRACE", "", None, 400, "Malformed request: TRACE /v1/models/deeplabv3"),
    ("PROPFIND", "/versions/1", None, 400, "Malformed request: PROPFIND /v1/models/deeplabv3/versions/1"),
    ("GET", ":predict", None, 400, "Malformed request: GET"),
    ("POST", "", b"{}", 400, "Malformed request: POST"),
    ("POST", "/metadata", b"{}", 400, "Malformed request: POST /v1/models/deeplabv3/metadata"),
    ("POST", "/versions/x:predict", b"{}", 400, "Malformed request"),
    ("GET", "/versions/1/labels/a", None, 400, "Malformed request"),
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
    for method, suffix, status, error in (
            ("POST", ":predict", 404, "Servable not found for request: Latest(nope)"),
            ("GET", "", 404, "Servable not found for request: Latest(nope)"),
            ("GET", "/metadata", 404, "Servable not found for request: Latest(nope)"),
            ("GET", "/versions/3", 404, "Servable not found for request: Specific(nope, 3)"),
            ("POST", "/versions/3:predict", 404, "Servable not found for request: Specific(nope, 3)"),
            # The method and path are checked before the model is looked up.
            ("DELETE", "", 400, "Malformed request: DELETE /v1/models/nope"),
            ("TRACE", "/versions/3", 400, "Malformed request: TRACE /v1/models/nope/versions/3")):
        reply = httpx.request(method, f"{url}/v1/models/nope{suffix}", json=NOT_AN_IMAGE if method == "POST" else None)
        assert reply.status_code == status and reply.headers["content-type"] == "application/json", (method, suffix)
        assert reply.json() == {"error": error}
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
        TFServingClient(f"http://127.0.0.1:{free_port()}", MODEL, timeout=5).status()
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
    assert unknown_label.status_code == 400
    assert unknown_label.json() == {"error": "Unrecognized servable version label: nope"}
    assert too_slow.status_code == 504, too_slow.text  # 1 ms is not enough for a 60x80 image
    assert_labels(labels[0], references["small"])


def test_model_config_file_is_re_read(base_dir, tmp_path):
    """--model_config_file_poll_wait_seconds: a model added with a label, then removed, while serving."""
    from keras_deeplab.serving.manager import ModelManager
    from keras_deeplab.serving.model_config import ModelConfig, read_models_config, write_models_config

    folder = tmp_path / "deeplabv3"
    shutil.copytree(base_dir / "1", folder / "1")
    path = tmp_path / "models.config"
    write_models_config(path, [ModelConfig("first", str(folder))])
    manager = ModelManager(read_models_config(path), warmup=False, poll_seconds=0,
                           config_reader=lambda: read_models_config(path), config_poll_seconds=3600)
    manager.start()
    try:
        assert manager.reload_config() is False  # unchanged
        write_models_config(path, [ModelConfig("first", str(folder), version_labels={"stable": 1}),
                                   ModelConfig("second", str(folder))])
        first = manager.model("first")
        assert manager.reload_config() is True
        manager.poll()
        assert manager.model("first") is first  # same base path: kept loaded, new labels apply
        assert first.status(label="stable")["model_version_status"][0]["state"] == "AVAILABLE"
        assert manager.model("second").status()["model_version_status"][0]["state"] == "AVAILABLE"
        path.write_text("not a models.config {")
        assert manager.reload_config() is False and sorted(manager.models) == ["first", "second"]
        write_models_config(path, [ModelConfig("second", str(folder))])
        assert manager.reload_config() is True
        with pytest.raises(json_tensor.ServingError, match=r"Servable not found for request: Latest\(first\)"):
            manager.model("first")
        with pytest.raises(json_tensor.ServingError, match="Latest\\(first\\)"):
            first.acquire()  # unloaded
    finally:
        manager.stop()


class _FakeServable:
    """Stands in for a loaded version (no TensorFlow): one DT_STRING input; `run` does what it is told."""

    version = 1
    signature_defs = {}

    version = 1

    def __init__(self, run):
        self._run = run

    def input_dtypes(self, signature_name):
        return {"image_bytes": "DT_STRING"}

    def run(self, signature_name, inputs, timeout_ms=None):
        return self._run(inputs)

    def release(self):
        pass


class _FakeManager:
    def __init__(self, run):
        from keras_deeplab.serving.manager import servable_not_found

        self.looked_up = []
        self._servable = _FakeServable(run)
        self._not_found = servable_not_found

    def start(self):
        pass

    def stop(self):
        pass

    def model(self, name, version=None):
        self.looked_up.append(name)
        if name != MODEL:
            raise self._not_found(name, version)
        return self

    def acquire(self, version=None, label=None):
        return self._servable


def _asgi_requests(manager, requests, **app_options):
    from keras_deeplab.serving.server import create_app

    async def run():
        transport = httpx.ASGITransport(app=create_app(manager, **app_options))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.request(method, path, content=content) for method, path, content in requests]

    return asyncio.run(run())


def test_out_of_memory_is_429_and_methods_are_checked_before_models():
    def out_of_memory(inputs):
        raise MemoryError()

    manager = _FakeManager(out_of_memory)
    body = json.dumps({"instances": [{"b64": b64(b"x")}]}).encode()
    replies = _asgi_requests(manager, [("POST", f"/v1/models/{MODEL}:predict", body),
                                       ("DELETE", "/v1/models/nope", None),
                                       ("SEARCH", "/v1/models/nope/versions/2", None),
                                       ("GET", "/v1/models/nope", None)])
    assert [r.status_code for r in replies] == [429, 400, 400, 404]
    assert all(r.headers["content-type"] == "application/json" for r in replies)
    assert replies[0].json() == {"error": "Resource exhausted: out of memory while serving the request"}
    assert replies[1].json() == {"error": "Malformed request: DELETE /v1/models/nope"}
    assert replies[3].json() == {"error": "Servable not found for request: Latest(nope)"}
    assert manager.looked_up == [MODEL, "nope"]  # the malformed requests never looked the model up


def test_routes_answer_like_tf_serving():
    """HEAD, a trailing slash or a path below an operation is a malformed request under /v1/; elsewhere 404."""
    manager = _FakeManager(lambda inputs: {})
    replies = _asgi_requests(manager, [("HEAD", f"/v1/models/{MODEL}", None),
                                       ("GET", f"/v1/models/{MODEL}/", None),
                                       ("GET", f"/v1/models/{MODEL}/metadata/x", None),
                                       ("GET", "/v1/models", None),
                                       ("POST", f"/v1/models/{MODEL}:classify", b"{}"),
                                       ("GET", "/healthz", None)])
    assert [r.status_code for r in replies] == [400, 400, 400, 400, 400, 404]
    assert replies[1].json() == {"error": f"Malformed request: GET /v1/models/{MODEL}/"}
    assert replies[4].json()["error"].startswith("classify is not supported")
    assert replies[5].json() == {"error": "Not found: GET /healthz (the REST API lives under /v1/models/)"}
    assert manager.looked_up == [MODEL]  # only :classify names an operation of the API


def test_max_image_pixels_is_configurable():
    ran = []
    manager = _FakeManager(lambda inputs: ran.append(inputs) or {"labels": np.zeros((1, 2), np.int32)})
    small = png_declaring(100, 50)  # 5000 pixels
    body = json.dumps({"instances": [{"b64": b64(png_bytes(np.zeros((2, 2, 3), np.uint8)))},
                                     {"b64": b64(small)}]}).encode()
    too_many, unlimited = (_asgi_requests(manager, [("POST", f"/v1/models/{MODEL}:predict", body)],
                                          max_image_pixels=limit)[0] for limit in (4999, 0))
    assert too_many.status_code == 400 and len(ran) == 1  # only the unlimited request reached the servable
    assert too_many.json()["error"] == ("Image too large: input image_bytes item 1 is a PNG image of 100x50 = 5000 "
                                        "pixels, more than the server's --max_image_pixels 4999; send a smaller image")
    assert unlimited.status_code == 200 and len(ran[0]["image_bytes"]) == 2


def test_serve_flags_follow_tensorflow_model_server():
    from keras_deeplab.serving.server import compatibility_notes, parse_args

    args = parse_args(["--model_base_path", "m"])
    assert args.model_name == "default"  # tensorflow_model_server's default
    assert args.enable_model_warmup is True and args.enable_batching is False and args.port is None
    assert args.max_image_pixels == 64 * 1024 * 1024 and args.model_config_file_poll_wait_seconds == 0
    assert compatibility_notes(args) == []
    for argv, expected in ((["--enable_model_warmup"], True), (["--enable_model_warmup=false"], False),
                           (["--enable_model_warmup=0"], False), (["--enable_model_warmup", "true"], True),
                           (["--enable_model_warmup=FALSE"], False)):
        assert parse_args(["--model_base_path=m", *argv]).enable_model_warmup is expected, argv
    args = parse_args(["--model_name=deeplabv3", "--model_base_path=m", "--port=8500", "--rest_api_port=9001",
                       "--enable_batching", "--file_system_poll_wait_seconds=2", "--max_image_pixels=1000",
                       "--enable_model_warmup=false"])
    assert (args.model_name, args.port, args.rest_api_port, args.enable_batching, args.enable_model_warmup,
            args.file_system_poll_wait_seconds, args.max_image_pixels) == ("deeplabv3", 8500, 9001, True, False,
                                                                           2.0, 1000)
    notes = compatibility_notes(args)
    assert not any("gRPC" in note for note in notes)  # --port serves gRPC
    assert any("gRPC is not served" in note for note in compatibility_notes(parse_args(["--model_base_path=m",
                                                                                       "--port=0"])))
    assert args.batching is not None and args.batching.max_batch_size == 1000  # TF Serving's default parameters
    assert parse_args(["--model_config_file=c", "--model_config_file_poll_wait_seconds=30"]
                      ).model_config_file_poll_wait_seconds == 30
    dashed = parse_args(["--model-base-path", "m", "--rest-api-port=9003", "--enable-model-warmup=false"])
    assert (dashed.model_base_path, dashed.rest_api_port, dashed.enable_model_warmup) == ("m", 9003, False)
    for argv in (["--model_base_path=m", "--enable_batching=maybe"], ["--model_base_path=m", "--port=x"],
                 ["--model_base_path=m", "--model_config_file=c"], [],
                 ["--model_base_path=m", "--batching_parameters_file=/no/such/file"],
                 ["--model_base_path=m", "--max_image_pixels=-1"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_serve_logs_the_flags_it_does_not_act_on(base_dir, tmp_path, monkeypatch, caplog):
    import uvicorn

    from keras_deeplab.serving import server

    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 }\npad_variable_length_inputs: true\n")
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(kwargs))
    with caplog.at_level("WARNING", logger="keras_deeplab.serving"):
        assert server.main(["--model_base_path", str(base_dir), "--port", "0", "--enable_batching",
                            f"--batching_parameters_file={batching}", "--rest_api_port=9002"]) == 0
    assert started[0]["port"] == 9002
    assert "gRPC is not served" in caplog.text and "pad_variable_length_inputs: accepted, no effect" in caplog.text
    assert "serving default at" in caplog.text


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
    # JSON bools and numbers never mix (numpy alone would read [1, true] as [1, 1])
    ([1, True], "DT_INT32", "JSON Value: true Type: Bool is not of expected type: int32"),
    ([[0.5], [False]], "DT_FLOAT", "JSON Value: false Type: Bool is not of expected type: float"),
    ([[[1, 2, 3]], [[4, 5, True]]], "DT_UINT8", "JSON Value: true Type: Bool is not of expected type: uint8"),
    (True, "DT_DOUBLE", "JSON Value: true Type: Bool is not of expected type: double"),
    ([True, 0], "DT_BOOL", "JSON Value: 0 Type: Number is not of expected type: bool"),
    ([False, 1.5], "DT_BOOL", "JSON Value: 1.5 Type: Number is not of expected type: bool"),
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


def test_out_of_memory_in_the_codec_is_429(monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(json_tensor.json, "loads", no_memory)
    with pytest.raises(json_tensor.ServingError, match="out of memory while parsing the request") as caught:
        json_tensor.parse_predict_body(b'{"instances": [1]}')
    assert caught.value.status == 429
    monkeypatch.setattr(json_tensor, "_encode_items", no_memory)
    with pytest.raises(json_tensor.ServingError, match="out of memory while encoding the response") as caught:
        json_tensor.predict_response({"x": np.zeros(2)}, row_format=True)
    assert caught.value.status == 429


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, for 1e8 pixels: it is measured
def test_image_dimensions_read_from_headers():
    def encoded(image, format, **options):
        buffer = io.BytesIO()
        image.save(buffer, format=format, **options)
        return buffer.getvalue()

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 41, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(41, dtype=np.uint8) * 6, (30, 1))))  # transparency: VP8X
    cases = {("PNG", ()): encoded(rgb, "PNG"), ("JPEG", ()): encoded(rgb, "JPEG"),
             ("JPEG", ("progressive", "exif")): encoded(rgb, "JPEG", progressive=True, exif=b"Exif\0\0" + b"x" * 300),
             ("GIF", ()): encoded(rgb, "GIF"), ("BMP", ()): encoded(rgb, "BMP"),
             ("WEBP", ("lossy",)): encoded(rgb, "WEBP"), ("WEBP", ("lossless",)): encoded(rgb, "WEBP", lossless=True),
             ("WEBP", ("alpha", "VP8X")): encoded(rgba, "WEBP")}
    assert cases["WEBP", ("alpha", "VP8X")][12:16] == b"VP8X"
    for (kind, _), data in cases.items():
        assert images.image_dimensions(data) == (kind, 41, 30), kind
    assert images.image_dimensions(PNG_BOMB) == ("PNG", 10000, 10000)
    for data in (b"not an image", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF....WEBPVP8 ", b""):
        assert images.image_dimensions(data) is None, data
    inputs = {"image_bytes": np.array([cases["PNG", ()], b"text", PNG_BOMB], object),
              "other": np.zeros((2, 2), np.float32)}
    headers = json_tensor.image_headers(inputs)
    with pytest.raises(json_tensor.ServingError, match="item 2 is a PNG image of 10000x10000") as caught:
        json_tensor.check_image_pixels(headers, json_tensor.DEFAULT_MAX_IMAGE_PIXELS)
    assert caught.value.status == 400
    json_tensor.check_image_pixels(headers, 0)  # no limit
    json_tensor.check_image_pixels(headers, 10**8)  # exactly at the limit is allowed
    # Past Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS) the header is not measured: refused.
    with pytest.raises(json_tensor.ServingError, match="item 0 declares more pixels than Pillow's") as caught:
        json_tensor.image_headers({"image_bytes": np.array([png_declaring(20000, 20000)], object)})
    assert caught.value.status == 400


def test_serving_package_needs_only_the_savedmodel():
    """serving/ imports no model, layers, training or export code (only itself and `viz`, the colormaps, which
    imports nothing of the package), and the client (with the serving modules it imports: the contract, the image
    codec) nothing but httpx, numpy, Pillow and the standard library."""
    def imports_of(path):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module == "keras_deeplab":
                imported.update(f"keras_deeplab.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
        return imported

    folder = Path(keras_deeplab.serving.__file__).parent
    assert not any(name.startswith("keras") for name in imports_of(folder.parent / "viz.py"))
    imports = {}
    for path in folder.glob("*.py"):
        imported = imports_of(path)
        own = {name for name in imported if name.startswith("keras_deeplab")}
        assert all(name.startswith("keras_deeplab.serving") or name == "keras_deeplab.viz" for name in own), (
            path.name, own)
        assert not any(name == "keras" or name.startswith("keras.") for name in imported), path.name
        imports[path.stem] = imported
    allowed = set(sys.stdlib_module_names) | {"httpx", "numpy", "PIL"}
    needed, pending = set(), ["client"]
    while pending:  # the client and the serving modules it imports, transitively
        module = pending.pop()
        needed.add(module)
        for name in imports[module]:
            if name.startswith("keras_deeplab.serving."):
                pending += {name.rsplit(".", 1)[1]} - needed
            else:
                assert name.split(".")[0] in allowed, (module, name)
    assert needed == {"client", "contract", "images"}


def test_the_padding_label_is_the_ignore_label_pictures_leave_uncoloured():
    from keras_deeplab import viz
    from keras_deeplab.serving import contract

    assert contract.PAD_LABEL == viz.IGNORE_LABEL
