"""Serving: the exported SavedModel as TF Serving runs it (TF1 Session) vs the in-process Keras model, and the
REST round trip through `deeplab serve` vs the bare Session run (the REST overhead).

    python benchmarks/serving.py --size 513 --repeats 5 --concurrency 1,8

The model is our torchvision-compatible ResNet-50 DeepLabV3 at OS8 (seeded random weights; --backbone,
--output-stride and --atrous choose others), exported with `keras_deeplab.export.export_saved_model`
(version 1, checked by the exporter). The request is one JPEG (a CamVid street photo from sample_data/,
resized to --size, quality 90) through the `serving_default` signature (image bytes in; label map, PNG label
map and size out). Cases, alternating request by request after warm-up:

- keras: the export's `serving_default` function run in process on the model (`tf.function`, no Session);
- session: `keras_deeplab.serving.servable.Servable` (TF1 SavedModel loader, Session.run by tensor names);
- rest: one POST /v1/models/deeplabv3:predict to `deeplab serve` (a subprocess with the same thread count)
  from a client process, reply parsed as JSON (what `TFServingClient.predict_request` does).

Then the REST throughput with N concurrent clients (--concurrency), each sending its own image (client i: street
photo i of the sample, so answers can be told apart): requests/s and p50/p99 latency over --requests-per-client
requests each, with request batching off and on (--batching off,on: a second `deeplab serve --enable_batching` with
the --max-batch-size / --batch-timeout-micros / --num-batch-threads parameters). Every reply's labels are compared
with the same image's labels from the server without batching: "answers changed" counts the replies that differ
in any pixel. Peak RSS: per worker (read after its runs, before the label check), and
the server's VmHWM over its whole life (model load, warm-up, every request so far; never reset): after the
single-client runs, then after each concurrency level.
"""
import argparse
import base64
import glob
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from harness import (REPO_ROOT, Worker, add_run_arguments, case_statistics, emit, log, machine_info, markdown_table,
                     pair_statistics, peak_rss_mb, run_cases, thread_environment, use_device)

MODEL_NAME = "deeplabv3"
SIGNATURE = "serving_default"


