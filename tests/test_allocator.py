"""keras_deeplab selects TF's pooled CPU allocator: large tensors stop page-faulting in on every step."""
import json
import os
import subprocess
import sys

import pytest

from keras_deeplab import allocator

# Imports keras_deeplab, then runs a function whose 64 MiB intermediates are freed and allocated again on every
# call, and reports the page faults per call and the allocator setting TF saw.
FAULTS_SCRIPT = """
import json, resource, os
import keras_deeplab
import tensorflow as tf
x = tf.ones([4096, 4096])
step = tf.function(lambda x: tf.reduce_sum(tf.nn.relu(x * 2.0) + 1.0))
step(x); step(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step(x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"faults_per_call": (after - before) / 5, "setting": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC")}))
"""


def run_faults_script(env_setting):
    env = {key: value for key, value in os.environ.items() if key != "TF_CPU_ALLOCATOR_USE_BFC"}
    if env_setting is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = env_setting
    result = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts from getrusage (Linux)")
def test_import_pools_cpu_memory_and_the_users_choice_wins():
    pooled = run_faults_script(None)
    assert pooled["setting"] == "true"
    default = run_faults_script("false")
    assert default["setting"] == "false"
    # 64 MiB is 16384 pages: TF's default allocator faults in every fresh intermediate; the pool reuses them.
    assert default["faults_per_call"] > 8000, default
    assert pooled["faults_per_call"] < 100, pooled


@pytest.mark.parametrize("physical_gib, expected_limit", [(16, None), (256, str(256 * 1024))])
def test_pool_limit_is_physical_memory_above_tfs_64_gib(monkeypatch, physical_gib, expected_limit):
    environ = {}  # stands in for os.environ, so nothing the function sets outlives the test
    monkeypatch.setattr(allocator.os, "environ", environ)
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": physical_gib * (1 << 30) // 4096}
    monkeypatch.setattr(allocator.os, "sysconf", pages.__getitem__)
    allocator.use_pooled_cpu_allocator()
    assert environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    assert environ.get("TF_CPU_BFC_MEM_LIMIT_IN_MB") == expected_limit
