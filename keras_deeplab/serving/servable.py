"""One SavedModel version loaded the way TensorFlow Serving loads it: the TF1 SavedModel loader (tags `serve`)
into a Session in a fresh graph; a signature is run by its SignatureDef's tensor names; warmup records
(`assets.extra/tf_serving_warmup_requests`) are replayed at load time and any bad record fails the load.
"""
import contextlib
import os
import threading
from dataclasses import dataclass

import tensorflow as tf
from tensorflow.core.framework import types_pb2

from keras_deeplab.serving.contract import SERVING_SIGNATURE, WARMUP_FILE
from keras_deeplab.serving.json_tensor import ServingError

MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
INIT_OP_SIGNATURE = "__saved_model_init_op"
SERVE_TAG = "serve"

# TF error code -> HTTP status, as tensorflow_serving's ToHTTPStatusCode.
HTTP_STATUS = {
    "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503,
    "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


@dataclass(frozen=True)
class TensorSpecInfo:
    """A SignatureDef input or output: graph tensor name, DataType name ("DT_FLOAT") and shape (None: unknown)."""

    tensor_name: str
    dtype: str
    shape: tuple | None


# TF error code number -> canonical name ("INVALID_ARGUMENT").
ERROR_CODE_NAMES = {code: name for name, code in vars(tf.errors).items()
                    if name.isupper() and isinstance(code, int) and name != "OK"}


def serving_error(error):
    """A ServingError with TF Serving's HTTP status for a TF op error."""
    code = ERROR_CODE_NAMES.get(error.error_code, "UNKNOWN")
    # Python's Session adds this prefix; TF Serving's C++ Session does not.
    message = error.message.removeprefix("Graph execution error:").strip() or code
    return ServingError(message, HTTP_STATUS.get(code, 500), code)


def _deprecation_silenced():
    try:
        from tensorflow.python.util import deprecation

        return deprecation.silence()
    except (ImportError, AttributeError):
        return contextlib.nullcontext()


def _tensor_info(info):
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(None if dim.size < 0 else int(dim.size) for dim in info.tensor_shape.dim)
    return TensorSpecInfo(info.name, types_pb2.DataType.Name(info.dtype), shape)


class Servable:
    """A loaded SavedModel version; `run` is thread-safe (a Session's run is).

    Args:
        path: the version folder.
        version: its version number.
        session_config: a `tf.compat.v1.ConfigProto` (threads), or None.
        warmup: replay the warmup records at load (TF Serving's `--enable_model_warmup`).
    """

    def __init__(self, path, version=None, session_config=None, warmup=True):
        self.path = str(path)
        self.version = version
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config)
        try:
            with self.graph.as_default(), _deprecation_silenced():  # the TF1 loader is TF Serving's path, on purpose
                self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, [SERVE_TAG], self.path)
            self.signature_defs = dict(self.meta_graph.signature_def)
            self.signatures = {
                name: ({k: _tensor_info(v) for k, v in sig.inputs.items()},
                       {k: _tensor_info(v) for k, v in sig.outputs.items()})
                for name, sig in self.signature_defs.items() if name != INIT_OP_SIGNATURE
            }
            self.warmup_records = self.run_warmup() if warmup else 0
        except Exception:
            self.session.close()
            raise
        self._in_flight = 0
        self._retired = False
        self._lock = threading.Lock()

    def input_dtypes(self, signature_name):
        """{input name: DataType name} of a signature; ServingError (400) if there is no such signature."""
        return {name: info.dtype for name, info in self._signature(signature_name)[0].items()}

    def _signature(self, signature_name):
        if signature_name not in self.signatures:
            raise ServingError(f'Serving signature name: "{signature_name}" not found in signature def '
                               f"(available: {', '.join(sorted(self.signatures))})")
        return self.signatures[signature_name]

    def run(self, signature_name, inputs, timeout_ms=None):
        """Runs a signature on numpy `inputs` ({input name: array}) and returns all its outputs by name.

        Raises ServingError with TF Serving's status: 400 for a missing input or a bad value, the op error's
        code for failures inside the graph (e.g. 400 for bytes that are not an image), 504 past `timeout_ms`.
        """
        input_infos, output_infos = self._signature(signature_name)
        missing = sorted(set(input_infos) - set(inputs))
        if missing:
            raise ServingError(f"Missing input(s) {', '.join(missing)} for signature {signature_name!r}")
        unexpected = sorted(set(inputs) - set(input_infos))
        if unexpected:
            raise ServingError(f"Unexpected input(s) {', '.join(unexpected)} for signature {signature_name!r}; "
                               f"its inputs are: {', '.join(sorted(input_infos))}")
        feed = {input_infos[name].tensor_name: value for name, value in inputs.items()}
        fetch = {name: info.tensor_name for name, info in output_infos.items()}
        options = tf.compat.v1.RunOptions(timeout_in_ms=int(timeout_ms)) if timeout_ms else None
        try:
            return self.session.run(fetch, feed, options=options)
        except tf.errors.OpError as error:
            raise serving_error(error) from None
        except (ValueError, TypeError) as error:  # a value that does not fit the placeholder's shape or dtype
            raise ServingError(f"Input does not fit signature {signature_name!r}: {error}") from None

    def run_warmup(self):
        """Replays `assets.extra/tf_serving_warmup_requests` (PredictionLog records); returns how many ran.

        Raises ValueError naming the record that is not a predict request or does not run.
        """
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        try:
            records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        except tf.errors.OpError as error:
            raise ValueError(f"{path} is not a readable TFRecord file: {error.message}") from None
        if len(records) > MAX_WARMUP_RECORDS:
            raise ValueError(f"{path}: {len(records)} warmup records, more than TF Serving's {MAX_WARMUP_RECORDS}")
        for number, record in enumerate(records, start=1):
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record)
            except Exception as error:  # noqa: BLE001 - protobuf's DecodeError
                raise ValueError(f"{path}: record {number} is not a PredictionLog: {error}") from None
            if log.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{path}: record {number} is a {log.WhichOneof('log_type')}, only predict_log "
                                 "records are supported")
            request = log.predict_log.request
            signature_name = request.model_spec.signature_name or SERVING_SIGNATURE
            inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
            try:
                self.run(signature_name, inputs)
            except ServingError as error:
                raise ValueError(f"{path}: warmup record {number} (signature {signature_name!r}) failed: "
                                 f"{error.message}") from None
        return len(records)

    # Reference counting, so that a version retired while requests still run is closed after them.
    def acquire(self):
        with self._lock:
            if self._retired:
                return False
            self._in_flight += 1
            return True

    def release(self):
        with self._lock:
            self._in_flight -= 1
            close = self._retired and self._in_flight == 0
        if close:
            self.session.close()

    def retire(self):
        """Stops new requests; the Session closes when the last running one finishes."""
        with self._lock:
            self._retired = True
            close = self._in_flight == 0
        if close:
            self.session.close()
