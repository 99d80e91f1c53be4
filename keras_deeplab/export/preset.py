"""`--preset` in the commands that take a pretrained model at its serving size (`deeplab export`, `deeplab predict`):
the flags, and the model with what serving needs of it (class names, colormap, `max_long_side`)."""


def add_model_source_arguments(parser, model_help, preset_help, **model_options):
    """Adds the required choice between `--model` and `--preset` (and `--weights-url` for the preset) to `parser`;
    returns the group, for more sources."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=model_help, **model_options)
    source.add_argument("--preset", help=preset_help)
    parser.add_argument("--weights-url", "--weights_url",
                        help="with --preset: mirror URL or folder holding the weight file "
                             "(default: $KERAS_DEEPLAB_WEIGHTS_URL, else the publisher's)")
    return source


def load_preset_source(args):
    """(model, `presets.preset_info`) of `args.preset`; ValueError naming the preset if it cannot be had."""
    from keras_deeplab.presets import load_preset, preset_info
    from keras_deeplab.weights import WeightsError

    try:
        return load_preset(args.preset, base_url=args.weights_url), preset_info(args.preset)
    except (WeightsError, ValueError) as error:
        raise ValueError(f"--preset {args.preset}: {error}") from error
