"""Training: `model.fit` of a DeepLabV3 (or another `model.architecture`) under a tf.distribute strategy, driven
by a YAML config.

    deeplab train --config camvid_demo --data-dir data/camvid --model-dir runs/demo
    deeplab train --config voc_train_aug --data-dir data/voc --model-dir runs/voc \\
        --set train.steps=60000 --set model.synchronized_bn=true
    deeplab train --config my_config.yaml --set train.steps=100 --print-config

`--config` takes a YAML file or the name of a config shipped with the package (the repository's
training/configs/*.yaml, installed as keras_deeplab.configs). A config has five sections (see DEFAULTS, the
paper's PASCAL VOC setting; the model section names an architecture, default deeplabv3, and takes its class's
keyword arguments); a config file may name a `base:` config (path relative to it) whose values it overrides.
Batch size, learning rate and steps are global (the strategy splits each batch across replicas).

`<model_dir>` receives model.keras (best by val mIoU, or the final model without validation), log.csv,
TensorBoard logs/, config.yaml, and backup/ while unfinished: run the same command again after a crash to resume
at the last backup (the end of an epoch, or every train.backup_every_steps steps within one), with the same total
number of steps.
"""
import argparse
import copy
import math
import os
import re
import sys
from importlib.resources import files

import keras
import yaml

import tensorflow as tf

from keras_deeplab.architectures import DEFAULT_ARCHITECTURE, architecture_defaults, get_architecture
from keras_deeplab.data.pipeline import eval_dataset, load_dataset_info, tfrecord_files, train_dataset
from keras_deeplab.training import multi_worker
from keras_deeplab.training.callbacks import (BACKUP_DIR, MODEL_FILE, TrainingDivergedError, backed_up_step,
                                              training_callbacks)
from keras_deeplab.training.evaluate import load_model
from keras_deeplab.training.recipe import compile_model, freeze_batch_norm
from keras_deeplab.training.strategy import describe, get_strategy
from keras_deeplab.viz import get_colormap

EXIT_DIVERGED = 3


def model_defaults(architecture=DEFAULT_ARCHITECTURE):
    """The config's model section for `architecture`: its name and its class's keyword-only arguments with their
    defaults (architectures.architecture_defaults; for DeepLabV3 the paper's model). A config that wants other
    values (ImageNet weights, synchronized BN) sets them."""
    return {"architecture": architecture, **architecture_defaults(architecture)}


DEFAULTS = {
    # The architecture (keras_deeplab.architectures) and the keyword arguments of its class, from its signature.
    "model": model_defaults(),
    # Training input (keras_deeplab.data.pipeline.train_dataset); resize rescales every image first.
    "data": {"train_split": "train", "crop_size": [513, 513], "min_scale": 0.5, "max_scale": 2.0,
             "flip": True, "resize": None, "shuffle_buffer": 256},
    # Global batch size and steps; poly learning rate lr * (1 - step / steps) ** lr_power. backup_every_steps:
    # also back up within epochs at multiples of this step (null: at epoch ends only). tensorboard_images: validation
    # images drawn with label and prediction in TensorBoard at each epoch end (0: none).
    "train": {"batch_size": 16, "steps": 30000, "steps_per_epoch": 1000, "learning_rate": 0.007,
              "lr_power": 0.9, "end_learning_rate": 0.0, "momentum": 0.9, "weight_decay": 1e-4,
              "freeze_bn": False, "init_checkpoint": None, "mixed_precision": None, "jit_compile": "auto",
              "seed": None, "tensorboard": True, "tensorboard_images": 3, "backup_every_steps": 100},
    # Validation after every epoch (single scale, whole images); split null trains without validation.
    "eval": {"split": "val", "max_images": None},
    # strategy: auto | default | mirrored | multi_worker | tpu; logical_cpus splits the CPU (for tests).
    "distribute": {"strategy": "auto", "logical_cpus": None},
}
MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")
# The shipped configs: the repository's training/configs/, installed as this package (pyproject.toml).
CONFIG_PACKAGE = "keras_deeplab.configs"


