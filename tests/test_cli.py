"""The `deeplab` console entry point, run as a user runs it: in a subprocess."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

import keras_deeplab
from keras_deeplab import cli, presets, tf_logs
from keras_deeplab.cli import COMMANDS
from keras_deeplab.training import evaluate, train
from keras_deeplab.training.train import load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "training" / "configs"

# What TensorFlow 2.21 prints on a CPU machine (its libraries loading, device discovery, the first kernel).
TF_NOISE = ("Could not find cuda drivers", "failed call to cuInit", "oneDNN custom operations are on",
            "All log messages before absl::InitializeLog()", "cpu_feature_guard")


def deeplab_command():
    """The installed `deeplab` script next to this Python (pip install -e puts it there), else the module."""
    script = pathlib.Path(sys.executable).with_name("deeplab")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "keras_deeplab.cli"]


def run_deeplab(*args, env=None):
    return subprocess.run(deeplab_command() + list(args), capture_output=True, text=True, timeout=300, env=env)


def environment(tf_log_level=None):
    """This environment with TF_CPP_MIN_LOG_LEVEL unset, or set to `tf_log_level`."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    if tf_log_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = tf_log_level
    return env


def test_help_lists_every_subcommand():
    result = run_deeplab("--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: deeplab")
    listed = re.findall(r"^ {4}(\S+)", result.stdout, flags=re.MULTILINE)  # argparse's subcommand lines
    assert listed == list(COMMANDS), result.stdout
    for _, help_text in COMMANDS.values():
        assert help_text.split()[0] in result.stdout


# The `deeplab` command run in this interpreter (its arguments after -c's script); then which of TensorFlow and
# Keras it imported.
IMPORTS_OF_THE_COMMAND = """
import sys
sys.argv[0] = "deeplab"
from keras_deeplab.cli import main
try:
    main()
except SystemExit:
    pass
print(sorted(name for name in ("keras", "tensorflow") if name in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"], [], ["segment"], ["analyze-rates", "--help"], ["demo", "-h"]])
def test_help_imports_no_tensorflow(args):
    """`deeplab --help` (and the help of the subcommands whose modules need no TensorFlow) answers without
    importing TensorFlow: the package defers its eager imports in the command."""
    result = subprocess.run([sys.executable, "-c", IMPORTS_OF_THE_COMMAND, *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[]", result.stdout[-3000:]


def test_a_subcommand_loads_a_saved_model(synthetic_dir, tmp_path):
    """The command registers the package's Keras classes before running a subcommand: `deeplab evaluate` loads a
    saved DeepLabV3, with TensorFlow's log lines hidden."""
    path = tmp_path / "model.keras"
    keras_deeplab.DeepLabV3(3, backbone="mobilenet_v2", aspp_filters=8).save(path)
    report = tmp_path / "report.json"
    result = run_deeplab("evaluate", "--model", str(path), "--data-dir", str(synthetic_dir), "--max-images", "1",
                         "--no-progress", "--output", str(report), env=environment())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mIoU" in result.stdout and json.loads(report.read_text())["num_images"] == 1
    assert not [noise for noise in TF_NOISE if noise in result.stderr], result.stderr


def test_asking_for_a_subcommands_help():
    assert cli._asks_for_help(["--model", "m", "-h"]) and cli._asks_for_help(["--help"])
    assert not cli._asks_for_help(["--model", "m"]) and not cli._asks_for_help(["--", "--help"])


# The subcommands whose options this package spells with dashes (export, predict and serve are converted apart).
DASHED_COMMANDS = ("demo", "prepare", "train", "evaluate", "analyze-rates", "summary", "presets")


