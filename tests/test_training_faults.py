"""Fault tolerance of `deeplab train` in subprocesses: a run killed with SIGKILL resumes from its last
backed-up epoch with nothing lost or repeated; a diverging run stops with a clear message and exit code 3."""
import os
import re
import signal
import subprocess
import time

import pytest

from helpers.training_data import TINY_CONFIG, run, subprocess_env, train_command, write_synthetic_dataset
from keras_deeplab.training.callbacks import BACKUP_DIR, CSV_FILE, MODEL_FILE, backed_up_epoch, read_csv_log
from keras_deeplab.training.train import EXIT_DIVERGED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(path)
    return path


def test_killed_run_resumes_from_the_last_epoch_without_repeating(synthetic_dir, tmp_path):
    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "steps": 10, "steps_per_epoch": 2}}  # 5 epochs
    command = train_command(synthetic_dir, tmp_path, config)
    backup = tmp_path / BACKUP_DIR
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=subprocess_env())
    try:
        deadline = time.monotonic() + 400
        while (backed_up_epoch(backup) or 0) < 2:  # two epochs done and backed up
            assert first.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no backup of epoch 2 within 400 s"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    resume_epoch = backed_up_epoch(backup)
    assert resume_epoch in (2, 3)
    logged_before = read_csv_log(tmp_path / CSV_FILE)[:resume_epoch]

    second = run(command, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    epochs_run = [int(n) for n in re.findall(r"^Epoch (\d+)/5", second.stdout, re.M)]
    assert epochs_run == list(range(resume_epoch + 1, 6))  # continues, repeats no finished epoch
    rows = read_csv_log(tmp_path / CSV_FILE)
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3, 4]
    # The optimizer's step counter came back with the weights: the global steps continue to exactly 10.
    assert [row["step"] for row in rows] == [2, 4, 6, 8, 10]
    assert rows[:resume_epoch] == logged_before
    assert rows[-1]["learning_rate"] == 0.0  # the poly schedule ended where planned
    assert not backup.exists() and (tmp_path / MODEL_FILE).exists()


def test_diverging_run_exits_with_a_clear_message(synthetic_dir, tmp_path):
    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "steps": 4, "steps_per_epoch": 4}}
    result = run(train_command(synthetic_dir, tmp_path, config, extra=["--learning_rate", "1e12"]))
    assert result.returncode == EXIT_DIVERGED, result.stderr[-3000:]
    message = re.search(r"deeplab train: Training diverged: the loss is (nan|inf) at step (\d)",
                        result.stderr)
    assert message and 1 <= int(message[2]) <= 4
    assert "Lower train.learning_rate" in result.stderr
    assert not os.path.exists(tmp_path / MODEL_FILE)  # nothing saved from a diverged run
