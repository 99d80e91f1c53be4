"""The gRPC front end of `deeplab serve` (`--port`, tensorflow_model_server's 8500): TF Serving's
`PredictionService` and `ModelService`, from the generated modules of tensorflow-serving-api, over the same
`PredictionService` core as the REST API (serving/service.py), so both answer alike and are counted alike.

- Predict: `ModelSpec` name, `version` or `version_label`, `signature_name` (default `serving_default`); inputs
  are TensorProtos (`tf.make_tensor_proto` on the client) checked in TF Serving's order and wording
  (servables/tensorflow/predict_util.cc): an unknown signature is FAILED_PRECONDITION `Serving signature key "x"
  not found.`; a missing or extra input, a TensorProto that does not parse, an unknown or repeated `output_filter`
  entry and a dtype that is not the signature's (`Expects arg[0] to be string but float is provided`) are
  INVALID_ARGUMENT. The response holds the outputs `output_filter` names (all by default) and the served
  model spec.
- GetModelMetadata: `metadata_field: "signature_def"` gives a `SignatureDefMap` packed in the Any, as TF Serving.
- GetModelStatus, as REST's status. Classify and Regress: INVALID_ARGUMENT (the signatures are predict
  signatures), as REST; MultiInference and HandleReloadConfigRequest: UNIMPLEMENTED.

Errors carry the REST API's messages (`Servable not found for request: ...`) with the gRPC code of their
`ServingError`. Messages may be as large as tensorflow_model_server allows (2**31 - 1 bytes);
tensorflow_model_server's `--grpc_channel_arguments` (`grpc.max_receive_message_length=N,...`) sets the limits,
and a larger message gets grpc's RESOURCE_EXHAUSTED `Received message larger than max (N vs. M)`.
"""
import logging
import math
import os
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from keras_deeplab.serving.contract import SERVING_SIGNATURE
from keras_deeplab.serving.json_tensor import ServingError

ENTRYPOINT = "GRPC"
# tensorflow_model_server's builder.SetMaxMessageSize(kint32max); also the most bytes one input may decode to.
MAX_MESSAGE_BYTES = 2**31 - 1
DEFAULT_NUM_THREADS = 4 * (os.cpu_count() or 1)  # tensorflow_model_server's --grpc_max_threads default
SIGNATURE_DEF_FIELD = "signature_def"

log = logging.getLogger("keras_deeplab.serving")


def parse_channel_arguments(text):
    """tensorflow_model_server's `--grpc_channel_arguments`: "key=value,key=value" -> [(key, value)], a value that
    is a 32-bit integer passed as an int (as there). ValueError for an item that is not key=value."""
    arguments = []
    for item in filter(None, text.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        try:
            number = int(value)
        except ValueError:
            number = None
        arguments.append((key, number if number is not None and -2**31 <= number < 2**31 else value))
    return arguments


def create_grpc_server(service, *, port, host="127.0.0.1", max_message_bytes=MAX_MESSAGE_BYTES,
                       num_threads=None, channel_arguments=()):
    """A `grpc.Server` (call `.start()`) serving TF Serving's PredictionService and ModelService for the
    `PredictionService` `service` on host:port.

    `num_threads` answer requests (None: DEFAULT_NUM_THREADS). `max_message_bytes` bounds received and sent
    messages; `channel_arguments` ((key, value) pairs, e.g. from
    `parse_channel_arguments`) are passed to grpc after it and win. OSError if the port cannot be bound.
    """
    options = {"grpc.max_receive_message_length": max_message_bytes,
               "grpc.max_send_message_length": max_message_bytes,
               "grpc.so_reuseport": 0,  # a port in use is an error, not silently shared with another server
               **dict(channel_arguments)}
    workers = DEFAULT_NUM_THREADS if num_threads is None else num_threads
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         options=list(options.items()))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionServicer(service), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(service), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as error:
        bound, reason = 0, f": {error}"
    else:
        reason = ""
    if not bound:
        raise OSError(f"cannot serve gRPC on {address}{reason}")
    return server


def _answer(context, function, *args):
    """`function(*args)`, its ServingError aborting the call with its code and message."""
    try:
        return function(*args)
    except ServingError as error:
        code, message = getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN), error.message
    except MemoryError:
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
        message = "Resource exhausted: out of memory while serving the request"
    except Exception as error:  # noqa: BLE001 - answered INTERNAL, as REST's 500, and logged
        log.exception("gRPC request failed")
        code, message = grpc.StatusCode.INTERNAL, f"Internal error: {type(error).__name__}: {error}"
    context.abort(code, message)


