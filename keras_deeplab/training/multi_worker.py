"""Workarounds for `model.fit` under MultiWorkerMirroredStrategy in Keras 3.15.1 (keras-team/keras#20585).

Upstream bugs, with two workers on one machine:

1. `fit` builds the model symbolically from the first batch, which it averages with `strategy.reduce`;
   on a multi-worker strategy this fails (`ValueError: Attempt to convert a value (PerReplica...)`).
   Fix: build from the first local replica's batch.
2. The per-step logs (scalars) are reduced with `strategy.reduce("MEAN", v, axis=0)`, which fails on
   rank-0 values (`Invalid reduction dimension 0`). Fix: the train/test steps return each scalar as a
   1-element vector, whose mean over axis 0 across all replicas is that scalar.
3. `BackupAndRestore` (and any file-writing callback) given one directory makes every worker write the same
   file (`BlockingIOError: unable to lock file`). Fix: every worker keeps its own directory; the chief's is
   the one users look at. All workers must still save, because saving reads variables collectively.

`patch_model` applies 1 and 2 to one model instance (nothing global changes); `worker_dir` gives 3.
Both do nothing outside multi-worker training, so callers need not check. Remove this module once the
upstream issue is fixed.
"""
import os

import tensorflow as tf


def is_multi_worker(strategy):
    """True when `strategy` is a MultiWorkerMirroredStrategy spanning more than one worker."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def is_chief(strategy):
    """True unless this process is a non-chief worker of a multi-worker strategy."""
    return not is_multi_worker(strategy) or strategy.extended.should_checkpoint


def worker_dir(directory, strategy):
    """`directory` for the chief (and outside multi-worker training), `directory/worker<i>` for the others."""
    if is_chief(strategy):
        return directory
    return os.path.join(directory, f"worker{strategy.cluster_resolver.task_id}")


def patch_model(model, strategy):
    """Makes `model.fit` / `model.evaluate` work under a multi-worker `strategy` (bugs 1 and 2 above) by
    overriding three methods on this instance only. Returns `model`."""
    if not is_multi_worker(strategy):
        return model

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def vector_logs(step):
        def wrapped(data):
            return tf.nest.map_structure(lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, step(data))
        return wrapped

    model._maybe_symbolic_build = maybe_symbolic_build
    model.train_step = vector_logs(model.train_step)
    model.test_step = vector_logs(model.test_step)
    return model
