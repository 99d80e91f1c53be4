"""Benchmark harness: each measured case runs in its own worker process, cases of a group alternate run by run.

Why worker processes: TF and torch each keep their own thread pools, and the peak resident memory of a case is
only meaningful per process. A case is a factory `"module:function"` (imported in the worker, after the thread
environment is set) returning an object with `run()` (one measured iteration) and optionally `meta` (a dict
merged into the result) and extra methods the driver may `call`. The driver warms every case up, then runs
the cases round-robin (A, B, A, B, ...) so that machine drift and contention from other processes hit every
case alike; ratios are computed per round from the adjacent runs. A case's peak RSS is its worker's VmHWM over
its whole life, read right after its runs and before any check (MAC count, output comparison) the driver asks of
it: what a process that only builds and runs the case pays.

A case may run under another Python interpreter than the driver's (a spec's "python", e.g. a virtual environment
with torch where the driver's has TF only): its worker is then this file run as a script by that interpreter,
talking to the driver over an inherited socket, with the same protocol.
"""
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
PAUSE_BETWEEN_RUNS_S = 0.3  # lets the previous worker's spinning OpenMP threads go to sleep

# Peer variants of train.py and inference.py: TorchInference/TorchTrainStep kwargs, and "env" for the worker's
# environment. torchvision_thp: torch's CPU allocations on transparent huge pages (its lever against page faults).
PEER_VARIANTS = {"torchvision": {"channels_last": False}, "torchvision_cl": {"channels_last": True},
                 "torchvision_thp": {"channels_last": False, "env": {"THP_MEM_ALLOC_ENABLE": "1"}}}


def thread_environment(threads):
    """Environment variables that pin TF, torch, OpenMP and MKL to `threads` threads."""
    value = str(threads)
    return {"OMP_NUM_THREADS": value, "MKL_NUM_THREADS": value, "OPENBLAS_NUM_THREADS": value,
            "TF_NUM_INTRAOP_THREADS": value,
            "TF_NUM_INTEROP_THREADS": value, "TF_CPP_MIN_LOG_LEVEL": "2"}


DEVICES = ("cpu", "gpu")


def use_device(device):
    """Makes this process and the workers it starts measure on `device` (they inherit the environment): "cpu"
    hides every GPU from TF and torch, so a GPU machine still measures its CPU; "gpu" runs both frameworks on the
    first GPU in strict float32 (TF32 off on both sides, cases.py)."""
    if device not in DEVICES:
        raise SystemExit(f"--device must be one of {DEVICES}, got {device!r}")
    os.environ["BENCH_DEVICE"] = device
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:
        # the cases' processes share the GPU: TF (workers and `deeplab serve`) must not take all its memory at start
        os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"


