"""keras_deeplab selects TF's CPU allocator at import: its pool by default (large tensors stop page-faulting in on
every step), glibc's malloc for KERAS_DEEPLAB_CPU_ALLOCATOR=system, the user's choice where TF's own variables are
set. Page faults per call with and without the pool: benchmarks/allocator_faults.py."""
import json
import os
import subprocess
import sys

import pytest

from keras_deeplab import allocator

TF_VARIABLES = ("TF_CPU_ALLOCATOR_USE_BFC", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR")
# Imports keras_deeplab, creates a 64 MiB tensor (TF picks its allocator at its first CPU tensor), and prints TF's
# variables as the C library's getenv returns them to TF, how much of the tensor TF's pool holds (None where this
# TF keeps no pool statistics: no pool), and whether glibc maps a 2 MiB block on its own after a 16 MiB one was
# freed (its default threshold has then risen to 16 MiB; None where the C library has no mallinfo2).
SETTING_SCRIPT = """
import ctypes, json
import numpy as np
import keras_deeplab
import tensorflow as tf
tensor = tf.ones([16 << 20])
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
try:
    pooled = tf.config.experimental.get_memory_info("CPU:0")["peak"] >> 20
except ValueError:
    pooled = None
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
maps_2mib = None
if hasattr(libc, "mallinfo2"):
    libc.mallinfo2.restype = MallInfo2
    np.empty(16 << 20, np.uint8)  # allocated and freed at once
    mapped = libc.mallinfo2().hblkhd
    block = np.empty(2 << 20, np.uint8)
    maps_2mib = libc.mallinfo2().hblkhd - mapped >= 2 << 20
print(json.dumps({name: (libc.getenv(name.encode()) or b"unset").decode() for name in %r}
                 | {"pooled_mb": pooled, "maps_2mib": maps_2mib}))
""" % (TF_VARIABLES,)


def what_tf_sees(**settings):
    """SETTING_SCRIPT's record (TF's allocator variables, pooled MiB, glibc's mapping) in a process that imports
    keras_deeplab with `settings` in its environment and none of TF's allocator variables or ours otherwise."""
    env = {key: value for key, value in os.environ.items()
           if key not in TF_VARIABLES + (allocator.ALLOCATOR_VARIABLE,)}
    result = subprocess.run([sys.executable, "-c", SETTING_SCRIPT], env={**env, **settings}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform == "win32", reason="reads the C environment through the C library (POSIX)")
def test_import_pools_cpu_memory_by_default_mallocs_for_system_and_the_users_choice_wins():
    pooled = what_tf_sees()
    assert pooled["TF_CPU_ALLOCATOR_USE_BFC"] == "true" and pooled["pooled_mb"] >= 64
    assert pooled["maps_2mib"] in (False, None)
    system = what_tf_sees(KERAS_DEEPLAB_CPU_ALLOCATOR="system")
    assert system["TF_CPU_ALLOCATOR_USE_BFC"] == "false" and system["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] == "true"
    assert system["pooled_mb"] in (0, None)  # oneDNN builds report an empty pool, others none
    assert system["maps_2mib"] in (True, None)  # glibc: every block from 1 MiB on gets its own mapping
    users = what_tf_sees(TF_CPU_ALLOCATOR_USE_BFC="false", KERAS_DEEPLAB_CPU_ALLOCATOR="system")
    assert (users["TF_CPU_ALLOCATOR_USE_BFC"], users["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"]) == ("false", "unset")


def test_a_users_setting_is_left_alone(monkeypatch):
    environ = {"TF_CPU_ALLOCATOR_USE_BFC": "false"}  # stands in for os.environ
    monkeypatch.setattr(allocator.os, "environ", environ)
    allocator.select_cpu_allocator()
    assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": "false"}


@pytest.mark.parametrize("physical_gib, expected_limit", [(16, None), (256, str(256 * 1024))])
def test_pool_limit_is_physical_memory_above_tfs_64_gib(monkeypatch, physical_gib, expected_limit):
    environ = {}  # stands in for os.environ, so nothing the function sets outlives the test
    monkeypatch.setattr(allocator.os, "environ", environ)
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": physical_gib * (1 << 30) // 4096}
    monkeypatch.setattr(allocator.os, "sysconf", pages.__getitem__)
    allocator.select_cpu_allocator()
    assert environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    assert environ.get("TF_CPU_BFC_MEM_LIMIT_IN_MB") == expected_limit


def test_an_unknown_allocator_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(allocator.os, "environ", {"KERAS_DEEPLAB_CPU_ALLOCATOR": "jemalloc"})
    with pytest.raises(ValueError, match="KERAS_DEEPLAB_CPU_ALLOCATOR='jemalloc': expected one of pooled, system"):
        allocator.select_cpu_allocator()
