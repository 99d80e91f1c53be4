"""Minor page faults per call with each CPU allocator: TF's pool (what `import keras_deeplab` selects), TF's own
default, and glibc's malloc (KERAS_DEEPLAB_CPU_ALLOCATOR=system).

    python benchmarks/allocator_faults.py [--size 4096] [--calls 5]

Each case runs in its own process (TF reads its allocator variables once): a function whose size x size float32
intermediates (64 MiB at 4096) are freed and allocated again on every call. Without a pool, glibc serves them
with mmap and the kernel faults every page in again on each call (16384 faults per 64 MiB of 4 KiB pages); with
one, about none. TF's default pools too where its oneDNN kernels are on (oneDNN's allocator; keras_deeplab/
allocator.py). Linux and macOS (getrusage).
"""
import argparse
import json
import os
import subprocess
import sys

WORKER = """
import json, resource, sys
import keras_deeplab
import tensorflow as tf
size, calls = int(sys.argv[1]), int(sys.argv[2])
x = tf.ones([size, size])
step = tf.function(lambda x: tf.reduce_sum(tf.nn.relu(x * 2.0) + 1.0))
step(x); step(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(calls):
    step(x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"faults_per_call": (after - before) / calls}))
"""


CASES = {"pooled (the default)": {},
         "TF's default (TF_CPU_ALLOCATOR_USE_BFC=false)": {"TF_CPU_ALLOCATOR_USE_BFC": "false"},
         "system (KERAS_DEEPLAB_CPU_ALLOCATOR=system)": {"KERAS_DEEPLAB_CPU_ALLOCATOR": "system"}}


def faults_per_call(settings, size, calls):
    """Minor page faults per call of the worker in a fresh process with the allocator `settings`."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPU_ALLOCATOR_USE_BFC", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "KERAS_DEEPLAB_CPU_ALLOCATOR")}
    env.update(settings)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = subprocess.run([sys.executable, "-c", WORKER, str(size), str(calls)], env=env, capture_output=True,
                            text=True)
    if result.returncode:
        sys.exit(f"worker failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["faults_per_call"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="side of the square float32 intermediates")
    parser.add_argument("--calls", type=int, default=5, help="measured calls (after two warm-up calls)")
    args = parser.parse_args()
    pages = args.size * args.size * 4 // os.sysconf("SC_PAGE_SIZE")
    print(f"intermediates of {args.size}x{args.size} float32: {pages} pages each")
    for name, settings in CASES.items():
        print(f"{name}: {faults_per_call(settings, args.size, args.calls):.1f} page faults per call")


if __name__ == "__main__":
    main()
