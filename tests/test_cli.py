"""The `deeplab` console entry point, run as a user runs it: in a subprocess."""
import pathlib
import re
import subprocess
import sys

from keras_deeplab.cli import COMMANDS


def deeplab_command():
    """The installed `deeplab` script next to this Python (pip install -e puts it there), else the module."""
    script = pathlib.Path(sys.executable).with_name("deeplab")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "keras_deeplab.cli"]


def run_deeplab(*args):
    return subprocess.run(deeplab_command() + list(args), capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand():
    result = run_deeplab("--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: deeplab")
    listed = re.findall(r"^ {4}(\S+)", result.stdout, flags=re.MULTILINE)  # argparse's subcommand lines
    assert listed == list(COMMANDS), result.stdout
    for _, help_text in COMMANDS.values():
        assert help_text.split()[0] in result.stdout


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
