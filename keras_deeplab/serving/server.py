"""`deeplab serve`: TensorFlow Serving's REST API for SavedModels, on Starlette + uvicorn.

Serves what `tensorflow_model_server --rest_api_port` serves, through the same TF1 Session path:
`POST /v1/models/{name}[/versions/{n}|/labels/{label}]:predict` (row and columnar formats, b64, signature_name),
`GET /v1/models/{name}[/versions/{n}]` (status) and `GET .../metadata`, with TF Serving's status codes and
`{"error": ...}` bodies. The newest version is served (or the versions a models.config asks for); new version
folders are picked up while running. Sessions run in a thread pool. Bodies above `--max_body_bytes` get 413;
an encoded image declaring more than `--max_image_pixels` pixels in its header gets 400 before it is decoded;
running out of memory gets 429.

Requests are checked in TF Serving's order: a path under /v1/ that is not one of the API's, or a method that the
path does not take (any method: DELETE, PUT, TRACE, PROPFIND, ...), is 400 `Malformed request: METHOD PATH`
before any model is looked up; then an unknown model or version is 404 `Servable not found for request: ...`.

Flags are tensorflow_model_server's (`--flag=value` or `--flag value`; booleans also bare: `--enable_batching`),
also accepted with dashes (`--rest-api-port`) as the other deeplab commands spell them.
`--enable_batching` with `--batching_parameters_file` batches concurrent predictions across clients with TF
Serving's semantics (serving/batching.py); `--monitoring_config_file` serves the Prometheus metrics
(serving/metrics.py); the page at `/` tries the models in a browser (serving/page.py; `--web_page=false` turns it
off). `--port` also serves TF Serving's gRPC API (PredictionService, ModelService.GetModelStatus:
serving/grpc_server.py) through the same PredictionService core, on --rest_api_host; `--grpc_channel_arguments`
(e.g. `grpc.max_receive_message_length=...`) and `--grpc_max_threads` as tensorflow_model_server's. Accepted but
not acted on: the `pad_variable_length_inputs` batching parameter (inputs of different shapes are batched
separately instead, so that no answer changes).

It needs only the SavedModel: nothing here imports the model or training code.
"""
import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route

from keras_deeplab.serving.json_tensor import (DEFAULT_MAX_IMAGE_PIXELS, ServingError, error_body,
                                               parse_predict_body, predict_response, request_tensors)
from keras_deeplab.serving.metrics import DEFAULT_METRICS_PATH
from keras_deeplab.serving.service import PredictionService

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# After the limit, at most this much more of a body is read (and dropped) so the client still gets the 413.
_DRAIN_BYTES = 64 * 1024 * 1024

log = logging.getLogger("keras_deeplab.serving")


class _NameConvertor(StringConvertor):
    """A model name or version label in a path: no '/' or ':' (`/v1/models/{name}:predict`)."""

    regex = "[^/:]+"


register_url_convertor("servable_name", _NameConvertor())

# The API's paths below /v1/models/{name}: which version, then what of it.
_SELECTORS = ("", "/versions/{version:int}", "/labels/{label:servable_name}")


def _json_response(text, status=200):
    return Response(text, status_code=status, media_type="application/json")


def _route(path, endpoint, method):
    route = Route(path, endpoint, methods=[method])
    route.methods = {method}  # Starlette adds HEAD to GET routes; TF Serving answers HEAD as a malformed request
    return route


