"""Request batching across clients (serving/batching.py): the scheduler's TF Serving semantics on a recording
servable, then `deeplab serve --enable_batching` end to end: concurrent clients with different CamVid frames get
bit for bit the labels the SavedModel gives each frame alone, and the batch sizes the server ran show in its
Prometheus metrics."""
import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from keras_deeplab.serving.batching import (QUEUE_FULL_MESSAGE, BatchingOptions, BatchScheduler,
                                            read_batching_parameters)
from keras_deeplab.serving.json_tensor import ServingError, image_headers
from helpers.serving_models import camvid_pixels, CAMVID_FILES, png_bytes, png_declaring


class RecordingServable:
    """Answers `y = 10 x + 1` row by row and `rows`, each row's position in the batch; records the batch sizes it
    ran; `gate` (an Event) holds every run until it is set."""

    version = 1

    def __init__(self, gate=None):
        self.batches = []
        self.gate = gate
        self.started = threading.Event()
        self.lock = threading.Lock()

    def run(self, signature_name, inputs, timeout_ms=None):
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        with self.lock:
            self.batches.append(len(inputs["x"]))
        return {"y": np.asarray(inputs["x"]) * 10 + 1, "rows": np.arange(len(inputs["x"]))}


def run_concurrently(scheduler, servable, tasks):
    with ThreadPoolExecutor(len(tasks)) as pool:
        futures = [pool.submit(scheduler.run, servable, "serving_default", task) for task in tasks]
        return [future.result() for future in futures]


def test_concurrent_tasks_run_as_one_batch_and_get_their_own_rows():
    servable = RecordingServable()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=300_000, num_batch_threads=1))
    tasks = [{"x": np.full((rows, 3), task, np.float32)} for task, rows in enumerate((1, 2, 1, 3))]
    try:
        results = run_concurrently(scheduler, servable, tasks)
    finally:
        scheduler.stop()
    assert sum(servable.batches) == 7 and len(servable.batches) < 4  # merged: fewer runs than tasks
    for task, result in zip(tasks, results):
        np.testing.assert_array_equal(result["y"], task["x"] * 10 + 1)  # each task gets exactly its own rows


def test_a_full_batch_runs_without_waiting_for_the_timeout():
    servable = RecordingServable()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, batch_timeout_micros=60_000_000, num_batch_threads=1))
    try:
        start = time.monotonic()
        run_concurrently(scheduler, servable, [{"x": np.zeros((1, 1))}, {"x": np.ones((1, 1))}])
        assert time.monotonic() - start < 30  # a 60 s timeout never elapsed: the batch ran when full
    finally:
        scheduler.stop()
    assert servable.batches == [2]


def test_allowed_batch_sizes_pad_with_the_first_row_and_the_padding_is_dropped():
    servable = RecordingServable()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8), num_batch_threads=1))
    try:
        result = scheduler.run(servable, "serving_default", {"x": np.array([[1.0], [2.0], [3.0]])})
    finally:
        scheduler.stop()
    assert servable.batches == [4]
    np.testing.assert_array_equal(result["y"], [[11.0], [21.0], [31.0]])
    np.testing.assert_array_equal(result["rows"], [0, 1, 2])


def test_a_full_queue_is_refused_at_once_and_a_too_large_task_is_refused():
    gate = threading.Event()
    servable = RecordingServable(gate)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1))
    with ThreadPoolExecutor(2) as pool:
        try:
            running = pool.submit(scheduler.run, servable, "s", {"x": np.zeros((1, 1))})
            assert servable.started.wait(10)  # the first batch runs (held by the gate), the queue is empty
            queued = pool.submit(scheduler.run, servable, "s", {"x": np.ones((1, 1))})
            deadline = time.monotonic() + 10
            while not scheduler._queues and time.monotonic() < deadline:  # the second waits: the queue is full
                time.sleep(0.01)
            with pytest.raises(ServingError) as refused:
                scheduler.run(servable, "s", {"x": np.ones((1, 1))})
            assert (refused.value.status, refused.value.code, refused.value.message) == (
                503, "UNAVAILABLE", QUEUE_FULL_MESSAGE)
            with pytest.raises(ServingError, match="Task size 2 is larger than maximum input batch size 1"):
                scheduler.run(servable, "s", {"x": np.ones((2, 1))})
        finally:
            gate.set()
            running.result(10), queued.result(10)
            scheduler.stop()
    assert servable.batches == [1, 1]