@pytest.mark.parametrize("command", DASHED_COMMANDS)
def test_options_are_spelled_with_dashes(command, capsys):
    """Every option's spelling is `--output-stride`; an underscore spelling (`--output_stride`) is only the old
    one, kept as an alias."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    options = set(re.findall(r"(?<![\w-])--\w[\w-]*", capsys.readouterr().out.partition("\noptions:")[2]))
    assert options and {option.replace("_", "-") for option in options} <= options


@pytest.mark.parametrize("parser, new, old, expected", [
    (train._parser, ["--data-dir", "d", "--model-dir", "m", "--batch-size", "4", "--learning-rate", "0.1",
                     "--print-config"],
     ["--data_dir", "d", "--model_dir", "m", "--batch_size", "4", "--learning_rate", "0.1", "--print_config"],
     {"data_dir": "d", "train.batch_size": 4, "train.learning_rate": 0.1, "print_config": True}),
    (evaluate._parser, ["--model", "m", "--data-dir", "d", "--output-stride", "8", "--max-images", "3",
                        "--multi-scale", "--no-progress"],
     ["--model", "m", "--data_dir", "d", "--output_stride", "8", "--max_images", "3", "--multi_scale",
      "--no_progress"],
     {"data_dir": "d", "output_stride": 8, "max_images": 3, "multi_scale": True, "no_progress": True}),
    (presets._parser, ["--cache-dir", "c"], ["--cache_dir", "c"], {"cache_dir": "c"}),
])
def test_the_old_underscore_spelling_still_works(parser, new, old, expected):
    args = parser().parse_args(new)
    assert args == parser().parse_args(old)
    assert {key: vars(args)[key] for key in expected} == expected


def test_subcommand_help_prints_its_options():
    result = run_deeplab("analyze-rates", "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: deeplab analyze-rates")
    for option in ("--crop-size", "--output-stride", "--rates", "--plot"):
        assert option in result.stdout


def test_analyze_rates_runs_through_the_deeplab_command(tmp_path):
    """The installed command end to end: the table, the suggestion and the PNG (values: tests/test_analysis.py)."""
    plot = tmp_path / "rates.png"
    result = run_deeplab("analyze-rates", "--crop-size", "513", "--output-stride", "8", "--rates", "1-64",
                         "--plot", str(plot))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "65x65 feature map" in result.stdout and "suggested largest rate: 36" in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_unknown_subcommand_fails_and_names_the_choices():
    result = run_deeplab("segment")
    assert result.returncode == 2
    assert "unknown command 'segment'" in result.stderr and "analyze-rates" in result.stderr


def test_train_takes_a_shipped_configs_name_or_a_path(capsys):
    expected = load_config(CONFIGS / "camvid_full.yaml", ["train.steps=150"])
    result = run_deeplab("train", "--config", "camvid_full", "--set", "train.steps=150", "--print-config")
    assert result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load(result.stdout) == expected
    # The same in process: the name with its suffix, and a path.
    for config in ("camvid_full.yaml", str(CONFIGS / "camvid_full.yaml")):
        assert train.main(["--config", config, "--set", "train.steps=150", "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out) == expected, config


def test_train_names_the_shipped_configs_for_an_unknown_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", "camvid_ful", "--print-config"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "'camvid_ful' is neither a file nor the name of a shipped config" in error
    assert all(path.stem in error for path in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("command", [deeplab_command(), [sys.executable, "-m", "keras_deeplab.cli"]])
def test_command_output_is_free_of_tensorflows_log_lines(command):
    result = subprocess.run(command + ["analyze-rates", "--crop-size", "65", "--rates", "1-4"], capture_output=True,
                            text=True, timeout=300, env=environment())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "suggested largest rate" in result.stdout
    assert not [noise for noise in TF_NOISE if noise in result.stderr], result.stderr


# A program named `deeplab`, as the console script is: it loads TensorFlow as the command does before a subcommand
# (elsewhere `import keras_deeplab` has done it), lets TensorFlow find its devices and run a kernel (where the device
# and CPU notices come), and prints the log level TensorFlow ran at.
COMMAND_LIKE_SCRIPT = """
import os
import keras_deeplab
keras_deeplab.load_classes()
import tensorflow as tf
tf.config.list_physical_devices()
print(float(tf.constant(1.0) + 1.0), os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
"""


@pytest.mark.parametrize("user_level, level", [(None, tf_logs.DEFAULT_LEVEL), ("0", "0"), ("2", "2")])
def test_the_command_runs_tensorflow_quietly_unless_the_user_sets_the_level(tmp_path, user_level, level):
    script = tmp_path / "deeplab"
    script.write_text(COMMAND_LIKE_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env=environment(user_level))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["2.0", level]
    if user_level is None:
        assert not [noise for noise in TF_NOISE if noise in result.stderr], result.stderr


def test_importing_the_library_leaves_tensorflows_logging_alone(tmp_path):
    script = tmp_path / "my_program.py"
    script.write_text(COMMAND_LIKE_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env=environment())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[1] != tf_logs.DEFAULT_LEVEL


@pytest.mark.parametrize("argv, orig_argv, expected", [
    (["/venv/bin/deeplab", "train"], None, True),
    (["deeplab-script.py"], None, True),
    (["-m"], ["python", "-X", "dev", "-m", "keras_deeplab.cli", "demo"], True),
    (["-m"], ["python", "-m", "pytest", "keras_deeplab.cli"], False),
    ([cli.__file__], ["python", "-m", "keras_deeplab.cli", "demo"], True),
    (["my_program.py"], None, False),
    (["-c"], ["python", "-c", "import keras_deeplab"], False),
])
def test_which_process_is_the_deeplab_command(monkeypatch, argv, orig_argv, expected):
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig_argv or ["python"] + argv)
    assert tf_logs.is_deeplab_command() == expected


# Stand-ins for what TensorFlow's libraries print while loading, before TensorFlow reads the level.
LOADING_LINES = {
    "notice": "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "info": "I0000 00:00:1796415924.641882    3909 port.cc:153] oneDNN custom operations are on.\n",
    "warning": "2025-09-17 14:44:05.157831: W external/x.cc:9] a warning in TensorFlow's older format\n",
    "error": "E0000 00:00:1796415924.641882    3909 cuda_platform.cc:52] an error\n",
    "python": "a line of Python's\n",
}


@pytest.mark.parametrize("user_level, shown", [
    (None, ["python"]),  # the command's default level, 3
    ("2", ["error", "python"]),
    ("1", ["notice", "warning", "error", "python"]),
    ("0", list(LOADING_LINES)),
])
def test_the_command_drops_what_tensorflow_logs_while_loading_below_the_level(monkeypatch, capfd, user_level, shown):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/deeplab"])
    if user_level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", user_level)
    capfd.readouterr()
    with tf_logs.quiet_in_the_command():
        for line in LOADING_LINES.values():
            os.write(2, line.encode())
    assert capfd.readouterr().err == "".join(LOADING_LINES[name] for name in shown)