def create_app(manager, *, max_body_bytes=DEFAULT_MAX_BODY_BYTES, timeout_ms=30000, num_threads=8,
               max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, web_page=True, batching=None, metrics=None,
               metrics_path=None):
    """The ASGI app answering TF Serving's REST API for the models of a `ModelManager` (and with `web_page`, the
    page at `/` to try them in a browser: serving/page.py).

    Predictions run through a `PredictionService` (`app.state.service`, which a gRPC front end may share): with
    `batching` (BatchingOptions) they are batched across clients; with `metrics` (ServingMetrics) every request is
    counted and `metrics_path` answers the Prometheus exposition. The manager is started (first poll, then
    background polling) when the app starts and stopped with it.
    """
    executor = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="predict")
    service = PredictionService(manager, batching=batching, metrics=metrics, timeout_ms=timeout_ms,
                                max_image_pixels=max_image_pixels)

    def requested(request):
        """(model name, version, label) a request names."""
        return (request.path_params["name"], request.path_params.get("version"),
                request.path_params.get("label"))

    async def status(request):
        return _json_response(json.dumps(service.status(*requested(request), "REST")))

    async def metadata(request):
        name = request.path_params["name"]
        version, signature_defs = service.metadata(*requested(request), "REST")
        return _json_response(_metadata(name, version, signature_defs))

    async def predict(request):
        name, version, label = requested(request)
        model = service.require(name, version, "predict", "REST")  # an unknown model is 404 before the body is read
        body = await _read_body(request, max_body_bytes)
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(executor, _predict, service, model, name, version, label, body)
        return _json_response(text)

    async def unsupported(request):
        api = request.url.path.rsplit(":", 1)[1]
        service.unsupported(*requested(request), "REST", api)

    operations = (("", "GET", status), ("/metadata", "GET", metadata), (":predict", "POST", predict),
                  (":classify", "POST", unsupported), (":regress", "POST", unsupported))
    routes = [_route(f"/v1/models/{{name:servable_name}}{selector}{suffix}", endpoint, method)
              for selector in _SELECTORS for suffix, method, endpoint in operations]

    async def serving_error(request, error):
        return _json_response(error_body(error.message), error.status)

    async def not_routed(request, error):
        """Starlette's 404 (no such path) or 405 (not this method): TF Serving's 400 under /v1/, checked before
        any model is looked up."""
        path = request.url.path
        if path.startswith("/v1/"):
            return _json_response(error_body(f"Malformed request: {request.method} {path}"), 400)
        return _json_response(error_body(f"Not found: {request.method} {path} (the REST API lives under "
                                         "/v1/models/)"), 404)

    async def client_disconnected(request, error):
        return _json_response(error_body("Client closed the request"), 499)

    async def out_of_memory(request, error):
        return _json_response(error_body("Resource exhausted: out of memory while serving the request"), 429)

    async def internal_error(request, error):  # Starlette then re-raises it for uvicorn to log
        return _json_response(error_body(f"Internal error: {type(error).__name__}: {error}"), 500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, manager.start)
        try:
            yield
        finally:
            manager.stop()
            service.close()
            executor.shutdown(wait=False, cancel_futures=True)

    if web_page:
        from keras_deeplab.serving.page import page_routes

        routes += page_routes(manager)
    if metrics is not None:
        async def prometheus(request):
            body, content_type = metrics.exposition()
            return Response(body, media_type=content_type)

        routes.append(_route(metrics_path or DEFAULT_METRICS_PATH, prometheus, "GET"))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ServingError: serving_error, 404: not_routed, 405: not_routed, ClientDisconnect: client_disconnected,
        MemoryError: out_of_memory, Exception: internal_error})
    app.router.redirect_slashes = False  # TF Serving answers a path with a trailing slash as malformed, not 307
    app.state.service = service
    return app


async def _read_body(request, max_body_bytes):
    """The body; past `max_body_bytes` the rest is read and dropped (up to a bound) and 413 is raised."""
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        too_large = too_large or size > max_body_bytes
        if not too_large:
            chunks.append(chunk)
        elif size > max_body_bytes + _DRAIN_BYTES:
            break  # stop reading; the connection closes after the reply
    if too_large:
        raise ServingError(f"Request body too large: more than {max_body_bytes} bytes "
                           "(the server's --max_body_bytes)", 413)
    return b"".join(chunks)


def _predict(service, model, name, version, label, body):
    """Parses a predict body, runs it through the service and returns the response JSON text (in a worker
    thread)."""
    request = None

    def parse(servable):
        nonlocal request
        request = parse_predict_body(body)
        return request.signature_name, request_tensors(request, servable.input_dtypes(request.signature_name))

    _, _, outputs = service.predict(name, version, label, "REST", parse, model)
    return predict_response(outputs, request.row_format)


