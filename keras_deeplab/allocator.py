"""Where TensorFlow's CPU tensors get their memory, chosen when `import keras_deeplab` runs.

`KERAS_DEEPLAB_CPU_ALLOCATOR` picks one of:

- "pooled" (the default): TF's BFC pool keeps freed memory for reuse. Without a pool, glibc serves every large
  tensor with a fresh `mmap` that the kernel faults in and zeroes again on every step: in a crop-513 training step
  of R50 OS8 (batch 2, 2 cores) 1.6 million page faults and 9 s of kernel time in a 21 s step; with the pool, none,
  and a 16.5 s step (benchmarks/README.md). The pool keeps its peak working set until the process ends, and holds
  more than is ever alive at once: peak RSS 12-25 % above "system" (R50 OS8, benchmarks/memory.md).
- "system": every tensor is a `malloc`, its memory returned when freed, as torch does on CPU: the least memory
  (inference at 0.93x torchvision's peak RSS) at 1.35-1.4x the CPU time per inference and 1.75-1.85x per
  training step, as every call faults its memory in again.

TF's own default depends on the build and the CPU: where its oneDNN kernels are on (x86 CPUs with AVX-512 VNNI
and newer), oneDNN's allocator, which pools large tensors in a BFC pool of its own; otherwise plain `malloc`. A
user's TF_CPU_ALLOCATOR_USE_BFC or TF_ONEDNN_USE_SYSTEM_ALLOCATOR is left as it is.
"""
import ctypes
import os

ALLOCATOR_VARIABLE = "KERAS_DEEPLAB_CPU_ALLOCATOR"
ALLOCATORS = ("pooled", "system")
# glibc's mallopt parameter, and the block size from which "system" maps every block on its own
M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES = -3, 1 << 20
# TF caps its pool at 64 GiB unless told otherwise; on larger machines let it grow to physical memory.
_TF_DEFAULT_POOL_LIMIT_MB = 1 << 16


def select_cpu_allocator():
    """Sets TF's allocator variables for the allocator KERAS_DEEPLAB_CPU_ALLOCATOR names ("pooled" if unset).
    TF reads them once, when it allocates its first CPU tensor: this must run before that, which
    `import keras_deeplab` does first thing."""
    choice = os.environ.get(ALLOCATOR_VARIABLE, "pooled")
    if choice not in ALLOCATORS:
        raise ValueError(f"{ALLOCATOR_VARIABLE}={choice!r}: expected one of {', '.join(ALLOCATORS)}")
    if "TF_CPU_ALLOCATOR_USE_BFC" in os.environ:
        return
    if choice == "system":
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "false"
        os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "true")  # else oneDNN's allocator pools
        _map_large_blocks()
        return
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    try:
        physical_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
    except (ValueError, OSError, AttributeError):  # no sysconf (not POSIX): keep TF's limit
        return
    if physical_mb > _TF_DEFAULT_POOL_LIMIT_MB:
        os.environ.setdefault("TF_CPU_BFC_MEM_LIMIT_IN_MB", str(physical_mb))


def _map_large_blocks():
    """Has glibc serve every block of MMAP_THRESHOLD_BYTES or more with its own mapping, returned to the kernel when
    freed. Its default threshold rises with each large block freed, up to 32 MiB, and blocks below it stay in its
    arenas, in pieces: 1087 against 985 MiB at 513x513 (benchmarks/memory.md). Not where the C library is not
    glibc, nor where the user set glibc's threshold."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
