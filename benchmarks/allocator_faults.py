"""Minor page faults per call with TF's pooled CPU allocator (what `import keras_deeplab` selects) and without it.

    python benchmarks/allocator_faults.py [--size 4096] [--calls 5]

Each case runs in its own process (TF reads TF_CPU_ALLOCATOR_USE_BFC once): a function whose size x size float32
intermediates (64 MiB at 4096) are freed and allocated again on every call. Without the pool, glibc serves them
with mmap and the kernel faults every page in again on each call (16384 faults per 64 MiB of 4 KiB pages, where
the machine's malloc returns such blocks to the kernel); with it, about none. Linux and macOS (getrusage).
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


def faults_per_call(use_pool, size, calls):
    """Minor page faults per call of the worker in a fresh process, with or without the pooled allocator."""
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true" if use_pool else "false")
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
    for name, use_pool in (("pooled (TF_CPU_ALLOCATOR_USE_BFC=true)", True),
                           ("TF's default (TF_CPU_ALLOCATOR_USE_BFC=false)", False)):
        print(f"{name}: {faults_per_call(use_pool, args.size, args.calls):.1f} page faults per call")


if __name__ == "__main__":
    main()
