"""Monitoring/batching config files (TF Serving's text protos) and the Prometheus metrics of the server."""
import threading

import pytest
from google.protobuf import text_format
from prometheus_client.parser import text_string_to_metric_families

from keras_deeplab.serving.metrics import ServingMetrics, read_monitoring_config
from keras_deeplab.serving.text_protos import BATCHING_PARAMETERS, MONITORING_CONFIG, parse_text_proto


def write(tmp_path, text, name="config.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    ('prometheus_config { enable: true, path: "/metrics/here" }', "/metrics/here"),
    ("prometheus_config { enable: true }", "/monitoring/prometheus/metrics"),
    ("prometheus_config: { enable: false }", None),
    ("", None),
])
def test_read_monitoring_config(tmp_path, text, expected):
    assert read_monitoring_config(write(tmp_path, text)) == expected


@pytest.mark.parametrize("text, error", [
    ("prometheus_confg { enable: true }", 'no field named "prometheus_confg"'),
    ("prometheus_config { enabled: true }", 'no field named "enabled"'),
    ("prometheus_config { enable: 3 }", 'Expected "true" or "false"'),
    ('prometheus_config { enable: true, path: "metrics" }', "must start with '/'"),
])
def test_bad_monitoring_configs_name_the_file_and_field(tmp_path, text, error):
    path = write(tmp_path, text, "monitoring.config")
    with pytest.raises(ValueError, match=error) as caught:
        read_monitoring_config(path)
    assert str(path) in str(caught.value)


def test_a_missing_monitoring_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Cannot read the monitoring config file .*nope.config"):
        read_monitoring_config(tmp_path / "nope.config")


def test_messages_have_tf_servings_full_names_and_field_numbers():
    # Field numbers of monitoring_config.proto and session_bundle_config.proto (tensorflow/serving).
    assert MONITORING_CONFIG.DESCRIPTOR.full_name == "tensorflow.serving.MonitoringConfig"
    prometheus = MONITORING_CONFIG.DESCRIPTOR.fields_by_name["prometheus_config"]
    assert prometheus.number == 1 and prometheus.message_type.full_name == "tensorflow.serving.PrometheusConfig"
    assert {f.name: f.number for f in prometheus.message_type.fields} == {"enable": 1, "path": 2}
    assert BATCHING_PARAMETERS.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    assert {f.name: f.number for f in BATCHING_PARAMETERS.DESCRIPTOR.fields} == {
        "max_batch_size": 1, "batch_timeout_micros": 2, "max_enqueued_batches": 3, "num_batch_threads": 4,
        "thread_pool_name": 5, "allowed_batch_sizes": 6, "pad_variable_length_inputs": 7}


def test_batching_parameters_parse_with_wrappers(tmp_path):
    # The format of TF Serving's --batching_parameters_file (its docs' example, tensorflow_serving/batching/README).
    path = write(tmp_path, "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 5000 }\n"
                           'thread_pool_name { value: "pool" }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 32\n'
                           "pad_variable_length_inputs: true\n")
    parameters = parse_text_proto(path, BATCHING_PARAMETERS, "batching parameters")
    assert parameters.max_batch_size.value == 32
    assert parameters.batch_timeout_micros.value == 5000
    assert parameters.HasField("max_batch_size") and not parameters.HasField("num_batch_threads")
    assert parameters.thread_pool_name.value == "pool"
    assert list(parameters.allowed_batch_sizes) == [8, 32]
    assert parameters.pad_variable_length_inputs is True
    # Round trip through protobuf's own printer.
    assert text_format.Parse(text_format.MessageToString(parameters), BATCHING_PARAMETERS()) == parameters


def test_bad_batching_parameters_name_the_file_and_problem(tmp_path):
    path = write(tmp_path, "max_batch_size: 32\n", "batching.config")  # a wrapper, not a scalar
    with pytest.raises(ValueError, match=r"Invalid batching parameters file .*batching.config: 1:\d+ : .*"
                                         "max_batch_size"):
        parse_text_proto(path, BATCHING_PARAMETERS, "batching parameters")


def families(metrics):
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=")  # the Prometheus text format
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def samples(family, suffix, **labels):
    """{the labels left: value} of `family`'s samples named with `suffix` whose labels include `labels`."""
    found = {}
    for sample in family.samples:
        if sample.name == family.name + suffix and labels.items() <= sample.labels.items():
            rest = {k: v for k, v in sample.labels.items() if k not in labels}
            found[tuple(sorted(rest.items()))] = sample.value
    return found


