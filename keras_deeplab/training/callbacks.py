"""Callbacks of a training run: fault-tolerant backup, best checkpoint by val mIoU, CSV and TensorBoard logs,
and a clear stop when the loss diverges.

Files under the run directory: `model.keras` (best by `val_mean_iou`), `log.csv` (one row per epoch, with the
global `step` and `learning_rate`), `logs/` (TensorBoard) and `backup/` (BackupAndRestore's state while a run
is unfinished; deleted at the end).
"""
import csv
import json
import math
import os

import keras

MODEL_FILE = "model.keras"
CSV_FILE = "log.csv"
TENSORBOARD_DIR = "logs"
BACKUP_DIR = "backup"


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
        kept = f" The last epoch backup is kept in {self.backup_dir}." if self.backup_dir else ""
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


def read_csv_log(path):
    """The rows of a CSV log as dicts of floats (empty if the file does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{key: float(value) for key, value in row.items() if value not in ("", None)}
                for row in csv.DictReader(f)]


def backed_up_epoch(backup_dir):
    """The epoch an interrupted run will resume from, or None when `backup_dir` holds no backup."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(json.load(f)["epoch"])


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


def training_callbacks(run_dir, *, validate=True, tensorboard=True, monitor="val_mean_iou"):
    """The callbacks of a (possibly resumed) run writing to `run_dir`, in the order they must run.

    A backup in `run_dir/backup` means an interrupted run: training resumes from its last finished epoch,
    the CSV log is continued (trimmed to that epoch) and the best checkpoint keeps its earlier best value.
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
    if validate:
        earlier = [row[monitor] for row in read_csv_log(csv_path) if monitor in row] if resume_epoch else []
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, MODEL_FILE), monitor=monitor, mode="max", save_best_only=True,
            initial_value_threshold=max(earlier) if earlier else None))
    # Last, so that an epoch is backed up only after it is logged and checkpointed.
    callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
    return callbacks
