"""`--preset` in the commands that take a pretrained model at its serving size (`deeplab export`, `deeplab predict`):
the flags, and the model with what serving needs of it (class names, colormap, `max_long_side`)."""


def add_preset_arguments(parser, source, help):
    """Adds `--preset` (with `help`) to the mutually exclusive group `source` of `parser`, and `--weights-url`."""
    source.add_argument("--preset", help=help)
    parser.add_argument("--weights-url", "--weights_url",
                        help="with --preset: mirror URL or folder holding the weight file "
                             "(default: $KERAS_DEEPLAB_WEIGHTS_URL, else the publisher's)")


def load_preset_source(args):
    """(model, `presets.preset_info`) of `args.preset`; ValueError naming the preset if it cannot be had."""
    from keras_deeplab.presets import load_preset, preset_info
    from keras_deeplab.weights import WeightsError

    try:
        return load_preset(args.preset, base_url=args.weights_url), preset_info(args.preset)
    except (WeightsError, ValueError) as error:
        raise ValueError(f"--preset {args.preset}: {error}") from error