def request_jpeg(path, size, quality=90, index=0):
    """A `size` x `size` JPEG of sample street photo `index` (or of a synthetic image where the sample is
    missing)."""
    from PIL import Image

    samples = sorted(glob.glob(os.path.join(REPO_ROOT, "sample_data", "camvid", "train", "*.png")))
    if samples:
        image = Image.open(samples[index % len(samples)]).convert("RGB").resize((size, size), Image.BILINEAR)
    else:
        yy, xx = np.mgrid[index:index + size, 0:size]
        image = Image.fromarray(np.stack([yy % 256, xx % 256, (yy + xx) % 256], -1).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    return path


class Exporter:
    """Builds the model, saves it as .keras (for the in-process case) and exports SavedModel version 1."""

    def __init__(self, folder, backbone="resnet50", output_stride=8, atrous="auto", fold_bn=True):
        from cases import _tf

        _tf()
        import keras

        from keras_deeplab.convert import TORCHVISION_CONFIG
        from keras_deeplab.export import export_saved_model
        from keras_deeplab.model import DeepLabV3

        keras.utils.set_random_seed(0)
        config = dict(TORCHVISION_CONFIG, output_stride=output_stride,
                      atrous_rates=tuple(r * 8 // output_stride for r in TORCHVISION_CONFIG["atrous_rates"]))
        model = DeepLabV3(num_classes=21, backbone=f"{backbone}_v1.5", preprocessing="torch",
                          atrous_implementation=atrous, **config)
        model.save(os.path.join(folder, "model.keras"))
        start = time.perf_counter()
        version_dir = export_saved_model(model, os.path.join(folder, MODEL_NAME), version=1, fold_batch_norm=fold_bn)
        self.meta = {"export_s": time.perf_counter() - start, "version_dir": str(version_dir)}

    def run(self):
        pass


class KerasServing:
    """The export's serving function, in process, on the loaded .keras model."""

    def __init__(self, folder, jpeg_path, fold_bn=True):
        from cases import _tf

        tf = _tf()
        import keras

        from keras_deeplab.export import SERVING_SIGNATURE, build_export_archive

        model = keras.saving.load_model(os.path.join(folder, "model.keras"))
        if fold_bn:
            from keras_deeplab.fold import fold_batch_norm

            model = fold_batch_norm(model)
        archive, _ = build_export_archive(model)
        # ExportArchive keeps each endpoint's tf.function on its trackable (Keras 3 internals).
        self.serve = getattr(archive._tf_trackable, SERVING_SIGNATURE)
        with open(jpeg_path, "rb") as f:
            self.request = tf.constant([f.read()])
        self.labels = self.serve(self.request)["labels"].numpy()
        self.meta = {"framework": "tensorflow", "path": "keras in-process tf.function"}

    def run(self):
        self.serve(self.request)

    def output(self):
        return self.labels


class SessionServing:
    """The exported version in a TF1 Session, as TF Serving runs it (keras_deeplab.serving.servable)."""

    def __init__(self, version_dir, jpeg_path, threads=None):
        from cases import _tf

        tf = _tf()
        from keras_deeplab.serving.servable import Servable

        threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0"))
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                          inter_op_parallelism_threads=threads)
        self.servable = Servable(version_dir, version=1, session_config=config, warmup=True)
        with open(jpeg_path, "rb") as f:
            self.inputs = {"image_bytes": np.array([f.read()], dtype=object)}
        self.labels = self.servable.run(SIGNATURE, self.inputs)["labels"]
        self.meta = {"framework": "tensorflow", "path": "TF1 Session"}

    def run(self):
        self.servable.run(SIGNATURE, self.inputs)

    def output(self):
        return self.labels


class RestClient:
    """One predict request to the server per run, the reply parsed as JSON; `concurrent(n, k)` measures n clients
    sending k requests each."""

    def __init__(self, url, jpeg_path):
        from keras_deeplab.serving.client import TFServingClient

        self.url = url
        with open(jpeg_path, "rb") as f:
            self.instance = {"b64": base64.b64encode(f.read()).decode("ascii")}
        self.client = TFServingClient(url, MODEL_NAME, timeout=600)
        reply = self.client.predict_request(instances=[self.instance], signature_name=SIGNATURE)
        prediction = reply["predictions"][0]
        self.labels = np.asarray(prediction["labels"], np.int32)[None]
        self.reply_bytes = len(json.dumps(reply))
        self.meta = {"path": "REST", "reply_bytes": self.reply_bytes}

    def run(self):
        self.client.predict_request(instances=[self.instance], signature_name=SIGNATURE)

    def output(self):
        return self.labels

    def concurrent(self, clients, requests_per_client, jpeg_paths):
        """(total seconds, [latency seconds], {image index: [labels digest of each reply]}, [error of each failed
        request]) for `clients` threads, each with its own connection, client i sending `jpeg_paths[i % len]`."""
        import hashlib

        from keras_deeplab.serving.client import TFServingClient, TFServingError

        latencies, digests, errors, lock = [], {}, [], threading.Lock()

        def worker(index):
            with open(jpeg_paths[index], "rb") as f:
                instance = {"b64": base64.b64encode(f.read()).decode("ascii")}
            with TFServingClient(self.url, MODEL_NAME, timeout=600) as client:
                for _ in range(requests_per_client):
                    start = time.perf_counter()
                    try:
                        reply = client.predict_request(instances=[instance], signature_name=SIGNATURE)
                    except TFServingError as error:
                        with lock:
                            errors.append(f"{error.status_code}: {error}")
                        continue
                    elapsed = time.perf_counter() - start
                    labels = np.asarray(reply["predictions"][0]["labels"], np.int32)
                    with lock:
                        latencies.append(elapsed)
                        digests.setdefault(index, []).append(hashlib.sha256(labels.tobytes()).hexdigest())

        threads = [threading.Thread(target=worker, args=(i % len(jpeg_paths),)) for i in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start, latencies, digests, errors

    def close(self):
        self.client.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder, port, threads, log_path, options=()):
    """`deeplab serve` on the exported base path (with extra `options`); returns the process once the model is
    AVAILABLE."""
    import httpx

    deeplab = os.path.join(os.path.dirname(sys.executable), "deeplab")
    command = [deeplab, "serve", "--model_name", MODEL_NAME, "--model_base_path", os.path.join(folder, MODEL_NAME),
               "--rest_api_port", str(port), "--tensorflow_intra_op_parallelism", str(threads),
               "--tensorflow_inter_op_parallelism", str(threads), "--rest_api_timeout_in_ms", "3600000", *options]
    log_file = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                               env={**os.environ, **thread_environment(threads)})
    url = f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"deeplab serve exited with {process.returncode}; see {log_path}")
        try:
            status = httpx.get(url, timeout=5).json()
            if any(v.get("state") == "AVAILABLE" for v in status.get("model_version_status", [])):
                return process
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    process.kill()
    raise TimeoutError(f"deeplab serve did not make the model available in time; see {log_path}")


def stop_server(server):
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