def _metadata(name, version, signature_defs):
    """TF Serving's metadata body: the model spec and every SignatureDef as JSON."""
    from google.protobuf import json_format

    signatures = {key: json_format.MessageToDict(sig, preserving_proto_field_name=True,
                                                 always_print_fields_with_no_presence=True)
                  for key, sig in signature_defs.items()}
    return json.dumps({"model_spec": {"name": name, "signature_name": "", "version": str(version)},
                       "metadata": {"signature_def": {"signature_def": signatures}}})


def _bool(text):
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag(name):
    """The option strings of a tensorflow_model_server flag: its own name, then the same with dashes, as the other
    deeplab commands spell their flags (`--rest_api_port`, `--rest-api-port`)."""
    return tuple(dict.fromkeys((name, name.replace("_", "-"))))


def _add_bool(parser, name, default, help):
    """A tensorflow_model_server boolean flag: `--name` alone means true; `--name=true|false|1|0` (or with a
    space) sets it."""
    parser.add_argument(*_flag(name), type=_bool, nargs="?", const=True, default=default, metavar="true|false",
                        help=f"{help} (default: {str(default).lower()}; a bare {name} means true)")


DEFAULT_MODEL_NAME = "default"  # tensorflow_model_server's


def _parser():
    parser = argparse.ArgumentParser(
        prog="deeplab serve",
        description="Serve SavedModels over TensorFlow Serving's REST API (same flags as tensorflow_model_server; "
                    "--flag=value or --flag value; booleans may be bare). Differences: gRPC is served only when --port "
                    "is given (tensorflow_model_server's default is 8500); --rest_api_port defaults to 8501 "
                    "(tensorflow_model_server's 0 disables REST).",
        epilog="The same folder with TensorFlow Serving: docker run --rm -p 8501:8501 "
               "-v \"$PWD/saved_models/deeplabv3:/models/deeplabv3\" -e MODEL_NAME=deeplabv3 tensorflow/serving "
               "(the Docker image passes --model_name=$MODEL_NAME, default 'model')")
    parser.add_argument(*_flag("--model_name"), default=DEFAULT_MODEL_NAME,
                        help="model name in URLs (default: %(default)s, as tensorflow_model_server; pass the name "
                             "clients use, e.g. deeplabv3)")
    parser.add_argument(*_flag("--model_base_path"), help="folder holding numeric version folders")
    parser.add_argument(*_flag("--model_config_file"), help="a TF Serving models.config (several models / versions)")
    parser.add_argument(*_flag("--model_config_file_poll_wait_seconds"), type=float, default=0.0,
                        help="re-read --model_config_file this often (models added, removed or changed); 0: read "
                             "it only at start (default: %(default)s)")
    parser.add_argument(*_flag("--port"), type=int, default=None,
                        help="serve TF Serving's gRPC API (PredictionService: Predict, GetModelMetadata; "
                             "ModelService: GetModelStatus) on this port, on --rest_api_host (default: none; "
                             "tensorflow_model_server's is 8500; 0 or less: no gRPC, as there)")
    parser.add_argument(*_flag("--grpc_max_threads"), type=int, default=None,
                        help="threads answering gRPC requests (default: 4 per CPU core, as tensorflow_model_server)")
    parser.add_argument(*_flag("--grpc_channel_arguments"), default="",
                        help="comma-separated key=value gRPC server arguments, as tensorflow_model_server's, e.g. "
                             "grpc.max_receive_message_length=4194304,grpc.max_send_message_length=4194304 (both "
                             "2**31 - 1 bytes by default, as there; a larger message gets RESOURCE_EXHAUSTED)")
    parser.add_argument(*_flag("--rest_api_port"), type=int, default=8501, help="HTTP port (default: %(default)s)")
    parser.add_argument(*_flag("--rest_api_host"), default="127.0.0.1",
                        help="address to bind (default: %(default)s; 0.0.0.0 to accept other machines)")
    parser.add_argument(*_flag("--rest_api_num_threads"), type=int, default=4 * (os.cpu_count() or 1),
                        help="threads answering REST predictions, so at most this many are in flight, batched or "
                             "not (default: %(default)s, 4 per CPU core, as tensorflow_model_server)")
    parser.add_argument(*_flag("--rest_api_timeout_in_ms"), type=int, default=30000,
                        help="deadline of one prediction, 504 past it (default: %(default)s)")
    parser.add_argument(*_flag("--file_system_poll_wait_seconds"), type=float, default=1.0,
                        help="how often to look for new versions; 0 to look only at start (default: %(default)s)")
    parser.add_argument(*_flag("--max_body_bytes"), type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="larger request bodies get HTTP 413 (default: %(default)s)")
    parser.add_argument(*_flag("--max_image_pixels"), type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="an encoded image (PNG, JPEG, GIF, BMP, WebP) whose header declares more pixels gets "
                             "HTTP 400 before it is decoded; 0: no limit (default: %(default)s, 64 megapixels; "
                             "not a tensorflow_model_server flag). Headers are read with Pillow, whose "
                             "decompression-bomb limit (twice PIL.Image.MAX_IMAGE_PIXELS) also applies unless 0")
    _add_bool(parser, "--enable_model_warmup", True,
              "replay assets.extra/tf_serving_warmup_requests when loading")
    _add_bool(parser, "--web_page", True, "serve the page at / to try the models in a browser (not a "
              "tensorflow_model_server flag)")
    _add_bool(parser, "--enable_batching", False,
              "batch concurrent predictions of a signature into one Session run and split the results back "
              "(serving/batching.py); tasks whose inputs or image sizes differ are never padded together, so "
              "every answer is the one the request gets alone")
    parser.add_argument(*_flag("--batching_parameters_file"),
                        help="a text-format BatchingParameters file (max_batch_size, batch_timeout_micros, "
                             "max_enqueued_batches, num_batch_threads, allowed_batch_sizes; "
                             "pad_variable_length_inputs is accepted and has no effect), used with "
                             "--enable_batching; default: TF Serving's defaults (max_batch_size 1000, timeout 0, "
                             "10 enqueued batches, one batch thread per core)")
    parser.add_argument(*_flag("--monitoring_config_file"),
                        help="a text-format MonitoringConfig file; with prometheus_config { enable: true } the "
                             "Prometheus metrics (requests by model, version, signature, API and status, "
                             "latencies, batch sizes) are served on the REST port at its path (default "
                             f"{DEFAULT_METRICS_PATH})")
    parser.add_argument(*_flag("--tensorflow_intra_op_parallelism"), type=int, default=0,
                        help="threads inside one op (0: TensorFlow's choice)")
    parser.add_argument(*_flag("--tensorflow_inter_op_parallelism"), type=int, default=0,
                        help="ops run in parallel (0: TensorFlow's choice)")
    return parser


