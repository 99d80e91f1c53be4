"""Callbacks of a training run: fault-tolerant backup, best checkpoint by val mIoU, CSV and TensorBoard logs
(with validation images), and a clear stop when the loss diverges.

Files under the run directory: `model.keras` (best by `val_mean_iou`), `log.csv` (one row per epoch, with the
global `step` and `learning_rate`), `logs/` (TensorBoard; `logs/validation` also holds the images) and `backup/`
(the weights, optimizer state and step of the last backup while a run is unfinished; deleted at the end).
"""
import csv
import glob
import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_deeplab.architectures import main_output

IMAGE_TAG = "image_label_prediction"
MODEL_FILE = "model.keras"
CSV_FILE = "log.csv"
TENSORBOARD_DIR = "logs"
BACKUP_DIR = "backup"
BACKUP_METADATA = "training_metadata.json"  # the name Keras' BackupAndRestore uses


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """TerminateOnNaN that stops at once with a `TrainingDivergedError` saying where and what to do. Raising
    (rather than a graceful stop) skips the end-of-run cleanup, so the last epoch backup stays on disk."""

    def __init__(self, backup_dir=None):
        super().__init__(raise_error=True)
        self.backup_dir = backup_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = int(self.model.optimizer.iterations.numpy())
        learning_rate = float(self.model.optimizer.learning_rate)
        kept = f" The last backup is kept in {self.backup_dir}." if self.backup_dir else ""
        raise TrainingDivergedError(
            f"Training diverged: the loss is {float(loss)} at step {step} (epoch {self.epoch + 1}, batch "
            f"{batch + 1}, learning rate {learning_rate:.4g}). Lower train.learning_rate or check the data "
            f"for invalid pixels or labels.{kept}")


