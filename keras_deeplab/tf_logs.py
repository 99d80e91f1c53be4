"""TensorFlow's C++ log lines in the `deeplab` command: hidden unless the user sets `TF_CPP_MIN_LOG_LEVEL`.

On a machine without a GPU, TensorFlow 2.21 prints its notices on every run (oneDNN, no CUDA driver, failed
cuInit, CPU instructions). The `deeplab` command runs TensorFlow at log level 3 (fatal only; TensorFlow's failures
still raise Python exceptions) unless the user set `TF_CPP_MIN_LOG_LEVEL` (0 shows everything). TensorFlow reads that
setting only after loading its libraries, which log some of those lines first whatever it says, so the command
also holds back stderr while TensorFlow is imported and drops the log lines below the level. A program that
imports keras_deeplab keeps TensorFlow's own behaviour.
"""
import contextlib
import os
import re
import sys
import tempfile

DEFAULT_LEVEL = "3"
_SEVERITIES = "IWEF"  # TF_CPP_MIN_LOG_LEVEL n hides the first n of these
# absl's format ("I0000 00:00:1796415924.641882    3909 port.cc:153] ...", before absl is set up) and TF's older one
# ("2025-09-17 14:44:05.157831: I external/...cc:32] ...").
_LOG_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+ +\d+ \S+:\d+\]"
                       r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) \S+:\d+\]")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_CLI_FILE = os.path.join(os.path.dirname(os.path.realpath(__file__)), "cli.py")


def is_deeplab_command():
    """Whether this process is the `deeplab` command: its console script, or `python -m keras_deeplab.cli`."""
    argv0 = (getattr(sys, "argv", None) or [""])[0]
    # The script's name as pip's launchers write it ("deeplab", or "deeplab.exe" / "deeplab-script.py").
    if re.sub(r"(-script\.pyw?|\.exe)?$", "", os.path.basename(argv0)) == "deeplab":
        return True
    # While `python -m MODULE` imports MODULE's package, sys.argv[0] is "-m" (the interpreter's own arguments name
    # the module); once MODULE runs, it is MODULE's file.
    if argv0 == "-m":
        orig_argv = getattr(sys, "orig_argv", [])
        return "-m" in orig_argv[:-1] and orig_argv[orig_argv.index("-m") + 1] == "keras_deeplab.cli"
    return os.path.realpath(argv0) == _CLI_FILE


def _hidden(line, level):
    """Whether `line` is a TensorFlow log line that TF_CPP_MIN_LOG_LEVEL `level` hides (absl's notice counts as a
    warning)."""
    if line.rstrip("\r\n") == _ABSL_NOTICE:
        return level > 1
    match = _LOG_LINE.match(line)
    return bool(match) and _SEVERITIES.index(match.group(1) or match.group(2)) < level


def _level(value):
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (anything but a number shows everything)."""
    try:
        return int(value)
    except ValueError:
        return 0


@contextlib.contextmanager
def quiet_in_the_command():
    """In the `deeplab` command: sets `TF_CPP_MIN_LOG_LEVEL` to DEFAULT_LEVEL unless the user set it, and drops
    the TensorFlow log lines below that level from what the body writes to stderr (everything else is written
    when it ends). Elsewhere it does nothing."""
    if not is_deeplab_command():
        yield
        return
    level = _level(os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL))
    if level <= 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _hidden(line, level))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
