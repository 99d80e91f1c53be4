"""Prometheus metrics of the REST server, named as TensorFlow Serving's (`--monitoring_config_file`).

TF Serving exports its TensorFlow monitoring metrics with '/' turned into ':' (tensorflow_serving/util/
prometheus_exporter.cc), from tensorflow_serving/servables/tensorflow/util.cc and batching/batching_session.cc:
`/tensorflow/serving/request_count` (counter; labels model_name, status), `/tensorflow/serving/request_latency`
(histogram in microseconds, buckets Exponential(10, 1.8, 33); labels model_name, API, entrypoint) and
`/tensorflow/serving/batching_session/queuing_latency` (microseconds, Exponential(100, 1.2, 52)). What we chose:

- Names and units are TF Serving's (`:tensorflow:serving:...`, latencies in microseconds, its buckets), so its
  dashboards and queries keep working. prometheus_client writes a counter's sample with the `_total` suffix
  (`:tensorflow:serving:request_count_total`); that cannot be turned off per registry, so queries need it.
- Labels are TF Serving's (model_name, API, entrypoint, status) plus `version` and `signature_name`, which this
  server knows and TF Serving's metrics do not carry; the queueing histogram is labelled by model, not by
  TF Serving's thread_pool_name (one queue per model version here).
- `:tensorflow:serving:batching_session:processed_batch_size` (TF Serving keeps it as a percentile sampler, which
  its exporter does not write) and `:tensorflow:serving:batching_session:rejected_count` (TF Serving only counts
  these as UNAVAILABLE requests) are this server's.
"""
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from keras_deeplab.serving.text_protos import MONITORING_CONFIG, parse_text_proto

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
APIS = frozenset({"predict", "metadata", "status", "classify", "regress"})
ENTRYPOINTS = frozenset({"REST", "GRPC"})

_REQUEST_LATENCY_BUCKETS = tuple(10 * 1.8 ** i for i in range(33))  # microseconds, 10 us .. about 25 minutes
_QUEUING_LATENCY_BUCKETS = tuple(100 * 1.2 ** i for i in range(52))  # microseconds, 100 us .. about 1 second
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_MODEL = ("model_name", "version", "signature_name")


def read_monitoring_config(path):
    """The Prometheus metrics path a MonitoringConfig text file enables, or None when Prometheus is off."""
    config = parse_text_proto(path, MONITORING_CONFIG, "monitoring config")
    if not config.prometheus_config.enable:
        return None
    metrics_path = config.prometheus_config.path or DEFAULT_METRICS_PATH
    if not metrics_path.startswith("/"):
        raise ValueError(f"Invalid monitoring config file {path}: prometheus_config.path must start with '/', "
                         f"got {metrics_path!r}")
    return metrics_path


class ServingMetrics:
    """The server's metrics, in a registry of their own (servers in one process do not share counts).

    Thread-safe, as prometheus_client's metrics are.
    """

    def __init__(self):
        self.registry = CollectorRegistry()
        self._requests = Counter(":tensorflow:serving:request_count", "The total number of requests.",
                                 _MODEL + ("API", "entrypoint", "status"), registry=self.registry)
        self._latency = Histogram(":tensorflow:serving:request_latency",
                                  "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
                                  _MODEL + ("API", "entrypoint"), buckets=_REQUEST_LATENCY_BUCKETS,
                                  registry=self.registry)
        self._batch_size = Histogram(":tensorflow:serving:batching_session:processed_batch_size",
                                     "Distribution of the sizes of the batches run.", _MODEL,
                                     buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self._queuing = Histogram(":tensorflow:serving:batching_session:queuing_latency",
                                  "Distribution of wall time spent (in microseconds) in queuing", _MODEL,
                                  buckets=_QUEUING_LATENCY_BUCKETS, registry=self.registry)
        self._rejected = Counter(":tensorflow:serving:batching_session:rejected_count",
                                 "Requests refused because the batch queue was full.", _MODEL,
                                 registry=self.registry)

    def observe_request(self, model, version, signature, api, entrypoint, status, seconds):
        """Counts one request (`status`: the canonical code name, "OK", "INVALID_ARGUMENT", ...) and its latency."""
        if api not in APIS:
            raise ValueError(f"api must be one of {sorted(APIS)}, got {api!r}")
        if entrypoint not in ENTRYPOINTS:
            raise ValueError(f"entrypoint must be one of {sorted(ENTRYPOINTS)}, got {entrypoint!r}")
        labels = _model_labels(model, version, signature) + (api, entrypoint)
        self._requests.labels(*labels, status).inc()
        self._latency.labels(*labels).observe(seconds * 1e6)

    def observe_batch(self, model, version, signature, size, queue_seconds):
        """Records a batch of `size` requests run, and how long each waited in the queue (`queue_seconds`: one
        number, or one per request)."""
        labels = _model_labels(model, version, signature)
        self._batch_size.labels(*labels).observe(size)
        waits = queue_seconds if isinstance(queue_seconds, (list, tuple)) else [queue_seconds]
        queuing = self._queuing.labels(*labels)
        for wait in waits:
            queuing.observe(wait * 1e6)

    def observe_rejected(self, model, version, signature):
        """Counts a request refused because the batch queue was full."""
        self._rejected.labels(*_model_labels(model, version, signature)).inc()

    def exposition(self):
        """(body bytes, content type) of the metrics in Prometheus' text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _model_labels(model, version, signature):
    return (model, "" if version is None else str(version), signature)