class StepLogger(keras.callbacks.Callback):
    """Adds the global step (`optimizer.iterations`) and the learning rate to each epoch's logs, so the CSV
    log and TensorBoard show them. Must come before the callbacks that write logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["step"] = int(self.model.optimizer.iterations.numpy())
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class ValidationImages(keras.callbacks.Callback):
    """At each epoch end, writes validation images with their label and the model's prediction (argmax of its
    main output) side by side, coloured by `colormap` (uint8 [256, 3]), as TensorBoard images
    `image_label_prediction/<i>` (one tag per image, as their sizes may differ) at step `epoch`.

    Args:
        log_dir: the summary directory (the TensorBoard callback's `validation` folder).
        samples: (image float [H, W, 3] in 0..255, label int [H, W]) pairs.
        colormap: the dataset's colours, indexed by label.
    """

    def __init__(self, log_dir, samples, colormap):
        super().__init__()
        self.log_dir = log_dir
        self.samples = list(samples)
        self.colormap = np.asarray(colormap, np.uint8)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for index, (image, label) in enumerate(self.samples):
                logits = main_output(self.model(np.asarray(image, np.float32)[None], training=False))
                prediction = np.argmax(keras.ops.convert_to_numpy(logits)[0], axis=-1)
                picture = np.concatenate([np.clip(np.rint(image), 0, 255).astype(np.uint8),
                                          self.colormap[label], self.colormap[prediction]], axis=1)
                tf.summary.image(f"{IMAGE_TAG}/{index}", picture[None], step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_csv_log(path):
    """The rows of a CSV log as dicts of floats (empty if the file does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{key: float(value) for key, value in row.items() if value not in ("", None)}
                for row in csv.DictReader(f)]


def read_backup(backup_dir):
    """The metadata of the last backup in `backup_dir` ({"epoch", "batch", "step", "weights"}: the epoch and
    batch within it to resume at, the global step and the weights file), or None when there is no backup."""
    path = os.path.join(backup_dir, BACKUP_METADATA)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def backed_up_epoch(backup_dir):
    """The epoch an interrupted run will resume in, or None when `backup_dir` holds no backup."""
    metadata = read_backup(backup_dir)
    return None if metadata is None else int(metadata["epoch"])


def backed_up_step(backup_dir):
    """The global step an interrupted run will resume at (0 when `backup_dir` holds no backup)."""
    metadata = read_backup(backup_dir)
    return 0 if metadata is None else int(metadata["step"])


class StepBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that also backs up within epochs and resumes at the backed-up step.

    Backs up the weights and optimizer state (with its step counter) at the end of every epoch, after the
    callbacks before it have logged and checkpointed it, and whenever the global step passes a multiple of
    `every_steps` within an epoch, so a killed run recomputes at most `every_steps` steps (None: epoch ends
    only). A restarted `fit` resumes at the backed-up step: the epoch it was in runs only its remaining
    batches (its logged metrics average those), later epochs are whole, and the total number of steps is the
    planned one. The data stream must continue at that step too (`backed_up_step`: the batches to skip).

    Keras 3.15's own class with an integer `save_freq` records the epoch wrongly after a resume and restarts
    the interrupted epoch at its first batch (repeating steps); this class derives epoch and batch from the
    restored step counter instead. Each backup is written to a new weights file, and the metadata naming it is
    replaced atomically, so a kill while writing leaves the previous backup usable.
    """

    def __init__(self, backup_dir, steps_per_epoch, every_steps=None):
        super().__init__(backup_dir, save_freq="epoch")
        if every_steps is not None and (not isinstance(every_steps, int) or every_steps < 1):
            raise ValueError(f"every_steps must be a positive integer or None, got {every_steps!r}")
        self.steps_per_epoch = int(steps_per_epoch)
        self.every_steps = every_steps
        self._epoch = 0
        self._resume_batch = 0  # batches of the interrupted epoch done before the restart
        self._last_step = 0
        self._ended_epoch_early = False

    def _load_model(self):
        metadata = read_backup(self.backup_dir)
        if metadata is None:
            return
        if not self.model.built:
            raise ValueError("StepBackupAndRestore: the model must be built before `fit()`")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        self._last_step = int(self.model.optimizer.iterations.numpy())
        self.model._initial_epoch, self._resume_batch = divmod(self._last_step, self.steps_per_epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done = self._resume_batch + batch + 1  # batches of this epoch
        step = self._epoch * self.steps_per_epoch + done
        if self._resume_batch and done >= self.steps_per_epoch:
            self.model.stop_training = True  # the resumed epoch is complete; undone in on_epoch_end
            self._ended_epoch_early = True
        # A backup at an epoch's last step waits for on_epoch_end, after validation and logging.
        if self.every_steps and step // self.every_steps > self._last_step // self.every_steps \
                and done < self.steps_per_epoch:
            self._save_model()
        self._last_step = step

    def on_epoch_end(self, epoch, logs=None):
        if self._ended_epoch_early:
            self.model.stop_training = False
            self._ended_epoch_early = False
        self._resume_batch = 0
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        step = int(self.model.optimizer.iterations.numpy())
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = f"step{step:09d}.weights.h5"
        partial = os.path.join(self.backup_dir, "partial.weights.h5")
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, os.path.join(self.backup_dir, weights))
        epoch, batch = divmod(step, self.steps_per_epoch)
        metadata = os.path.join(self.backup_dir, BACKUP_METADATA)
        with open(metadata + ".tmp", "w") as f:
            json.dump({"epoch": epoch, "batch": batch, "step": step, "weights": weights}, f)
        os.replace(metadata + ".tmp", metadata)
        for old in glob.glob(os.path.join(self.backup_dir, "step*.weights.h5")):
            if os.path.basename(old) != weights:
                os.remove(old)


def trim_csv_log(path, epoch):
    """Drops the rows of epochs >= `epoch` from a CSV log (written by a run killed before its backup)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) < epoch]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def training_callbacks(run_dir, *, steps_per_epoch, backup_every_steps=None, validate=True, tensorboard=True,
                       image_samples=(), colormap=None, monitor="val_mean_iou"):
    """The callbacks of a (possibly resumed) run writing to `run_dir`, in the order they must run. With
    `tensorboard`, the `image_samples` (image, label) are drawn with `colormap` (see ValidationImages).

    A backup in `run_dir/backup` means an interrupted run: training resumes at its step (see
    StepBackupAndRestore), the CSV log is continued (trimmed to the epoch it resumes in) and the best
    checkpoint keeps its earlier best value.
    """
    backup_dir = os.path.join(run_dir, BACKUP_DIR)
    csv_path = os.path.join(run_dir, CSV_FILE)
    resume_epoch = backed_up_epoch(backup_dir)
    if resume_epoch is not None:
        trim_csv_log(csv_path, resume_epoch)
    callbacks = [StopOnNaN(backup_dir), StepLogger(),
                 keras.callbacks.CSVLogger(csv_path, append=resume_epoch is not None)]
    if tensorboard:
        log_dir = os.path.join(run_dir, TENSORBOARD_DIR)
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
        if image_samples:
            callbacks.append(ValidationImages(os.path.join(log_dir, "validation"), image_samples, colormap))
    if validate:
        earlier = [row[monitor] for row in read_csv_log(csv_path) if monitor in row] if resume_epoch else []
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, MODEL_FILE), monitor=monitor, mode="max", save_best_only=True,
            initial_value_threshold=max(earlier) if earlier else None))
    # Last, so that an epoch is backed up only after it is logged and checkpointed.
    callbacks.append(StepBackupAndRestore(backup_dir, steps_per_epoch, backup_every_steps))
    return callbacks
