"""keras_deeplab selects TF's pooled CPU allocator (large tensors stop page-faulting in on every step), unless the
user chose otherwise. Page faults per call with and without the pool: benchmarks/allocator_faults.py."""
import os
import subprocess
import sys

import pytest

from keras_deeplab import allocator

# Imports keras_deeplab, creates a tensor (TF reads the setting at its first CPU tensor), and prints the setting
# as the C library's getenv returns it to TF.
SETTING_SCRIPT = """
import ctypes
import keras_deeplab
import tensorflow as tf
tf.ones([2])
getenv = ctypes.CDLL(None).getenv
getenv.restype = ctypes.c_char_p
print((getenv(b"TF_CPU_ALLOCATOR_USE_BFC") or b"unset").decode())
"""


def setting_tf_sees(user_setting):
    """TF_CPU_ALLOCATOR_USE_BFC as TF reads it in a process that imports keras_deeplab (the user's value, or
    None for unset, in its environment)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPU_ALLOCATOR_USE_BFC"}
    if user_setting is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = user_setting
    result = subprocess.run([sys.executable, "-c", SETTING_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(sys.platform == "win32", reason="reads the C environment through the C library (POSIX)")
def test_import_pools_cpu_memory_and_the_users_choice_wins():
    assert setting_tf_sees(None) == "true"
    assert setting_tf_sees("false") == "false"


def test_a_users_setting_is_left_alone(monkeypatch):
    environ = {"TF_CPU_ALLOCATOR_USE_BFC": "false"}  # stands in for os.environ
    monkeypatch.setattr(allocator.os, "environ", environ)
    allocator.use_pooled_cpu_allocator()
    assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": "false"}


@pytest.mark.parametrize("physical_gib, expected_limit", [(16, None), (256, str(256 * 1024))])
def test_pool_limit_is_physical_memory_above_tfs_64_gib(monkeypatch, physical_gib, expected_limit):
    environ = {}  # stands in for os.environ, so nothing the function sets outlives the test
    monkeypatch.setattr(allocator.os, "environ", environ)
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": physical_gib * (1 << 30) // 4096}
    monkeypatch.setattr(allocator.os, "sysconf", pages.__getitem__)
    allocator.use_pooled_cpu_allocator()
    assert environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    assert environ.get("TF_CPU_BFC_MEM_LIMIT_IN_MB") == expected_limit
