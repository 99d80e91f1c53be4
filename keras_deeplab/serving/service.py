"""What the REST and gRPC front ends of `deeplab serve` both serve: a model's versions looked up in the
`ModelManager`, predictions run on the servable (through the `BatchScheduler` when batching is on), and every
request counted in the `ServingMetrics` (model, version, signature, API, entry point, status, latency).
"""
import time

from keras_deeplab.serving.json_tensor import (DEFAULT_MAX_IMAGE_PIXELS, ServingError, check_image_pixels,
                                               image_headers)


class PredictionService:
    """Predict, metadata and status for the models of `manager`.

    Args:
        manager: the `ModelManager`.
        batching: `BatchingOptions` to batch predictions across clients, or None to run each on its own.
        metrics: a `ServingMetrics`, or None.
        timeout_ms: deadline of one prediction's Session run.
        max_image_pixels: encoded images declaring more pixels are refused before decoding (0: no limit).
    """

    def __init__(self, manager, *, batching=None, metrics=None, timeout_ms=30000,
                 max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        self.manager = manager
        self.metrics = metrics
        self.timeout_ms = timeout_ms
        self.max_image_pixels = max_image_pixels
        self.scheduler = None
        if batching is not None:
            from keras_deeplab.serving.batching import BatchScheduler

            self.scheduler = BatchScheduler(batching, on_batch=self._observe_batch, on_rejected=self._observe_rejected)

    def predict(self, name, version, label, entrypoint, parse, model=None):
        """Runs a prediction; `parse(servable)` gives (signature name, {input name: array}) for the servable the
        request names. Returns (served version, signature name, {output name: array}); ServingError on failure.
        `model`: the model `require` returned, when the caller looked it up already."""
        with self._observed(name, version, "predict", entrypoint) as record:
            servable = (model or self.manager.model(name, version)).acquire(version, label)
            try:
                record["version"] = servable.version
                signature_name, inputs = parse(servable)
                record["signature"] = signature_name
                headers = image_headers(inputs) if self.max_image_pixels or self.scheduler is not None else {}
                check_image_pixels(headers, self.max_image_pixels)
                if self.scheduler is None:
                    outputs = servable.run(signature_name, inputs, timeout_ms=self.timeout_ms)
                else:
                    outputs = self.scheduler.run(servable, signature_name, inputs, self.timeout_ms, name, headers)
            finally:
                servable.release()
            return servable.version, signature_name, outputs

    def metadata(self, name, version, label, entrypoint):
        """(served version, {signature name: SignatureDef proto}) of the version a request names."""
        with self._observed(name, version, "metadata", entrypoint) as record:
            servable = self.manager.model(name, version).acquire(version, label)
            try:
                record["version"] = servable.version
                return servable.version, dict(servable.signature_defs)
            finally:
                servable.release()

    def status(self, name, version, label, entrypoint):
        """TF Serving's model status body (`{"model_version_status": [...]}`) for all versions, or the one named."""
        with self._observed(name, version, "status", entrypoint):
            return self.manager.model(name, version).status(version, label)

    def require(self, name, version, api, entrypoint):
        """The model a request names (a `ManagedModel`); NOT_FOUND, counted, if it is not served."""
        with self._observed(name, version, api, entrypoint):
            return self.manager.model(name, version)

    def unsupported(self, name, version, label, entrypoint, api):
        """Classify and Regress (`api`): refused (INVALID_ARGUMENT), as the exported signatures are predict
        signatures; an unknown model is NOT_FOUND first."""
        with self._observed(name, version, api, entrypoint):
            self.manager.model(name, version)
            raise ServingError(f"{api} is not supported: the signatures of this model are predict signatures; "
                               f"use {'predict' if entrypoint == 'GRPC' else ':predict'}", 400)

    def close(self):
        if self.scheduler is not None:
            self.scheduler.stop()

    # Metrics.
    def _observed(self, name, version, api, entrypoint):
        return _Observation(self.metrics, name, version, api, entrypoint)

    def _observe_batch(self, model_name, servable, signature_name, rows, waits):
        if self.metrics is not None:
            self.metrics.observe_batch(model_name, servable.version, signature_name, rows, waits)

    def _observe_rejected(self, model_name, servable, signature_name):
        if self.metrics is not None:
            self.metrics.observe_rejected(model_name, servable.version, signature_name)


class _Observation:
    """Times a request and records it with its outcome's status code (OK, or the error's code)."""

    def __init__(self, metrics, name, version, api, entrypoint):
        self.metrics = metrics
        self.record = {"model": name, "version": version, "signature": "", "api": api, "entrypoint": entrypoint}

    def __enter__(self):
        self.start = time.perf_counter()
        return self.record

    def __exit__(self, kind, error, traceback):
        if self.metrics is None:
            return False
        if error is None:
            status = "OK"
        elif isinstance(error, ServingError):
            status = error.code
        elif isinstance(error, MemoryError):
            status = "RESOURCE_EXHAUSTED"
        else:
            status = "INTERNAL"
        record = self.record
        self.metrics.observe_request(record["model"], record["version"], record["signature"], record["api"],
                                     record["entrypoint"], status, time.perf_counter() - self.start)
        return False