def measure_concurrency(port, server, jpeg, jpegs, args):
    """{clients: requests/s, p50/p99, server peak RSS, reply digests} for each of --concurrency, from a fresh client
    worker."""
    results = {}
    client = Worker("rest_concurrent", "serving:RestClient", {"url": f"http://127.0.0.1:{port}", "jpeg_path": jpeg},
                    args.threads)
    try:
        for clients in (int(c) for c in args.concurrency.split(",") if c):
            log(f"{clients} concurrent clients x {args.requests_per_client} requests")
            total, latencies, digests, errors = client.call("concurrent", clients, args.requests_per_client, jpegs)
            for error in errors:
                log(f"request failed: {error}")
            results[clients] = {"total_s": total, "latencies_s": latencies, "requests_per_s": len(latencies) / total,
                                "failed_requests": len(errors),
                                "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
                                "server_peak_rss_mb": peak_rss_mb(server.pid), "digests": digests}
    finally:
        client.stop()
    return results


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=("resnet50", "resnet101"), default="resnet50")
    parser.add_argument("--output-stride", type=int, choices=(8, 16), default=8)
    parser.add_argument("--atrous", choices=("auto", "native", "shifted", "winograd"), default="auto")
    parser.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                        help="export without folding BatchNorm (the library folds by default)")
    parser.add_argument("--size", type=int, default=513)
    add_run_arguments(parser, repeats=5)
    parser.add_argument("--concurrency", default="1,8", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--batching", default="off,on",
                        help="concurrency runs without (off) and with (on) --enable_batching (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="batching parameter (default: %(default)s)")
    parser.add_argument("--batch-timeout-micros", type=int, default=100000,
                        help="batching parameter (default: %(default)s)")
    parser.add_argument("--num-batch-threads", type=int, default=1, help="batching parameter (default: %(default)s)")
    parser.add_argument("--images", type=int, default=8, help="distinct request images (default: %(default)s)")
    return parser.parse_args(argv)


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else None


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    use_device(args.device)
    context = {"record": "context", "benchmark": "serving", "input_size": args.size, "batch": 1,
               "backbone": args.backbone, "output_stride": args.output_stride, "atrous": args.atrous,
               "fold_bn": args.fold_bn, "repeats": args.repeats, "warmup": args.warmup,
               **machine_info(args.threads)}
    emit(context)
    with tempfile.TemporaryDirectory(prefix="deeplab_bench_serving_") as folder:
        jpeg = request_jpeg(os.path.join(folder, "request.jpg"), args.size)
        exporter = Worker("export", "serving:Exporter", {"folder": folder, "backbone": args.backbone,
                                                         "output_stride": args.output_stride,
                                                         "atrous": args.atrous, "fold_bn": args.fold_bn},
                          args.threads)
        export_meta = exporter.meta
        exporter.stop()
        log(f"exported in {export_meta['export_s']:.1f} s")
        port = free_port()
        server = start_server(folder, port, args.threads, os.path.join(folder, "server.log"))
        log(f"deeplab serve is up (pid {server.pid})")
        try:
            specs = [
                {"name": "keras", "factory": "serving:KerasServing",
                 "kwargs": {"folder": folder, "jpeg_path": jpeg, "fold_bn": args.fold_bn}},
                {"name": "session", "factory": "serving:SessionServing",
                 "kwargs": {"version_dir": export_meta["version_dir"], "jpeg_path": jpeg}},
                {"name": "rest", "factory": "serving:RestClient",
                 "kwargs": {"url": f"http://127.0.0.1:{port}", "jpeg_path": jpeg}},
            ]

            def checks(workers):
                outputs = {w.name: w.call("output") for w in workers}
                return {name: int(np.sum(out != outputs["session"])) for name, out in outputs.items()}

            times, metas, mismatches = run_cases(specs, args.repeats, args.warmup, args.threads, checks=checks)
            server_peak_single = peak_rss_mb(server.pid)
            jpegs = [request_jpeg(os.path.join(folder, f"client{i}.jpg"), args.size, index=i)
                     for i in range(args.images)]
            concurrency = {}
            modes = [mode for mode in args.batching.split(",") if mode]
            if "off" in modes:
                concurrency["off"] = measure_concurrency(port, server, jpeg, jpegs, args)
        finally:
            stop_server(server)
        if "on" in modes:
            parameters = os.path.join(folder, "batching.config")
            with open(parameters, "w") as f:
                f.write(f"max_batch_size {{ value: {args.max_batch_size} }}\n"
                        f"batch_timeout_micros {{ value: {args.batch_timeout_micros} }}\n"
                        f"num_batch_threads {{ value: {args.num_batch_threads} }}\n"
                        "max_enqueued_batches { value: 1000 }\n")
            port = free_port()
            server = start_server(folder, port, args.threads, os.path.join(folder, "server_batching.log"),
                                  ("--enable_batching", f"--batching_parameters_file={parameters}"))
            try:
                concurrency["on"] = measure_concurrency(port, server, jpeg, jpegs, args)
            finally:
                stop_server(server)
    reference = {index: digests[0] for result in concurrency.get("off", {}).values()
                 for index, digests in result.pop("digests").items()}
    for results in concurrency.values():
        for result in results.values():
            digests = result.pop("digests", {})
            result["answers_changed"] = (sum(d != reference[i] for i, ds in digests.items() for d in ds
                                             if i in reference) if reference else None)
    context["load_average_at_end"] = os.getloadavg()
    report(args, context, export_meta, times, metas, mismatches, server_peak_single, concurrency)


def report(args, context, export_meta, times, metas, mismatches, server_peak_single, concurrency):
    rows = []
    for name in ("keras", "session", "rest"):
        stats = case_statistics(times[name])
        record = {"record": "measurement", "benchmark": "serving", "case": name, "input_size": args.size,
                  "batch": 1, "threads": args.threads, **stats, **metas[name],
                  "p50_s": percentile(times[name]["wall"], 50), "p99_s": percentile(times[name]["wall"], 99),
                  "requests_per_s": 1.0 / stats["median_s"], "label_pixels_differing_from_session": mismatches[name]}
        if name == "rest":
            record["server_peak_rss_mb"] = server_peak_single
        emit(record)
        rows.append(record)
    pairs = []
    for a, b, metric in (("session", "keras", "Session / in-process Keras"),
                         ("rest", "session", "REST round trip / bare Session run (REST overhead)")):
        pair = {"record": "ratio", "benchmark": "serving", "ours": a, "peer": b, "metric": metric,
                **pair_statistics(times[a], times[b])}
        emit(pair)
        pairs.append(pair)
    concurrent_rows = []
    for mode, results in concurrency.items():
        for clients, result in results.items():
            record = {"record": "measurement", "benchmark": "serving",
                      "case": f"rest_{clients}_clients_batching_{mode}", "clients": clients, "batching": mode,
                      "input_size": args.size, "threads": args.threads, **result}
            off = concurrency.get("off", {}).get(clients)
            if mode == "on" and off:
                record["requests_per_s_vs_off"] = result["requests_per_s"] / off["requests_per_s"]
            emit(record)
            concurrent_rows.append(record)
    print()
    print(f"Serving, {args.backbone} OS{args.output_stride} (atrous {args.atrous}, BN folded: {args.fold_bn}), "
          f"one {args.size}x{args.size} JPEG per request, {args.threads} threads, {context['cpu']} "
          f"({context['cores']} cores), load average {context['load_average_1_5_15'][0]:.1f} at start, "
          f"{context['load_average_at_end'][0]:.1f} at end; {args.repeats} alternating runs after {args.warmup} "
          f"warm-up; export took {export_meta['export_s']:.0f} s; {context['date']}")
    print()
    print(markdown_table(rows, [
        ("case", "path", None), ("p50_s", "p50 s", "{:.3f}"), ("p99_s", "p99 s", "{:.3f}"),
        ("min_s", "min", "{:.3f}"), ("max_s", "max", "{:.3f}"),
        ("cpu_median_s", "CPU s (client side for REST)", "{:.3f}"),
        ("requests_per_s", "req/s", "{:.3f}"), ("peak_rss_mb", "peak RSS MiB", "{:.0f}"),
        ("server_peak_rss_mb", "server peak RSS MiB", "{:.0f}"),
        ("label_pixels_differing_from_session", "labels != Session", None)]))
    print()
    print(markdown_table(pairs, [("metric", "ratio", None), ("ratio_median", "median", "{:.3f}"),
                                 ("ratio_min", "min", "{:.3f}"), ("ratio_max", "max", "{:.3f}")]))
    if concurrent_rows:
        print()
        print(markdown_table(concurrent_rows, [
            ("clients", "concurrent clients", None), ("batching", "batching", None),
            ("requests_per_s", "req/s", "{:.3f}"), ("requests_per_s_vs_off", "req/s vs off", "{:.2f}"),
            ("answers_changed", "answers changed", None), ("failed_requests", "failed", None),
            ("p50_s", "p50 s", "{:.2f}"), ("p99_s", "p99 s", "{:.2f}"), ("total_s", "total s", "{:.1f}"),
            ("server_peak_rss_mb", "server peak RSS MiB", "{:.0f}")]))


if __name__ == "__main__":
    main()
