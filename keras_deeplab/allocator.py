"""TensorFlow's CPU memory: a pool (TF's BFC allocator) instead of one malloc per tensor.

With TF's default CPU allocator every large activation is a fresh `malloc`, which glibc serves with `mmap` and
hands back to the kernel on `free`; the next step page-faults all of it in again. In a crop-513 training step
of R50 OS8 (batch 2, 2 cores) that was 1.6 million page faults and 9 s of kernel time in a 21 s step; with the
pool, none, and a 16.5 s step (benchmarks/README.md). The pool keeps what it has allocated until the process ends
(its size is the peak working set, as with any caching allocator).
"""
import os

# TF caps its pool at 64 GiB unless told otherwise; on larger machines let it grow to physical memory.
_TF_DEFAULT_POOL_LIMIT_MB = 1 << 16


def use_pooled_cpu_allocator():
    """Selects TF's pooled CPU allocator, unless `TF_CPU_ALLOCATOR_USE_BFC` is already set (set it to "false" to
    keep TF's default). TF reads the setting once, when it allocates its first CPU tensor: this must run before
    that, which `import keras_deeplab` does first thing."""
    if "TF_CPU_ALLOCATOR_USE_BFC" in os.environ:
        return
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    try:
        physical_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
    except (ValueError, OSError, AttributeError):  # no sysconf (not POSIX): keep TF's limit
        return
    if physical_mb > _TF_DEFAULT_POOL_LIMIT_MB:
        os.environ.setdefault("TF_CPU_BFC_MEM_LIMIT_IN_MB", str(physical_mb))
