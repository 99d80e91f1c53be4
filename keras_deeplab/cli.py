"""The `deeplab` command: one subcommand per job, each implemented by a `main(argv)` elsewhere.

Subcommands are imported lazily: a command loads only its own modules (the data, training or serving stacks), and
`deeplab --help` imports no TensorFlow (the package defers its eager imports in this command: __init__.py). Before
running a subcommand, `main` imports TensorFlow and registers the package's Keras classes (`load_classes`), as
`import keras_deeplab` does elsewhere; a subcommand's own --help skips that, so it is quick where the subcommand's
module does not import TensorFlow itself (analyze-rates, demo).
"""
import argparse
import importlib
import sys

import keras_deeplab
from keras_deeplab.tf_logs import quiet_in_the_command

# name -> (module:function taking argv, one-line help)
COMMANDS = {
    "demo": ("keras_deeplab.demo:main", "run the bundled end-to-end demo (train, evaluate, export, predict)"),
    "prepare": ("keras_deeplab.data.prepare:main",
                "convert a dataset (VOC, image+label folders, TFDS) to TFRecords"),
    "train": ("keras_deeplab.training.train:main",
              "train a model from a config file (model.fit under tf.distribute)"),
    "evaluate": ("keras_deeplab.training.evaluate:main",
                 "evaluate mIoU (single/multi-scale, flip) and write JSON"),
    "export": ("keras_deeplab.export:main", "export a SavedModel for TensorFlow Serving"),
    "serve": ("keras_deeplab.serving.server:main", "serve a SavedModel over TF Serving's REST API"),
    "predict": ("keras_deeplab.predict:main", "segment images and write label PNGs and colour overlays"),
    "analyze-rates": ("keras_deeplab.analysis:main",
                      "tabulate and plot valid atrous taps per rate (paper Fig. 4)"),
    "summary": ("keras_deeplab.complexity:main", "print parameters and GFLOPs of model variants"),
    "presets": ("keras_deeplab.presets:main", "list the pretrained models and whether they are cached"),
}
HELP_FLAGS = ("-h", "--help")


def _parser():
    parser = argparse.ArgumentParser(
        prog="deeplab",
        description="keras_deeplab: DeepLabv3 semantic segmentation (Keras 3 / TensorFlow).",
        epilog="Run 'deeplab COMMAND --help' for the options of a command.\n\n"
               "TensorFlow's own log lines (notices, warnings and errors of its C++ runtime) are hidden: deeplab\n"
               "sets TF_CPP_MIN_LOG_LEVEL=3 unless it is set. To see them, set it yourself: 0 shows them all,\n"
               "1 warnings and errors, 2 errors only.\n\n"
               "Memory on CPU: TensorFlow keeps freed tensor memory in a pool for speed. Set\n"
               "KERAS_DEEPLAB_CPU_ALLOCATOR=system for the least memory instead (each tensor its own malloc, as\n"
               "torch does), at 1.35-1.85x the CPU time.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _asks_for_help(argv):
    """Whether argparse will answer `argv` (a subcommand's arguments) with its help: -h or --help before any `--`."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    return any(flag in options for flag in HELP_FLAGS)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] in HELP_FLAGS:
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    module_name, func_name = COMMANDS[name][0].split(":")
    # Whatever imports TensorFlow here (load_classes, or a subcommand's module), its loading log lines stay hidden.
    with quiet_in_the_command():
        if not _asks_for_help(rest):
            keras_deeplab.load_classes()
        func = getattr(importlib.import_module(module_name), func_name)
    return func(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
