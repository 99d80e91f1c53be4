"""Peak resident memory (VmHWM) of one inference or one training step, ours against torchvision, each measurement
in a fresh process.

    python benchmarks/memory_probe.py --mode infer --size 513,1025 --repeats 3
    python benchmarks/memory_probe.py --mode train --size 321,513 --repeats 2
    python benchmarks/memory_probe.py --mode infer --size 513 --sides ours --env KERAS_DEEPLAB_CPU_ALLOCATOR=system

Ours is the torchvision-compatible R50 OS8 (`deeplabv3_resnet50_coco_voc`'s architecture, randomly initialised;
memory does not depend on the weights); in inference float32 with BatchNorm folded, as served, and only the folded
model kept; the peer is torchvision's deeplabv3_resnet50 (cases.py builds both). Inference: batch 1, one
`model.predict` (`--call function`: the `tf.function` cases.KerasInference times; `--call dynamic`: traced for any
batch and size, as the export traces it; `--call any_batch`: for any batch of the image's size, as `predict` traces
it). Training: batch 2, the loss and optimizer of cases.KerasTrainStep /
TorchTrainStep. Each worker prints one JSON line: RSS (MiB) after the imports,
after building, after each call, VmHWM (the peak), the wall and CPU time of each call, for ours what TF's pooled
allocator holds and its peak; the driver runs the sides
alternately, `--repeats` times, and prints medians. `--env KEY=VALUE` (repeatable) sets levers for our workers.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PRESET = "deeplabv3_resnet50_coco_voc"


def memory_mb():
    """(VmRSS, VmHWM) of this process in MiB."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def timed(function):
    """(wall s, CPU s) of `function()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def our_inference(size, call):
    """(run, model) for one inference of ours as served: folded, the unfolded model dropped."""
    import gc

    from cases import _tf, build_model, random_images
    from keras_deeplab.fold import fold_batch_norm

    tf = _tf()
    model = fold_batch_norm(build_model(source="preset", preset=PRESET))
    gc.collect()
    images = random_images(1, size)
    if call == "predict":
        return lambda: model.predict(images, batch_size=1, verbose=0), model
    # "dynamic": traced for any batch and size, as the export traces the model (`export/signatures.py`);
    # "any_batch": for any batch of this size, as Keras' predict traces it (tf.data's batches)
    shapes = {"dynamic": [None, None, None, 3], "any_batch": [None, size, size, 3]}
    signature = [tf.TensorSpec(shapes[call], tf.float32)] if call in shapes else None
    forward = tf.function(lambda x: model(x, training=False), input_signature=signature)
    tensor = tf.constant(images)
    return lambda: forward(tensor), model


def _training_levers(levers):
    """Ours: `atrous_<implementation>` (every AtrousConv2D in that implementation; "winograd" only for 3x3 kernels,
    the others as "auto" picks); `keep_tiles` (Winograd's gradient as before: TF's, keeping the transformed tiles);
    `keep_copies` (the same for the shifted form's copies of input rows and columns); `jit` (the train function
    compiled by XLA)."""
    from keras_deeplab.layers import convolution, recompute, shifted, winograd

    if "keep_tiles" in levers:  # Winograd's transformed tiles and kernels kept for the backward, as TF's gradient does
        winograd.recomputed_products = recompute.products
    if "keep_copies" in levers:  # the shifted form's row and column copies kept for the backward (TF's gradient)
        shifted.recomputed_products = recompute.products
    forced = [lever.partition("_")[2] for lever in levers if lever.startswith("atrous_")]
    if forced:
        choose, implementation = convolution.choose_implementation, forced[0]

        def choose_forced(requested, kernel_size, *args):
            if implementation == "winograd" and tuple(kernel_size) != (3, 3):
                return choose(requested, kernel_size, *args)
            return implementation

        convolution.choose_implementation = choose_forced


def build(side, mode, size, call, levers):
    """The measured call, and the object to keep alive while measuring."""
    import cases

    if side == "ours":
        cases._library_switches(winograd="no_winograd" not in levers)
        _training_levers(levers)
    if side == "torch":
        case = (cases.TorchInference(batch=1, size=size) if mode == "infer"
                else cases.TorchTrainStep(batch=2, size=size))
        return case.run, case
    if mode == "infer":
        return our_inference(size, call)
    # KerasTrainStep takes its first step at construction: count it as the first call
    case = cases.KerasTrainStep(batch=2, size=size, jit_compile="jit" in levers,
                                model_kwargs={"source": "preset", "preset": PRESET})
    return case.run, case


def worker(args):
    """One measurement in this process: prints its JSON line."""
    sys.path.insert(0, HERE)
    if "no_jax" in args.levers:
        sys.modules["jax"] = None  # as where JAX is not installed: `import tensorflow` imports it if it is
    if args.side == "ours":
        import keras_deeplab  # noqa: F401 - first: selects the allocator before any tensor
        from keras_deeplab.layers import convolution, shifted, winograd

        if "no_order" in args.levers:  # TF's executor orders the ops as it likes, as before layers/ordering.py
            for module in (convolution, shifted, winograd):
                module.after = lambda dependency, tensor: tensor
    else:
        import torch  # noqa: F401
    record = {"side": args.side, "mode": args.mode, "size": args.size, "call": args.call, "levers": args.levers,
              "env": {key: os.environ[key] for key in args.env_keys if key in os.environ}}
    record["rss_imports_mb"] = memory_mb()[0]
    start = time.perf_counter()
    run, keep = build(args.side, args.mode, args.size, args.call, args.levers)
    record["build_s"] = time.perf_counter() - start
    record["rss_built_mb"] = memory_mb()[0]
    calls = []
    for _ in range(args.calls):
        wall, cpu = timed(run)
        calls.append({"wall_s": wall, "cpu_s": cpu, "rss_mb": memory_mb()[0]})
    record["calls"] = calls
    record["peak_rss_mb"] = memory_mb()[1]
    if args.side == "ours":  # TF's pooled CPU allocator (keras_deeplab.allocator): what it holds and its peak
        import tensorflow as tf

        pool = tf.config.experimental.get_memory_info("CPU:0")
        record["pool_current_mb"], record["pool_peak_mb"] = pool["current"] / 2 ** 20, pool["peak"] / 2 ** 20
    del keep
    print(json.dumps(record), flush=True)


def run_worker(side, mode, size, args):
    python = args.torch_python if side == "torch" else sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    keys = []
    if side == "ours":
        for setting in args.env:
            key, _, value = setting.partition("=")
            env[key] = value
            keys.append(key)
    command = [python, os.path.abspath(__file__), "--worker", side, "--mode", mode, "--size", str(size),
               "--call", args.call, "--calls", str(args.calls), "--env-keys", ",".join(keys),
               "--levers", ",".join(args.levers)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=HERE)
    if result.returncode != 0:
        raise RuntimeError(f"{side} worker failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summary(records):
    """Medians over the repeats of one (side, size)."""
    first = records[0]
    return {"side": first["side"], "size": first["size"], "runs": len(records),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in records),
            "peak_rss_range_mb": [min(r["peak_rss_mb"] for r in records), max(r["peak_rss_mb"] for r in records)],
            "rss_imports_mb": statistics.median(r["rss_imports_mb"] for r in records),
            "rss_built_mb": statistics.median(r["rss_built_mb"] for r in records),
            "first_call_s": statistics.median(r["calls"][0]["wall_s"] for r in records),
            "last_call_s": statistics.median(r["calls"][-1]["wall_s"] for r in records),
            "last_call_cpu_s": statistics.median(r["calls"][-1]["cpu_s"] for r in records)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--size", default="513", help="image (inference) or crop (training) size(s), comma-separated")
    parser.add_argument("--sides", default="ours,torch")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per side and size, alternating")
    parser.add_argument("--calls", type=int, default=1, help="calls per process (the peak covers all)")
    parser.add_argument("--call", choices=("predict", "function", "dynamic", "any_batch"), default="predict",
                        help="our inference call (dynamic: a tf.function for any batch and size, as exported; "
                        "any_batch: for any batch of this size, as predict traces it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for our workers (repeatable)")
    parser.add_argument("--levers", default="", help="comma-separated; ours: atrous_native|shifted|winograd, "
                        "keep_tiles, keep_copies, jit (training: see _training_levers), no_winograd (direct 3x3 "
                        "forms), no_order (ops in the order TF's "
                        "executor picks, "
                        "as before layers/ordering.py); both sides: no_jax (JAX made unimportable)")
    parser.add_argument("--torch-python", default="/tmp/torchenv/bin/python")
    parser.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--env-keys", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.levers = [lever for lever in args.levers.split(",") if lever]
    if args.worker:
        args.side, args.size, args.env_keys = args.worker, int(args.size), [k for k in args.env_keys.split(",") if k]
        return worker(args)
    results = {}
    for _ in range(args.repeats):
        for size in (int(s) for s in args.size.split(",")):
            for side in args.sides.split(","):
                record = run_worker(side, args.mode, size, args)
                print(json.dumps(record), flush=True)
                results.setdefault((side, size), []).append(record)
    rows = {key: summary(records) for key, records in results.items()}
    print(f"\n{args.mode}, {args.threads} threads, env {args.env or 'default'}, levers {args.levers or 'none'}, "
          f"call {args.call}, medians of "
          f"{args.repeats} fresh processes; load average {os.getloadavg()[0]:.1f}\n")
    print("| side | size | peak RSS MiB [min, max] | RSS imports | RSS built | first call s | last call s (CPU) "
          "| peak ours/torch |")
    print("|---|---|---|---|---|---|---|---|")
    for (side, size), row in rows.items():
        peer = rows.get(("torch", size))
        ratio = f"{row['peak_rss_mb'] / peer['peak_rss_mb']:.2f}" if peer and side == "ours" else ""
        low, high = row["peak_rss_range_mb"]
        print(f"| {side} | {size} | {row['peak_rss_mb']:.0f} [{low:.0f}, {high:.0f}] | {row['rss_imports_mb']:.0f} "
              f"| {row['rss_built_mb']:.0f} | {row['first_call_s']:.2f} | {row['last_call_s']:.2f} "
              f"({row['last_call_cpu_s']:.2f}) | {ratio} |")


if __name__ == "__main__":
    main()
