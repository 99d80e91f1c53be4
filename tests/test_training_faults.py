"""Fault tolerance of `deeplab train` in subprocesses: a run killed with SIGKILL in the middle of an epoch
resumes at its last backed-up step with nothing lost or repeated; a diverging run stops with a clear message
and exit code 3."""
import os
import re
import signal
import subprocess
import time

import pytest

from helpers.training_data import TINY_CONFIG, run, subprocess_env, train_command
from keras_deeplab.training.callbacks import BACKUP_DIR, CSV_FILE, MODEL_FILE, backed_up_step, read_csv_log
from keras_deeplab.training.train import EXIT_DIVERGED

pytestmark = pytest.mark.slow


def test_killed_run_resumes_at_the_backed_up_step_without_losing_or_repeating_any(synthetic_dir, tmp_path):
    # 3 epochs of 4 steps, backed up after every step; killed in the middle of the second epoch.
    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "steps": 12, "steps_per_epoch": 4,
                                       "backup_every_steps": 1}}
    command = train_command(synthetic_dir, tmp_path, config)
    backup = tmp_path / BACKUP_DIR
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=subprocess_env())
    try:
        deadline = time.monotonic() + 400
        while backed_up_step(backup) < 5:  # epoch 1 logged and backed up, then one step of epoch 2
            assert first.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no backup of step 5 within 400 s"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    resume_step = backed_up_step(backup)
    assert 5 <= resume_step <= 7, resume_step  # a step takes far longer than the poll: killed before step 8
    logged_before = read_csv_log(tmp_path / CSV_FILE)[:1]

    second = run(command, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from the backup at step {resume_step} of 12 (epoch 2, batch {resume_step - 3} next)" \
        in second.stdout
    epochs_run = [int(n) for n in re.findall(r"^Epoch (\d+)/3", second.stdout, re.M)]
    assert epochs_run == [2, 3]  # continues in epoch 2, repeats no finished epoch
    rows = read_csv_log(tmp_path / CSV_FILE)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    # The optimizer's step counter came back with the weights and the interrupted epoch ran only its remaining
    # steps: the global steps continue to exactly 12.
    assert [row["step"] for row in rows] == [4, 8, 12]
    assert rows[:1] == logged_before
    assert rows[-1]["learning_rate"] == 0.0  # the poly schedule ended where planned
    assert not backup.exists() and (tmp_path / MODEL_FILE).exists()


def test_diverging_run_exits_with_a_clear_message(synthetic_dir, tmp_path):
    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "steps": 4, "steps_per_epoch": 4}}
    result = run(train_command(synthetic_dir, tmp_path, config, extra=["--learning_rate", "1e20"]))
    assert result.returncode == EXIT_DIVERGED, result.stderr[-3000:]
    message = re.search(r"deeplab train: Training diverged: the loss is (nan|inf) at step (\d)",
                        result.stderr)
    assert message and 1 <= int(message[2]) <= 4
    assert "Lower train.learning_rate" in result.stderr
    assert not os.path.exists(tmp_path / MODEL_FILE)  # nothing saved from a diverged run