def parse_args(argv=None):
    """The parsed `deeplab serve` flags, checked; SystemExit with the reason for a bad combination."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.model_base_path) == bool(args.model_config_file):
        raise SystemExit("deeplab serve: give exactly one of --model_base_path and --model_config_file")
    if args.max_body_bytes < 1:
        raise SystemExit("deeplab serve: --max_body_bytes must be positive")
    if args.max_image_pixels < 0:
        raise SystemExit("deeplab serve: --max_image_pixels must be 0 (no limit) or positive")
    if args.batching_parameters_file and not os.path.isfile(args.batching_parameters_file):
        raise SystemExit(f"deeplab serve: --batching_parameters_file {args.batching_parameters_file} is not a file")
    args.batching = None
    if args.enable_batching:
        from keras_deeplab.serving.batching import BatchingOptions, read_batching_parameters

        try:
            args.batching = (read_batching_parameters(args.batching_parameters_file)
                             if args.batching_parameters_file else BatchingOptions())
        except (OSError, ValueError) as error:
            raise SystemExit(f"deeplab serve: {error}") from None
    args.metrics_path = None
    if args.monitoring_config_file:
        from keras_deeplab.serving.metrics import read_monitoring_config

        try:
            args.metrics_path = read_monitoring_config(args.monitoring_config_file)
        except (OSError, ValueError) as error:
            raise SystemExit(f"deeplab serve: {error}") from None
    return args


def compatibility_notes(args):
    """Warnings for tensorflow_model_server flags that are accepted but not acted on here."""
    notes = []
    if args.port is not None and args.port <= 0:
        notes.append(f"--port={args.port}: gRPC is not served; only the REST API on "
                     f"--rest_api_port={args.rest_api_port}")
    if args.batching_parameters_file and not args.enable_batching:
        notes.append("--batching_parameters_file has no effect without --enable_batching (as in "
                     "tensorflow_model_server)")
    if args.batching is not None and args.batching.pad_variable_length_inputs:
        notes.append("pad_variable_length_inputs: accepted, no effect: requests whose inputs differ in shape run in "
                     "separate batches, never padded, so that no answer changes")
    if args.monitoring_config_file and args.metrics_path is None:
        notes.append(f"--monitoring_config_file {args.monitoring_config_file}: prometheus_config is not enabled, "
                     "no metrics are served")
    if args.model_config_file_poll_wait_seconds > 0 and not args.model_config_file:
        notes.append("--model_config_file_poll_wait_seconds has no effect without --model_config_file")
    return notes


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf
    import uvicorn

    from keras_deeplab.serving.manager import ModelManager
    from keras_deeplab.serving.model_config import ModelConfig, read_models_config

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for note in compatibility_notes(args):
        log.warning("%s", note)
    config_reader = None
    if args.model_config_file:
        configs = read_models_config(args.model_config_file)
        if args.model_config_file_poll_wait_seconds > 0:
            config_reader = lambda: read_models_config(args.model_config_file)  # noqa: E731
    else:
        base_path = os.path.abspath(args.model_base_path)
        if not os.path.isdir(base_path):
            raise SystemExit(f"deeplab serve: --model_base_path {args.model_base_path} is not a folder")
        configs = [ModelConfig(args.model_name, base_path)]
    session_config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=args.tensorflow_intra_op_parallelism,
        inter_op_parallelism_threads=args.tensorflow_inter_op_parallelism)
    manager = ModelManager(configs, session_config, warmup=args.enable_model_warmup,
                           poll_seconds=args.file_system_poll_wait_seconds, config_reader=config_reader,
                           config_poll_seconds=args.model_config_file_poll_wait_seconds)
    metrics = None
    if args.metrics_path:
        from keras_deeplab.serving.metrics import ServingMetrics

        metrics = ServingMetrics()
    app = create_app(manager, max_body_bytes=args.max_body_bytes, timeout_ms=args.rest_api_timeout_in_ms,
                     num_threads=args.rest_api_num_threads, max_image_pixels=args.max_image_pixels,
                     web_page=args.web_page, batching=args.batching, metrics=metrics, metrics_path=args.metrics_path)
    names = ", ".join(c.name for c in configs)
    grpc_server = None
    if args.port is not None and args.port > 0:
        from keras_deeplab.serving.grpc_server import create_grpc_server, parse_channel_arguments

        if args.port == args.rest_api_port:
            raise SystemExit("deeplab serve: --port (gRPC) and --rest_api_port must differ")
        try:
            grpc_server = create_grpc_server(app.state.service, port=args.port, host=args.rest_api_host,
                                             num_threads=args.grpc_max_threads,
                                             channel_arguments=parse_channel_arguments(args.grpc_channel_arguments))
        except (OSError, ValueError) as error:
            raise SystemExit(f"deeplab serve: {error}") from None
        grpc_server.start()
        log.warning("serving %s over gRPC at %s:%d", names, args.rest_api_host, args.port)
    log.warning("serving %s at http://%s:%d/v1/models/", names, args.rest_api_host, args.rest_api_port)
    try:
        uvicorn.run(app, host=args.rest_api_host, port=args.rest_api_port, log_level="warning", access_log=False)
    finally:
        if grpc_server is not None:
            grpc_server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