def _model_spec(request):
    """(name, version, label) a request's ModelSpec names; INVALID_ARGUMENT `Missing ModelSpec` as TF Serving."""
    if not request.HasField("model_spec"):
        raise ServingError("Missing ModelSpec")
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    return (spec.name, spec.version.value if choice == "version" else None,
            spec.version_label if choice == "version_label" else None)


def _dtype_string(dtype):
    """TF's DataTypeString: DT_FLOAT -> "float", DT_STRING -> "string"."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def _braces(names):
    return "{" + ",".join(sorted(names)) + "}"


def _ndarray(alias, proto):
    """A TensorProto as numpy; INVALID_ARGUMENT `tensor parsing error: alias` (TF Serving's) if it does not parse
    or would decode to more than MAX_MESSAGE_BYTES (a few bytes declaring a huge shape)."""
    try:
        dims = [dim.size for dim in proto.tensor_shape.dim]
        if min(dims, default=0) < 0:
            raise ValueError("negative dimension")
        decoded = math.prod(dims) * np.dtype(tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype).itemsize
        if decoded > MAX_MESSAGE_BYTES:
            raise ValueError(f"it declares shape {dims}, {decoded} bytes, more than {MAX_MESSAGE_BYTES}")
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, KeyError) as error:
        raise ServingError(f"tensor parsing error: {alias} ({error})") from None


def _parse_predict(request):
    """The `parse` for `PredictionService.predict`: the request's signature name and input arrays, checked against
    the servable in TF Serving's order (RunPredict, PreProcessPrediction, then the Session's feed dtypes)."""
    def parse(servable):
        signature_name = request.model_spec.signature_name or SERVING_SIGNATURE
        if signature_name not in servable.signatures:
            raise ServingError(f'Serving signature key "{signature_name}" not found.', 400, "FAILED_PRECONDITION")
        input_infos, output_infos = servable.signatures[signature_name]
        sent = request.inputs
        if len(sent) != len(input_infos):
            raise ServingError(
                f"input size does not match signature: {len(sent)}!={len(input_infos)} len({_braces(sent)}) != "
                f"len({_braces(input_infos)}). Sent extra: {_braces(set(sent) - set(input_infos))}. "
                f"Missing but required: {_braces(set(input_infos) - set(sent))}.")
        inputs = {}
        for alias in sorted(input_infos):
            if alias not in sent:
                raise ServingError(f"Signature input alias: {alias}(feed name: {input_infos[alias].tensor_name}) "
                                   f"not found in request and no default value provided. Inputs expected to be in "
                                   f"the request {_braces(sent)}, or default input alias set: ")
            inputs[alias] = _ndarray(alias, sent[alias])
        seen = set()
        for alias in request.output_filter:
            if alias not in output_infos:
                raise ServingError(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                                   f"the set {_braces(output_infos)}.")
            if alias in seen:
                raise ServingError(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        for index, alias in enumerate(sorted(input_infos)):
            expected = types_pb2.DataType.Value(input_infos[alias].dtype)
            if sent[alias].dtype != expected:
                raise ServingError(f"Expects arg[{index}] to be {_dtype_string(expected)} but "
                                   f"{_dtype_string(sent[alias].dtype)} is provided")
        return signature_name, inputs

    return parse


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service):
        self.service = service

    def Predict(self, request, context):
        return _answer(context, self._predict, request)

    def GetModelMetadata(self, request, context):
        return _answer(context, self._metadata, request)

    def Classify(self, request, context):
        return _answer(context, self._unsupported, request, "classify")

    def Regress(self, request, context):
        return _answer(context, self._unsupported, request, "regress")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by deeplab serve: the "
                      "signatures of these models are predict signatures; use Predict")

    def _predict(self, request):
        name, version, label = _model_spec(request)
        served, signature_name, outputs = self.service.predict(name, version, label, ENTRYPOINT,
                                                               _parse_predict(request))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = served
        response.model_spec.signature_name = signature_name
        for alias in request.output_filter or outputs:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
        return response

    def _metadata(self, request):
        name, version, label = _model_spec(request)
        if not request.metadata_field:
            raise ServingError("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise ServingError(f"Metadata field {field} is not supported")
        served, signature_defs = self.service.metadata(name, version, label, ENTRYPOINT)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = served
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response

    def _unsupported(self, request, api):
        self.service.unsupported(*_model_spec(request), ENTRYPOINT, api)


class _ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service):
        self.service = service

    def GetModelStatus(self, request, context):
        return _answer(context, self._status, request)

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "HandleReloadConfigRequest is not supported by deeplab serve; "
                      "use --model_config_file with --model_config_file_poll_wait_seconds")

    def _status(self, request):
        body = self.service.status(*_model_spec(request), ENTRYPOINT)
        return json_format.ParseDict(body, get_model_status_pb2.GetModelStatusResponse())