def rebase_model_section(model, update):
    """(the defaults of the architecture that the model section update `update` names, else of `model`'s, the
    values to set on them: those `model` sets apart from its own architecture's defaults, then `update`'s)."""
    architecture = update.get("architecture", model["architecture"])
    previous = model_defaults(model["architecture"])
    kept = {key: value for key, value in model.items() if value != previous[key]}
    return model_defaults(architecture), {**kept, **update}


def merge_config(base, update, source="config"):
    """`base` updated by the sections and keys of `update`; unknown sections or keys raise, naming them. The model
    section's keys are those of the architecture it names (`model.architecture`, default DeepLabV3)."""
    merged = copy.deepcopy(base)
    for section, values in (update or {}).items():
        if section not in merged:
            raise ValueError(f"{source}: unknown section {section!r}; expected one of {sorted(merged)}")
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {section!r} must be a mapping, got {values!r}")
        if section == "model":
            try:
                merged[section], values = rebase_model_section(merged[section], values)
            except (ValueError, ImportError) as err:
                raise ValueError(f"{source}: {err}") from err
        for key, value in values.items():
            if key not in merged[section]:
                known = f" (architecture {merged[section]['architecture']!r})" if section == "model" else ""
                raise ValueError(f"{source}: unknown key {section}.{key}; "
                                 f"{section}{known} has {sorted(merged[section])}")
            merged[section][key] = value
    return merged


def shipped_configs():
    """The names of the configs shipped with the package ("voc_train_aug", ...), sorted."""
    return sorted(entry.name.removesuffix(".yaml") for entry in files(CONFIG_PACKAGE).iterdir()
                  if entry.name.endswith(".yaml"))


def config_file(config):
    """The file of `config`: a path to a YAML file, or the name of a shipped config, with or without ".yaml"
    ("voc_train_aug"); FileNotFoundError naming the shipped configs otherwise."""
    config = os.fspath(config)
    if os.path.isfile(config):
        return config
    name = config.removesuffix(".yaml")
    if os.path.basename(name) == name and name in shipped_configs():
        return str(files(CONFIG_PACKAGE) / f"{name}.yaml")
    raise FileNotFoundError(f"config {config!r} is neither a file nor the name of a shipped config; "
                            f"shipped: {', '.join(shipped_configs())}")


class ConfigLoader(yaml.SafeLoader):
    """YAML as configs are written: `1e-4` is a number, as in YAML 1.2 and Python (PyYAML's YAML 1.1 reads a
    float without a dot as a string)."""


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))
NUMBERS = ("learning_rate", "lr_power", "end_learning_rate", "momentum", "weight_decay")  # train.*


def read_config_file(path):
    """The sections of a YAML config file, with its `base:` chain resolved (later files override)."""
    with open(path) as f:
        content = yaml.load(f, ConfigLoader) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections")
    base = content.pop("base", None)
    if base is None:
        return content
    parent = read_config_file(os.path.join(os.path.dirname(os.path.abspath(path)), base))
    for section, values in content.items():
        parent.setdefault(section, {}).update(values or {})
    return parent


def parse_override(text):
    """`"section.key=value"` -> {section: {key: value}}, the value parsed as YAML (`train.steps=100`)."""
    name, sep, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. train.steps=100")
    return {section: {key: yaml.load(value, ConfigLoader)}}


def load_config(path=None, overrides=()):
    """DEFAULTS, updated by the config `path` (a file or a shipped config's name, if any), then by `overrides`
    ("section.key=value")."""
    config = merge_config(DEFAULTS, read_config_file(config_file(path)), path) if path else copy.deepcopy(DEFAULTS)
    for text in overrides:
        config = merge_config(config, parse_override(text), f"override {text!r}")
    return check_config(config)