def test_requests_are_counted_with_tf_serving_names_and_labels():
    metrics = ServingMetrics()
    for seconds in (0.002, 0.004):
        metrics.observe_request("deeplab", 1, "serving_default", "predict", "REST", "OK", seconds)
    metrics.observe_request("deeplab", None, "serving_default", "predict", "REST", "INVALID_ARGUMENT", 0.001)
    metrics.observe_request("deeplab", None, "", "status", "GRPC", "NOT_FOUND", 0.0005)
    found = families(metrics)
    counts = found[":tensorflow:serving:request_count"]
    assert counts.type == "counter"
    model = {"model_name": "deeplab"}
    assert samples(counts, "_total", **model) == {
        (("API", "predict"), ("entrypoint", "REST"), ("signature_name", "serving_default"), ("status", "OK"),
         ("version", "1")): 2.0,
        (("API", "predict"), ("entrypoint", "REST"), ("signature_name", "serving_default"),
         ("status", "INVALID_ARGUMENT"), ("version", "")): 1.0,
        (("API", "status"), ("entrypoint", "GRPC"), ("signature_name", ""), ("status", "NOT_FOUND"),
         ("version", "")): 1.0,
    }
    latency = found[":tensorflow:serving:request_latency"]
    assert latency.type == "histogram"
    ok = dict(model_name="deeplab", version="1", signature_name="serving_default", API="predict", entrypoint="REST")
    assert samples(latency, "_count", **ok) == {(): 2.0}
    assert samples(latency, "_sum", **ok)[()] == pytest.approx(6000.0)  # microseconds, as TF Serving
    buckets = {float(dict(key)["le"]): value for key, value in samples(latency, "_bucket", **ok).items()}
    expected_bounds = [10 * 1.8 ** i for i in range(33)] + [float("inf")]
    assert sorted(buckets) == pytest.approx(expected_bounds)
    for bound, count in buckets.items():
        assert count == (bound >= 2000) + (bound >= 4000)


def test_batches_and_rejections_are_recorded():
    metrics = ServingMetrics()
    metrics.observe_batch("deeplab", 2, "serving_default", 3, [0.001, 0.002, 0.0005])
    metrics.observe_batch("deeplab", 2, "serving_default", 16, 0.01)
    metrics.observe_rejected("deeplab", 2, "serving_default")
    metrics.observe_rejected("deeplab", 2, "serving_default")
    found = families(metrics)
    model = dict(model_name="deeplab", version="2", signature_name="serving_default")
    sizes = found[":tensorflow:serving:batching_session:processed_batch_size"]
    buckets = {dict(key)["le"]: value for key, value in samples(sizes, "_bucket", **model).items()}
    assert buckets == {"1.0": 0, "2.0": 0, "4.0": 1, "8.0": 1, "16.0": 2, "32.0": 2, "64.0": 2, "128.0": 2,
                       "256.0": 2, "512.0": 2, "+Inf": 2}
    assert samples(sizes, "_sum", **model) == {(): 19.0}
    queuing = found[":tensorflow:serving:batching_session:queuing_latency"]
    assert samples(queuing, "_count", **model) == {(): 4.0}
    assert samples(queuing, "_sum", **model)[()] == pytest.approx(13500.0)
    rejected = found[":tensorflow:serving:batching_session:rejected_count"]
    assert samples(rejected, "_total", **model) == {(): 2.0}


def test_servers_do_not_share_counts_and_counting_is_thread_safe():
    first, second = ServingMetrics(), ServingMetrics()

    def hammer():
        for _ in range(500):
            first.observe_request("m", 1, "s", "predict", "REST", "OK", 0.01)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = families(first)[":tensorflow:serving:request_count"]
    assert sum(samples(counts, "_total").values()) == 2000.0
    assert sum(samples(families(second)[":tensorflow:serving:request_count"], "_total").values()) == 0.0


@pytest.mark.parametrize("api, entrypoint", [("predicts", "REST"), ("predict", "HTTP")])
def test_unknown_api_or_entrypoint_is_refused(api, entrypoint):
    with pytest.raises(ValueError, match="must be one of"):
        ServingMetrics().observe_request("m", 1, "s", api, entrypoint, "OK", 0.01)