def test_tasks_that_differ_in_shape_or_image_size_never_share_a_batch():
    servable = RecordingServable()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=300_000, num_batch_threads=1))
    try:
        results = run_concurrently(scheduler, servable, [{"x": np.zeros((1, 2))}, {"x": np.zeros((1, 3))},
                                                         {"x": np.zeros((1, 2))}])
    finally:
        scheduler.stop()
    assert sorted(servable.batches) == [1, 2]
    assert [r["y"].shape for r in results] == [(1, 2), (1, 3), (1, 2)]
    from keras_deeplab.serving.batching import compatibility_key

    def key_of(image):
        inputs = {"image_bytes": np.array([image], object)}
        return compatibility_key(inputs, image_headers(inputs))

    small, large = (png_bytes(np.zeros(shape, np.uint8)) for shape in ((4, 6, 3), (5, 6, 3)))
    assert key_of(small) == key_of(png_bytes(np.ones((4, 6, 3), np.uint8)))
    assert key_of(small) != key_of(large)
    assert key_of(b"not an image") is None


def test_an_image_past_pillows_limit_is_refused_with_400_before_it_queues():
    """With batching the header is read for the batch key even without --max_image_pixels: an image declaring more
    pixels than Pillow's decompression-bomb limit is a client error naming the item, not a server error."""
    servable = RecordingServable()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=1000, num_batch_threads=1))
    try:
        with pytest.raises(ServingError, match="item 0 declares more pixels than Pillow's") as caught:
            scheduler.run(servable, "serving_default", {"image_bytes": np.array([png_declaring(20000, 20000)], object)})
    finally:
        scheduler.stop()
    assert caught.value.status == 400 and servable.batches == []


def test_batching_parameters_file(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 5000 }\n"
                    "max_enqueued_batches { value: 3 }\nnum_batch_threads { value: 2 }\n"
                    "allowed_batch_sizes: 4\nallowed_batch_sizes: 16\npad_variable_length_inputs: true\n")
    assert read_batching_parameters(path) == BatchingOptions(16, 5000, 3, 2, (4, 16), True)
    path.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    with pytest.raises(ValueError, match=r"batching.config: final entry in allowed_batch_sizes \(8\) must equal "
                                         r"max_batch_size \(16\)"):
        read_batching_parameters(path)
    path.write_text("max_batch_sise { value: 16 }\n")
    with pytest.raises(ValueError, match="max_batch_sise"):
        read_batching_parameters(path)


# ---- End to end: deeplab serve --enable_batching ----

MODEL = "deeplabv3"
CLIENTS = 6


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from keras_deeplab import export
    from helpers.serving_models import camvid_frames, tiny_deeplab

    base = tmp_path_factory.mktemp("saved_models") / MODEL
    export.export_saved_model(tiny_deeplab(), base, check_images=camvid_frames()[:1])
    return base


def frames():
    """Six different CamVid frames as PNG bytes: three files at two sizes (two size groups of three)."""
    return [png_bytes(camvid_pixels(path, size)) for size in ((96, 72), (128, 96)) for path in CAMVID_FILES]


def test_concurrent_clients_get_their_labels_alone_bit_for_bit_and_batch_sizes_show_in_metrics(base_dir, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from keras_deeplab.serving.servable import Servable
    from helpers.model_server import deeplab_serve

    images = frames()
    alone = Servable(sorted(base_dir.iterdir())[-1], version=1, warmup=False)
    try:
        references = [alone.run("serving_default", {"image_bytes": np.array([image], object)})["labels"][0]
                      for image in images]
    finally:
        alone.retire()
    (tmp_path / "batching.config").write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000000 }\nnum_batch_threads { value: 1 }\n"
        "max_enqueued_batches { value: 4 }\n")
    (tmp_path / "monitoring.config").write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    with deeplab_serve(base_dir, MODEL, tmp_path / "server.log", "--enable_batching",
                       f"--batching_parameters_file={tmp_path / 'batching.config'}",
                       f"--monitoring_config_file={tmp_path / 'monitoring.config'}") as (url, _):
        def predict(image):
            body = {"instances": [{"b64": base64.b64encode(image).decode()}]}
            reply = httpx.post(f"{url}/v1/models/{MODEL}:predict", json=body, timeout=120)
            assert reply.status_code == 200, reply.text
            return np.array(reply.json()["predictions"][0]["labels"], np.int32)

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(predict, images))
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
    for answer, reference in zip(answers, references):
        np.testing.assert_array_equal(answer, reference)  # bit for bit: batching changed no client's labels
    families = {family.name: family for family in text_string_to_metric_families(metrics)}
    batch_sizes = [family for name, family in families.items() if "batch_size" in name]
    assert batch_sizes, sorted(families)
    counts = {sample.name.rsplit("_", 1)[-1]: sample.value for sample in batch_sizes[0].samples
              if sample.name.endswith(("_count", "_sum"))}
    assert counts["sum"] == CLIENTS and counts["count"] < CLIENTS  # the 6 requests ran in fewer, larger batches