def check_config(config):
    """Validates a full config and normalizes crop_size to [height, width]; returns it."""
    train, data = config["train"], config["data"]
    for key in ("batch_size", "steps", "steps_per_epoch"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ValueError(f"train.{key} must be a positive integer, got {train[key]!r}")
    for key in NUMBERS:
        if not isinstance(train[key], (int, float)) or isinstance(train[key], bool) or not math.isfinite(train[key]):
            raise ValueError(f"train.{key} must be a number, got {train[key]!r}")
    every = train["backup_every_steps"]
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ValueError(f"train.backup_every_steps must be a positive integer or null, got {every!r}")
    images = train["tensorboard_images"]
    if not isinstance(images, int) or isinstance(images, bool) or images < 0:
        raise ValueError(f"train.tensorboard_images must be a non-negative integer, got {images!r}")
    if train["steps"] % min(train["steps_per_epoch"], train["steps"]):
        raise ValueError(f"train.steps ({train['steps']}) must be a multiple of train.steps_per_epoch "
                         f"({train['steps_per_epoch']})")
    if train["mixed_precision"] not in MIXED_PRECISION:
        raise ValueError(f"train.mixed_precision must be one of {MIXED_PRECISION}, "
                         f"got {train['mixed_precision']!r}")
    crop = data["crop_size"]
    crop = [crop, crop] if isinstance(crop, int) else list(crop)
    if len(crop) != 2 or not all(isinstance(c, int) and c > 0 for c in crop):
        raise ValueError(f"data.crop_size must be a positive int or [height, width], "
                         f"got {data['crop_size']!r}")
    data["crop_size"] = crop
    return config


def resolve_config(config):
    """A full, checked config from a possibly partial dict of sections (missing keys take DEFAULTS)."""
    return check_config(merge_config(DEFAULTS, config))


def build_model(model_config, num_classes, train_config):
    """The model of `model_config` (its `architecture`, default DeepLabV3, with the other keys as keyword
    arguments; under the mixed-precision policy, if any), with the weights of
    `train.init_checkpoint` when given (e.g. an OS16 model to fine-tune at OS8) and BatchNorm frozen if
    asked."""
    policy = keras.config.dtype_policy()
    if train_config["mixed_precision"]:
        keras.config.set_dtype_policy(train_config["mixed_precision"])
    arguments = dict(model_config)
    architecture = get_architecture(arguments.pop("architecture", DEFAULT_ARCHITECTURE))
    try:
        model = architecture(num_classes, **arguments)
    finally:
        keras.config.set_dtype_policy(policy)
    if train_config["init_checkpoint"]:
        source = load_model(train_config["init_checkpoint"])
        try:
            model.set_weights(source.get_weights())
        except ValueError as err:
            raise ValueError(f"train.init_checkpoint {train_config['init_checkpoint']}: its weights do not "
                             f"fit the configured model ({err})") from err
    if train_config["freeze_bn"]:
        freeze_batch_norm(model)
    return model


def shard_by_worker(dataset, num_files, strategy):
    """Lets each worker of a multi-worker strategy read its own TFRecord files when there are enough of them,
    and otherwise its own share of the examples (tf.data's default, file sharding, fails with fewer files than
    workers). Examples are then split after shuffling, so multi-worker runs need train.seed set to partition
    the data exactly."""
    if not multi_worker.is_multi_worker(strategy):
        return dataset
    workers = strategy.num_replicas_in_sync // len(strategy.extended.worker_devices)
    if num_files >= workers:
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def make_datasets(config, data_dir, info, strategy, skip_batches=0):
    """The training dataset (global batches, repeated, after the first `skip_batches`) and the validation
    dataset (one whole image per replica, or None without eval.split) of a config."""
    data_cfg, eval_cfg = config["data"], config["eval"]
    train_data = train_dataset(
        data_dir, data_cfg["train_split"], batch_size=config["train"]["batch_size"],
        crop_size=data_cfg["crop_size"], min_scale=data_cfg["min_scale"], max_scale=data_cfg["max_scale"],
        flip=data_cfg["flip"], ignore_label=info["ignore_label"], shuffle_buffer=data_cfg["shuffle_buffer"],
        seed=config["train"]["seed"], resize=data_cfg["resize"], skip_batches=skip_batches)
    train_data = shard_by_worker(train_data, len(tfrecord_files(data_dir, data_cfg["train_split"])), strategy)
    if eval_cfg["split"] is None:
        return train_data, None
    replicas = strategy.num_replicas_in_sync
    # eval_dataset pads images of different sizes within a batch (labels with the ignore value).
    val_data = eval_dataset(data_dir, eval_cfg["split"], batch_size=replicas, resize=data_cfg["resize"])
    val_data = shard_by_worker(val_data, len(tfrecord_files(data_dir, eval_cfg["split"])), strategy)
    val_images = min(info["splits"][eval_cfg["split"]], eval_cfg["max_images"] or math.inf)
    val_steps = math.ceil(val_images / replicas)
    # A known length: with validation_steps instead, Keras 3.15 under a strategy reuses the exhausted
    # iterator of the previous validation for its symbolic build and stops with StopIteration.
    return train_data, val_data.take(val_steps).apply(tf.data.experimental.assert_cardinality(val_steps))


def image_samples(config, data_dir):
    """The first train.tensorboard_images (image, label) pairs of the validation split, as NumPy arrays (none
    without TensorBoard or validation)."""
    count, split = config["train"]["tensorboard_images"], config["eval"]["split"]
    if not (config["train"]["tensorboard"] and count and split is not None):
        return []
    dataset = eval_dataset(data_dir, split, resize=config["data"]["resize"]).take(count)
    return [(image[0], label[0]) for image, label in dataset.as_numpy_iterator()]


def train(config, data_dir, model_dir, *, verbose=1):
    """Trains the model described by `config` (sections as in DEFAULTS, missing keys defaulted) on the
    prepared dataset at `data_dir`, writing to `model_dir`; resumes an interrupted run in the same model_dir.
    Returns (model, history); the model carries the weights saved as `<model_dir>/model.keras` (best val mIoU,
    or final without validation). Raises TrainingDivergedError when the loss becomes NaN or infinite."""
    config = resolve_config(config)
    model_cfg, train_cfg, eval_cfg = config["model"], config["train"], config["eval"]
    if model_cfg.get("aux_head"):
        raise ValueError("model.aux_head: training with the auxiliary head is not supported (the recipe's loss and "
                         "mIoU metric, the best checkpoint and evaluation take the model's one logits output; the "
                         "paper trains without it); set model.aux_head=false")
    strategy = get_strategy(config["distribute"]["strategy"], config["distribute"]["logical_cpus"])
    info = load_dataset_info(data_dir)
    replicas = strategy.num_replicas_in_sync
    if train_cfg["batch_size"] % replicas:
        raise ValueError(f"train.batch_size {train_cfg['batch_size']} must be divisible by the {replicas} "
                         "replicas")
    if verbose:
        print(f"deeplab train: {describe(strategy)}, global batch {train_cfg['batch_size']}, "
              f"{train_cfg['steps']} steps")
        if replicas > 1 and not model_cfg.get("synchronized_bn"):
            print("deeplab train: note: without model.synchronized_bn=true every replica keeps BatchNorm "
                  "statistics of its own examples and the first replica's are saved (Keras 3.15)")
        if multi_worker.is_multi_worker(strategy) and train_cfg["seed"] is None:
            print("deeplab train: note: set train.seed so that all workers shuffle alike and split the examples "
                  "exactly")
    validate = eval_cfg["split"] is not None
    if validate and eval_cfg["split"] not in info["splits"]:
        raise ValueError(f"eval.split {eval_cfg['split']!r} is not in {data_dir} (splits: "
                         f"{sorted(info['splits'])}); set eval.split=null to train without validation")
    if train_cfg["seed"] is not None:
        keras.utils.set_random_seed(train_cfg["seed"])
    run_dir = multi_worker.worker_dir(model_dir, strategy)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        dataset = {k: info[k] for k in ("name", "num_classes", "class_names", "ignore_label")}
        yaml.safe_dump({**config, "dataset": dataset}, f, sort_keys=False)

    with strategy.scope():
        model = build_model(model_cfg, info["num_classes"], train_cfg)
        compile_model(model, num_classes=info["num_classes"], steps=train_cfg["steps"],
                      learning_rate=train_cfg["learning_rate"], lr_power=train_cfg["lr_power"],
                      end_learning_rate=train_cfg["end_learning_rate"], momentum=train_cfg["momentum"],
                      weight_decay=train_cfg["weight_decay"], ignore_label=info["ignore_label"],
                      jit_compile=train_cfg["jit_compile"])
    multi_worker.patch_model(model, strategy)

    steps_per_epoch = min(train_cfg["steps_per_epoch"], train_cfg["steps"])
    resume_step = backed_up_step(os.path.join(run_dir, BACKUP_DIR))
    # A seeded stream continues at the batch the backed-up run would have read next (the examples are the same
    # on every run); an unseeded one is random anyway. Multi-worker input is split after this point, so there
    # each run reads from the start of its stream.
    seeded = train_cfg["seed"] is not None
    skip_batches = resume_step if seeded and not multi_worker.is_multi_worker(strategy) else 0
    if verbose and resume_step:
        epoch, batch = divmod(resume_step, steps_per_epoch)
        print(f"deeplab train: resuming from the backup at step {resume_step} of {train_cfg['steps']} "
              f"(epoch {epoch + 1}, batch {batch + 1} next)")
    train_data, val_data = make_datasets(config, data_dir, info, strategy, skip_batches)
    callbacks = training_callbacks(run_dir, steps_per_epoch=steps_per_epoch,
                                   backup_every_steps=train_cfg["backup_every_steps"], validate=validate,
                                   tensorboard=train_cfg["tensorboard"], image_samples=image_samples(config, data_dir),
                                   colormap=get_colormap(info["colormap"]))
    history = model.fit(train_data, epochs=train_cfg["steps"] // steps_per_epoch,
                        steps_per_epoch=steps_per_epoch, validation_data=val_data, shuffle=False,
                        verbose=verbose, callbacks=callbacks)
    model_path = os.path.join(run_dir, MODEL_FILE)
    if validate and os.path.exists(model_path):
        model.load_weights(model_path)
    else:
        model.save(model_path)
    return model, history


# Flags for config values often changed: --batch-size 8 is --set train.batch_size=8 (flags, config key, type).
SHORTCUTS = ((("--steps",), "train.steps", int), (("--batch-size", "--batch_size"), "train.batch_size", int),
             (("--learning-rate", "--learning_rate"), "train.learning_rate", float), (("--seed",), "train.seed", int))


def _parser():
    parser = argparse.ArgumentParser(prog="deeplab train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file, or the name of a shipped config "
                        f"({', '.join(shipped_configs())}); default: the paper's VOC setting")
    parser.add_argument("--data-dir", "--data_dir", help="prepared dataset (deeplab prepare); required to train")
    parser.add_argument("--model-dir", "--model_dir",
                        help="output directory; rerun with it to resume; required to train")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (YAML syntax), e.g. --set train.steps=100; repeatable")
    for flags, key, kind in SHORTCUTS:
        parser.add_argument(*flags, dest=key, type=kind, metavar="VALUE", help=f"same as --set {key}=VALUE")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="0 silent, 1 progress bar (default), 2 one line per epoch")
    parser.add_argument("--print-config", "--print_config", action="store_true",
                        help="print the resolved config (file, defaults and overrides) as YAML and exit")
    return parser


def main(argv=None):
    """`deeplab train`: 0 on success, 2 on a bad config, 3 when training diverged (NaN loss)."""
    parser = _parser()
    args = parser.parse_args(argv)
    overrides = args.overrides + [f"{key}={getattr(args, key)}" for _, key, _ in SHORTCUTS
                                  if getattr(args, key) is not None]
    try:
        config = load_config(args.config, overrides)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if args.print_config:
        yaml.safe_dump(config, sys.stdout, sort_keys=False)
        return 0
    missing = [flag for flag, value in (("--data-dir", args.data_dir), ("--model-dir", args.model_dir))
               if value is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        train(config, args.data_dir, args.model_dir, verbose=args.verbose)
    except TrainingDivergedError as err:
        print(f"deeplab train: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0