def gpu_names():
    """The GPUs nvidia-smi lists (name and memory), or [] without one."""
    import subprocess

    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def _status_mb(field, pid):
    """A memory field of /proc/PID/status ("VmHWM", "VmRSS") in MiB, or None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def peak_rss_mb(pid="self"):
    """Peak resident set size (VmHWM) of a process in MiB, or None if unreadable."""
    return _status_mb("VmHWM", pid)


def current_rss_mb(pid="self"):
    """Current resident set size (VmRSS) of a process in MiB, or None if unreadable."""
    return _status_mb("VmRSS", pid)


def add_run_arguments(parser, *, repeats, threads=None):
    """The options of a driver that alternates cases in workers: --threads (default: every core), --repeats,
    --warmup and --device."""
    parser.add_argument("--threads", type=int, default=threads or os.cpu_count())
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="gpu: both frameworks on the first GPU, float32 without TF32; cpu hides the GPUs")


def add_suite_arguments(parser, *, our_variants, paper_models, ours, peers, paper_default):
    """The options that choose the cases of `case_specs`: --suite, --backbone, --ours, --peers, --paper-models."""
    parser.add_argument("--suite", choices=("peer", "paper"), default="peer")
    parser.add_argument("--backbone", choices=("resnet50", "resnet101"), default="resnet50",
                        help="peer suite: the ResNet depth of both models")
    parser.add_argument("--ours", default=ours,
                        help=f"peer suite: comma-separated variants of ours, from {sorted(our_variants)}")
    parser.add_argument("--peers", default=peers,
                        help=f"peer suite: comma-separated peer variants, from {sorted(PEER_VARIANTS)}")
    parser.add_argument("--paper-models", default=paper_default,
                        help=f"paper suite: comma-separated models, from {sorted(paper_models)}")
    add_torch_python_argument(parser)


def add_torch_python_argument(parser):
    """--torch-python: the interpreter of the torch workers (default: the driver's)."""
    parser.add_argument("--torch-python", default=sys.executable,
                        help="Python interpreter with torch, torchvision and NumPy for the peer's workers "
                             "(e.g. /tmp/torchenv/bin/python)")


def tensorflow_in_process(threads):
    """TensorFlow for a benchmark that measures in its own process (no workers), its thread pools fixed to
    `threads`; keras_deeplab is imported first, as by users, which selects TF's pooled CPU allocator."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras_deeplab  # noqa: F401
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf


def _load_factory(spec):
    module_name, _, function = spec.partition(":")
    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    module = __import__(module_name)
    return getattr(module, function)


def _worker_main(conn, factory_spec, kwargs, env):
    os.environ.update(env)
    try:
        factory = _load_factory(factory_spec)
        rss_before = current_rss_mb()
        case = factory(**kwargs)
        meta = dict(getattr(case, "meta", {}) or {})
        meta.setdefault("rss_after_build_mb", current_rss_mb())
        meta.setdefault("rss_before_build_mb", rss_before)
        conn.send(("ok", meta))
        while True:
            command, args = conn.recv()
            if command == "run":
                start, start_cpu = time.perf_counter(), time.process_time()
                case.run()
                conn.send(("ok", (time.perf_counter() - start, time.process_time() - start_cpu)))
            elif command == "call":
                name, call_args = args
                conn.send(("ok", getattr(case, name)(*call_args)))
            elif command == "peak_rss":
                conn.send(("ok", peak_rss_mb()))
            elif command == "stop":
                close = getattr(case, "close", None)
                if close:
                    close()
                conn.send(("ok", None))
                return
    except BaseException:  # noqa: BLE001 - reported to the driver, which raises it
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:  # noqa: BLE001
            pass


class _InterpreterProcess:
    """A worker under another Python interpreter: this file run as a script by `python`, given one end of a
    socket pair (`conn`) as an inherited file descriptor. Stands in for a multiprocessing.Process in `Worker`."""

    def __init__(self, python, conn):
        fd = conn.fileno()
        self.popen = subprocess.Popen([python, os.path.abspath(__file__), "--worker-fd", str(fd)],
                                      pass_fds=(fd,), cwd=BENCH_DIR)

    def join(self, timeout=None):
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def pid(self):
        return self.popen.pid

    @property
    def exitcode(self):
        return self.popen.poll()

    def is_alive(self):
        return self.popen.poll() is None

    def kill(self):
        self.popen.kill()
        self.popen.wait()


class CaseLimitExceeded(Exception):
    """A worker went past its time limit or its resident-memory limit and was killed; `status` says which."""

    def __init__(self, status, detail):
        super().__init__(f"{status}: {detail}")
        self.status = status


class Worker:
    """A case in its own (spawned) process; with `python`, in a process of that interpreter instead of the
    driver's (which then needs only the standard library and what the case imports). `time_limit_s` (the whole
    life of the worker) and `rss_limit_mb` (its resident memory, checked every 0.2 s): past either, the worker is
    killed and `CaseLimitExceeded` raised."""

    def __init__(self, name, factory_spec, kwargs=None, threads=2, env=None, python=None, time_limit_s=None,
                 rss_limit_mb=None):
        self.name = name
        self.deadline = time.monotonic() + (time_limit_s or 3600 * 24)
        self.rss_limit_mb = rss_limit_mb
        worker_args = (factory_spec, kwargs or {}, {**thread_environment(threads), **(env or {})})
        if python is None:
            context = multiprocessing.get_context("spawn")
            self.conn, child = context.Pipe()
            self.process = context.Process(target=_worker_main, args=(child, *worker_args), daemon=True)
            self.process.start()
        else:
            self.conn, child = multiprocessing.Pipe()  # duplex: a socket pair on POSIX
            self.process = _InterpreterProcess(python, child)
            child.close()  # the worker holds its end: its exit shows here as end of file
            self.conn.send(worker_args)
        self.meta = self._receive()

    def _receive(self):
        while not self.conn.poll(0.2):
            rss = current_rss_mb(self.process.pid)
            if self.rss_limit_mb and rss and rss > self.rss_limit_mb:
                self.process.kill()
                raise CaseLimitExceeded("out of memory", f"RSS {rss:.0f} MiB > limit {self.rss_limit_mb:.0f} MiB")
            if time.monotonic() > self.deadline:
                self.process.kill()
                raise CaseLimitExceeded("past the time limit", f"{self.name} killed")
        try:
            status, value = self.conn.recv()
        except EOFError:  # the worker died without a word, e.g. killed by the kernel's OOM killer
            raise RuntimeError(f"worker {self.name} died (exit status {self._exit_status()})") from None
        if status == "error":
            raise RuntimeError(f"worker {self.name} failed:\n{value}")
        return value

    def _exit_status(self):
        self.process.join(5)
        return self.process.exitcode

    def request(self, command, args=None):
        self.conn.send((command, args))
        return self._receive()

    def run(self):
        """One measured run: (wall seconds, CPU seconds of all the worker's threads)."""
        return self.request("run")

    def call(self, name, *args):
        return self.request("call", (name, args))

    def stop(self):
        try:
            self.request("stop")
        except (RuntimeError, EOFError, BrokenPipeError, CaseLimitExceeded):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()


def run_cases(specs, repeats, warmup, threads, after_start=None, checks=None, one_at_a_time=False):
    """Starts one worker per spec ({"name", "factory", "kwargs", "env", "python"}) in order, calling
    `after_start(spec, worker)` after each start; alternates them (see `run_alternating`), reads each worker's
    peak RSS, and only then calls `checks(workers)` (MAC counts, output comparisons: whatever memory they take
    stays out of the peak); then stops them. `one_at_a_time`: for cases that do not fit in memory together, each
    case runs alone (start, warm-up, runs, stop), one after another; no `checks`.

    Returns (times, metas with "peak_rss_mb", whatever `checks` returned).
    """
    if one_at_a_time:
        times, metas = {}, {}
        for spec in specs:
            case_times, case_metas, _ = run_cases([spec], repeats, warmup, threads, after_start)
            times.update(case_times)
            metas.update(case_metas)
        return times, metas, None
    workers = []
    try:
        for spec in specs:
            log(f"starting {spec['name']}")
            workers.append(Worker(spec["name"], spec["factory"], spec.get("kwargs"), threads, spec.get("env"),
                                  spec.get("python")))
            if after_start:
                after_start(spec, workers[-1])
        times = run_alternating(workers, repeats, warmup, log)
        metas = {w.name: {**w.meta, "peak_rss_mb": w.request("peak_rss")} for w in workers}
        return times, metas, checks(workers) if checks else None
    finally:
        for worker in workers:
            worker.stop()


def run_alone(spec, repeats, warmup, threads, time_limit_s=None, rss_limit_mb=None):
    """One case in a fresh worker of its own: build, `warmup` runs, `repeats` runs, then its peak RSS (the
    process's VmHWM: interpreter, libraries, model, runs; what a user's process that does only this pays).

    Returns {"status": "ok", "times", "meta" with "peak_rss_mb"} or {"status": "out of memory" | "past the time
    limit" | "failed", "error"}; a case past `time_limit_s` or `rss_limit_mb` is killed, not waited for."""
    worker = None
    try:
        worker = Worker(spec["name"], spec["factory"], spec.get("kwargs"), threads, spec.get("env"),
                        spec.get("python"), time_limit_s, rss_limit_mb)
        times = run_alternating([worker], repeats, warmup, log)[worker.name]
        return {"status": "ok", "times": times, "meta": {**worker.meta, "peak_rss_mb": worker.request("peak_rss")}}
    except CaseLimitExceeded as error:
        return {"status": error.status, "error": str(error)}
    except RuntimeError as error:  # the case raised (e.g. MemoryError) or its worker died
        return {"status": "failed", "error": str(error)[-2000:]}
    finally:
        if worker:
            worker.stop()


def run_suite(args, case_specs, checks=None, one_at_a_time=False):
    """`run_cases` for the specs `case_specs(args, state_path)` returns, where the first peer to start writes the
    torchvision weights (its `save_state`) to `state_path`, a temporary file the Keras cases load.

    Returns (specs, times, metas, what `checks(workers, specs)` returned)."""
    with tempfile.TemporaryDirectory(prefix="deeplab_bench_") as folder:
        state_path = os.path.join(folder, "torchvision_state.npz")
        specs = case_specs(args, state_path)

        def save_peer_state(spec, worker):
            if spec["role"] == "peer" and not os.path.exists(state_path):
                worker.call("save_state", state_path)

        times, metas, extra = run_cases(specs, args.repeats, args.warmup, args.threads, after_start=save_peer_state,
                                        checks=checks and (lambda workers: checks(workers, specs)),
                                        one_at_a_time=one_at_a_time)
    return specs, times, metas, extra


def case_statistics(times):
    """Wall and CPU statistics of one case's {"wall": [...], "cpu": [...]}."""
    return {"wall_s": times["wall"], "cpu_s": times["cpu"], **summarize(times["wall"]),
            **summarize(times["cpu"], "cpu_")}


def pair_statistics(times_a, times_b):
    """Per-round wall and CPU ratios a/b."""
    return {**paired_ratios(times_a["wall"], times_b["wall"]),
            **paired_ratios(times_a["cpu"], times_b["cpu"], "cpu_")}


def summarize(times, prefix=""):
    """Median, min, max and relative spread ((max - min) / median) of a list of seconds."""
    median = statistics.median(times)
    return {f"{prefix}median_s": median, f"{prefix}min_s": min(times), f"{prefix}max_s": max(times),
            f"{prefix}spread": (max(times) - min(times)) / median if median else math.nan}


def run_alternating(workers, repeats, warmup=1, log=None):
    """Warms each worker up `warmup` times, then runs `repeats` rounds of one run per worker in turn.

    Returns {worker name: {"wall": [seconds per round], "cpu": [CPU seconds per round]}}.
    """
    for _ in range(warmup):
        for worker in workers:
            worker.run()
            time.sleep(PAUSE_BETWEEN_RUNS_S)
    times = {worker.name: {"wall": [], "cpu": []} for worker in workers}
    for round_index in range(repeats):
        for worker in workers:
            wall, cpu = worker.run()
            times[worker.name]["wall"].append(wall)
            times[worker.name]["cpu"].append(cpu)
            time.sleep(PAUSE_BETWEEN_RUNS_S)
        if log:
            log(f"round {round_index + 1}/{repeats}: " + ", ".join(
                f"{name} {values['wall'][-1]:.3f}s (cpu {values['cpu'][-1]:.3f}s)" for name, values in times.items()))
    return times


def paired_ratios(times_a, times_b, prefix=""):
    """Per-round ratios a/b (runs adjacent in time) and their median, min and max."""
    ratios = [a / b for a, b in zip(times_a, times_b)]
    return {f"{prefix}ratios": ratios, f"{prefix}ratio_median": statistics.median(ratios),
            f"{prefix}ratio_min": min(ratios), f"{prefix}ratio_max": max(ratios)}


def library_versions():
    """Versions of the libraries benchmarked (read from package metadata, without importing them)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "torch", "torchvision", "numpy", "keras_deeplab"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def machine_info(threads):
    """CPU model, core count, memory, load average, the fixed thread count, and the device measured (with the
    GPUs' names when it is "gpu")."""
    cpu = platform.processor() or "unknown"
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mhz = None
    try:
        with open("/proc/cpuinfo") as f:
            mhz = next(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    except (OSError, StopIteration, ValueError):
        pass
    memory_gb = None
    try:
        with open("/proc/meminfo") as f:
            memory_gb = int(f.readline().split()[1]) / 2 ** 20
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory_gb, 1) if memory_gb else None,
            "simd": sorted(flag for flag in flags if flag in ("avx", "avx2", "fma", "avx512f", "avx512_bf16",
                                                              "amx_tile")),
            "cpu_mhz": mhz,
            # Two 256-bit FMA units per core (AVX2 on AMD Zen 3/4): 32 fp32 FLOP per cycle. An assumption, for
            # context only; the measured matmul is the reference.
            "assumed_fp32_peak_gflops": (os.cpu_count() * 32 * mhz / 1000
                                         if mhz and {"avx2", "fma"} <= flags else None),
            "threads": threads, "load_average_1_5_15": os.getloadavg(),
            "device": os.environ.get("BENCH_DEVICE", "cpu"),
            "gpus": gpu_names() if os.environ.get("BENCH_DEVICE") == "gpu" else [],
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "versions": library_versions()}


def emit(record):
    """Prints one JSON line (a measurement or the run's context) and flushes."""
    print(json.dumps(record, default=_json_default), flush=True)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def markdown_table(rows, columns):
    """A Markdown table of `rows` (dicts) with `columns` [(key, header, format)]."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else (fmt.format(value) if fmt else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def log(message):
    """Progress to stderr (stdout carries only JSON lines and the final table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def case_specs(args, state_path, *, workload, our_variants, peer_variants, paper_models):
    """The cases of a run of `workload` ("Inference" or "TrainStep": cases:Torch<workload> / cases:Keras<workload>).

    Peer suite: torchvision variants first (the first peer writes the weights the Keras cases load), then our
    variants of the same structure at `args.output_stride` (8 where absent). Paper suite: our paper-setting models
    on their own."""
    specs = []
    output_stride = getattr(args, "output_stride", 8)
    if args.suite == "peer":
        for name in filter(None, args.peers.split(",")):
            peer_kwargs = dict(peer_variants[name])
            specs.append({"name": name, "factory": f"cases:Torch{workload}", "role": "peer",
                          "python": args.torch_python,
                          "env": peer_kwargs.pop("env", {}), "backbone": args.backbone,
                          "output_stride": output_stride,
                          "kwargs": {"backbone": args.backbone, "batch": args.batch, "size": args.size,
                                     "output_stride": output_stride, **peer_kwargs}})
        if not specs:
            raise SystemExit("the peer suite needs at least one peer variant (--peers)")
        for name in filter(None, args.ours.split(",")):
            case_kwargs, model_kwargs, env = our_variants[name]
            specs.append({"name": name, "factory": f"cases:Keras{workload}", "role": "ours", "env": env,
                          "backbone": args.backbone, "output_stride": output_stride,
                          "kwargs": {"batch": args.batch, "size": args.size, **case_kwargs,
                                     "model_kwargs": {"source": "torchvision", "state_path": state_path,
                                                      "output_stride": output_stride, **model_kwargs}}})
    else:
        for name in filter(None, args.paper_models.split(",")):
            model = dict(paper_models[name])
            case_kwargs = model.pop("case_kwargs", {})  # e.g. {"fold_bn": True}
            specs.append({"name": name, "factory": f"cases:Keras{workload}", "role": "ours", **model,
                          "kwargs": {"batch": args.batch, "size": args.size, **case_kwargs,
                                     "model_kwargs": {"source": "paper", **model}}})
    return specs


def _interpreter_worker(fd):
    """Entry of a worker started by `_InterpreterProcess`: the case's (factory, kwargs, environment) arrive first
    on the socket `fd`, then the driver's commands."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    _worker_main(conn, *conn.recv())


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker-fd"] or len(sys.argv) != 3:
        raise SystemExit("harness.py is a library; run as a script it is a worker: harness.py --worker-fd FD")
    _interpreter_worker(int(sys.argv[2]))
