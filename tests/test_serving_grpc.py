"""`deeplab serve --port`: TF Serving's gRPC API, called as a TF Serving user does (the official generated stubs of
tensorflow-serving-api, `tf.make_tensor_proto`), against the REST API of the same server as the reference: the
same labels for every shipped sample image on both signatures, metadata, status, TF Serving's status codes and
messages, and the message-size limit of `--grpc_channel_arguments`."""
import base64
import io
import socket
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from PIL import Image
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

import keras_deeplab
from keras_deeplab import export
from keras_deeplab.serving.grpc_server import create_grpc_server, parse_channel_arguments
from helpers.model_server import deeplab_serve, free_port
from helpers.serving_models import CAMVID_FILES, camvid_frames, png_bytes, tiny_deeplab

MODEL = "deeplabv3"
MAX_LONG_SIDE = 128
MAX_MESSAGE_BYTES = 2_000_000
SAMPLE_IMAGES = sorted(p for p in (Path(keras_deeplab.__file__).parent / "sample_images").iterdir()
                       if p.suffix in (".jpg", ".png"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(REST url, gRPC channel) of one `deeplab serve` with gRPC on a free port and a 2 MB message limit."""
    base = tmp_path_factory.mktemp("saved_models") / MODEL
    export.export_saved_model(tiny_deeplab(), base, max_long_side=MAX_LONG_SIDE, check_images=camvid_frames()[:1])
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with deeplab_serve(base, MODEL, log_path, "--port", str(port), "--grpc_channel_arguments",
                       f"grpc.max_receive_message_length={MAX_MESSAGE_BYTES}") as (url, _):
        unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=unlimited) as channel:
            yield url, channel


@pytest.fixture(scope="module")
def predictions(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(server[1])


def predict_request(inputs, signature_name="", model=MODEL, version=None, output_filter=()):
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                      else tf.make_tensor_proto(value))
    return request


def rest_predict(url, body):
    reply = httpx.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()["outputs"]


def grpc_error(call, request):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=120)
    return caught.value.code(), caught.value.details()


def shipped_images():
    """{name: encoded bytes}: the package's sample images, the CamVid files as stored (480x360) and the three
    CamVid test frames (160x120) as PNG."""
    images = {path.name: path.read_bytes() for path in SAMPLE_IMAGES + CAMVID_FILES}
    images.update({f"frame{i}": png_bytes(pixels) for i, pixels in enumerate(camvid_frames())})
    return images


def test_parse_channel_arguments():
    text = "grpc.max_receive_message_length=100,grpc.lb_policy_name=round_robin,a=99999999999"
    assert parse_channel_arguments(text) == [("grpc.max_receive_message_length", 100),
                                             ("grpc.lb_policy_name", "round_robin"), ("a", "99999999999")]
    assert parse_channel_arguments("") == []
    with pytest.raises(ValueError, match="'oops' is not key=value"):
        parse_channel_arguments("a=1,oops")


def test_a_port_in_use_is_a_clear_error():
    """Also when the other socket allows SO_REUSEPORT (grpc's default, which would share the port silently)."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve gRPC on 127.0.0.1:{port}"):
            create_grpc_server(None, port=port)


def test_predict_gives_the_rest_labels_for_every_shipped_image(server, predictions):
    url, _ = server
    images = shipped_images()
    assert len(SAMPLE_IMAGES) == 2 and len(images) == 8
    for name, data in images.items():
        reply = predictions.Predict(predict_request({"image_bytes": [data]}), timeout=120)
        assert (reply.model_spec.name, reply.model_spec.version.value, reply.model_spec.signature_name) == \
            (MODEL, 1, "serving_default")
        outputs = {key: tf.make_ndarray(value) for key, value in reply.outputs.items()}
        rest = rest_predict(url, {"inputs": {"image_bytes": [{"b64": base64.b64encode(data).decode()}]}})
        assert sorted(outputs) == sorted(rest) == ["image_size", "label_png_bytes", "labels"]
        assert outputs["labels"].dtype == np.int32 and len(np.unique(outputs["labels"])) > 1, name
        np.testing.assert_array_equal(outputs["labels"], rest["labels"], err_msg=name)
        np.testing.assert_array_equal(outputs["image_size"], rest["image_size"], err_msg=name)
        assert outputs["label_png_bytes"][0] == base64.b64decode(rest["label_png_bytes"][0]["b64"]), name

        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if pixels.shape[1] > 160:
            continue  # the 480x360 files: their probabilities are too large for a fast REST check
        reply = predictions.Predict(predict_request({"images": pixels[None]}, "predict_images"), timeout=120)
        assert reply.model_spec.signature_name == "predict_images"
        outputs = {key: tf.make_ndarray(value) for key, value in reply.outputs.items()}
        rest = rest_predict(url, {"signature_name": "predict_images", "inputs": {"images": [pixels.tolist()]}})
        np.testing.assert_array_equal(outputs["labels"], rest["labels"], err_msg=name)
        np.testing.assert_allclose(outputs["probabilities"], rest["probabilities"], rtol=1e-5, atol=1e-6)


def test_output_filter(server, predictions):
    pixels = camvid_frames()[0][:64, :80]
    everything = predictions.Predict(predict_request({"images": pixels[None]}, "predict_images"), timeout=120)
    labels = predictions.Predict(predict_request({"images": pixels[None]}, "predict_images", version=1,
                                                 output_filter=["labels"]), timeout=120)
    assert list(labels.outputs) == ["labels"] and labels.model_spec.version.value == 1
    np.testing.assert_array_equal(tf.make_ndarray(labels.outputs["labels"]),
                                  tf.make_ndarray(everything.outputs["labels"]))
    for output_filter, text in ((["labels", "nope"], "output tensor alias not found in signature: nope Outputs "
                                                     "expected to be in the set {labels,probabilities}."),
                                (["labels", "labels"], "duplicate output tensor alias: labels")):
        request = predict_request({"images": pixels[None]}, "predict_images", output_filter=output_filter)
        assert grpc_error(predictions.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, text)


def test_metadata_and_status_match_rest(server, predictions):
    url, channel = server
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    reply = predictions.GetModelMetadata(request, timeout=60)
    assert (reply.model_spec.name, reply.model_spec.version.value) == (MODEL, 1)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(signature_map)
    assert {"serving_default", "predict_images"} <= set(signature_map.signature_def)
    rest = httpx.get(f"{url}/v1/models/{MODEL}/metadata").json()
    assert json_format.MessageToDict(signature_map, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True) == rest["metadata"]["signature_def"]
    request.metadata_field[:] = ["signature_def", "other"]
    assert grpc_error(predictions.GetModelMetadata, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                 "Metadata field other is not supported")

    models = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    status = json_format.MessageToDict(models.GetModelStatus(status_request, timeout=60),
                                       preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    assert status == httpx.get(f"{url}/v1/models/{MODEL}").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    status_request.model_spec.version.value = 7
    assert grpc_error(models.GetModelStatus, status_request) == (
        grpc.StatusCode.NOT_FOUND, httpx.get(f"{url}/v1/models/{MODEL}/versions/7").json()["error"])
    assert grpc_error(models.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest())[0] == \
        grpc.StatusCode.UNIMPLEMENTED


def test_unknown_models_versions_and_bad_requests(server, predictions):
    url, _ = server
    image = png_bytes(camvid_frames()[1][:40, :50])
    rest_not_found = httpx.post(f"{url}/v1/models/nope:predict", json={"instances": [1]}).json()["error"]
    assert rest_not_found == "Servable not found for request: Latest(nope)"
    rest_no_version = httpx.get(f"{url}/v1/models/{MODEL}/versions/9/metadata").json()["error"]
    malformed = tensor_pb2.TensorProto(dtype=tf.uint8.as_datatype_enum, tensor_content=b"12345")
    malformed.tensor_shape.dim.add(size=2)
    no_spec = predict_pb2.PredictRequest()
    no_spec.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    cases = [
        (predict_request({"image_bytes": [image]}, model="nope"), grpc.StatusCode.NOT_FOUND, rest_not_found),
        (predict_request({"image_bytes": [image]}, version=9), grpc.StatusCode.NOT_FOUND, rest_no_version),
        (predict_request({"image_bytes": [image]}, "nope"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "nope" not found.'),
        (predict_request({"image_bytes": np.array([1.5], np.float32)}), grpc.StatusCode.INVALID_ARGUMENT,
         "Expects arg[0] to be string but float is provided"),
        (predict_request({"images": np.zeros((1, 8, 8, 3), np.float32)}, "predict_images"),
         grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be uint8 but float is provided"),
        (predict_request({}), grpc.StatusCode.INVALID_ARGUMENT, "input size does not match signature: 0!=1 "
         "len({}) != len({image_bytes}). Sent extra: {}. Missing but required: {image_bytes}."),
        (predict_request({"images": [image]}), grpc.StatusCode.INVALID_ARGUMENT,
         "Signature input alias: image_bytes(feed name: "),
        (predict_request({"images": malformed}, "predict_images"), grpc.StatusCode.INVALID_ARGUMENT,
         "tensor parsing error: images"),
        (predict_request({"image_bytes": [b"not an image"]}), grpc.StatusCode.INVALID_ARGUMENT,
         "Unknown image file format"),
        (no_spec, grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
    ]
    for request, code, text in cases:
        error_code, details = grpc_error(predictions.Predict, request)
        assert error_code == code and text in details, (code, text, details)
    reply = predictions.Predict(predict_request({"image_bytes": [image]}), timeout=120)  # the server still serves
    assert tf.make_ndarray(reply.outputs["image_size"]).tolist() == [[40, 50]]


def test_message_over_the_limit_is_resource_exhausted(server, predictions):
    request = predict_request({"image_bytes": [bytes(MAX_MESSAGE_BYTES + 1000)]})
    code, details = grpc_error(predictions.Predict, request)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    assert f"vs. {MAX_MESSAGE_BYTES}" in details
    small = predict_request({"image_bytes": [png_bytes(camvid_frames()[2][:30, :30])]})
    assert tf.make_ndarray(predictions.Predict(small, timeout=120).outputs["image_size"]).tolist() == [[30, 30]]


def test_classify_regress_and_multi_inference_are_refused(server, predictions):
    for call, request_type, api in ((predictions.Classify, classification_pb2.ClassificationRequest, "classify"),
                                    (predictions.Regress, regression_pb2.RegressionRequest, "regress")):
        request = request_type()
        request.model_spec.name = MODEL
        assert grpc_error(call, request) == (grpc.StatusCode.INVALID_ARGUMENT, f"{api} is not supported: the "
                                             "signatures of this model are predict signatures; use predict")
        request.model_spec.name = "nope"
        assert grpc_error(call, request)[0] == grpc.StatusCode.NOT_FOUND
    code, details = grpc_error(predictions.MultiInference, inference_pb2.MultiInferenceRequest())
    assert code == grpc.StatusCode.UNIMPLEMENTED and "use Predict" in details
