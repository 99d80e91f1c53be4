"""Picking the tf.distribute strategy that `model.fit` runs under.

Batch sizes, learning rates and step counts in this package are global: the strategy splits each global
batch across its replicas, and one step is one global batch.
"""
import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")


def cluster_size(tf_config=None):
    """How many tasks (chief + workers) the `TF_CONFIG` environment variable (or `tf_config`) names;
    0 if unset."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"TF_CONFIG is not a JSON object with a 'cluster' field: {raw!r}") from err
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def split_cpu(count):
    """Splits the first CPU into `count` logical devices, so that one process can run a multi-replica
    MirroredStrategy without GPUs (for tests). Must run before TensorFlow initializes its devices."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(count))
    except RuntimeError as err:
        raise RuntimeError(f"distribute.logical_cpus={count} must be set before TensorFlow starts its "
                           "devices (run it in a fresh process, e.g. the `deeplab train` command)") from err
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def _tpu_strategy():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", "local"))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(kind="auto", logical_cpus=None):
    """Returns the strategy for `kind`:

    - "auto": TPUStrategy when a TPU is present (`TPU_NAME` set or a local TPU device), else
      MultiWorkerMirroredStrategy when `TF_CONFIG` names several workers, else MirroredStrategy over the
      local GPUs (one or more), else the default (single-device) strategy on CPU.
    - "default", "mirrored" (all local GPUs, or all logical CPUs), "multi_worker", "tpu": that strategy.

    `logical_cpus` splits the CPU into that many devices first (see `split_cpu`); with "auto" or "mirrored"
    the MirroredStrategy then spans them. Call this first in a process: MultiWorkerMirroredStrategy and
    logical devices must be set up before TensorFlow starts.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"distribute.strategy must be one of {STRATEGIES}, got {kind!r}")
    cpus = split_cpu(logical_cpus) if logical_cpus and logical_cpus > 1 else None
    if kind == "auto":
        if os.environ.get("TPU_NAME") or tf.config.list_physical_devices("TPU"):
            kind = "tpu"
        elif cluster_size() > 1:
            kind = "multi_worker"
        elif tf.config.list_physical_devices("GPU") or cpus:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "tpu":
        return _tpu_strategy()
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(gpus or cpus or None)
    return tf.distribute.get_strategy()


def describe(strategy):
    """A short name of `strategy` and its replica count, for logs."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"
    elif strategy is tf.distribute.get_strategy():
        name = "default strategy"
    else:
        name = type(strategy).__name__
    return f"{name} with {strategy.num_replicas_in_sync} replica(s)"
