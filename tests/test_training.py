"""Training recipe and evaluation, in process and fast: loss and metrics against NumPy, the poly schedule,
weight decay, frozen BN, configs, strategy choice, the NaN stop, CSV/backup bookkeeping, multi-scale + flip
inference and the evaluation report / CLI on a tiny synthetic dataset."""
import inspect
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers.graphs import downstream
from helpers.training_data import CLASS_NAMES
from keras_deeplab import DeepLabV3
from keras_deeplab.data.pipeline import eval_dataset
from keras_deeplab.optimizers import SGDWithL2
from keras_deeplab.training import callbacks as cb
from keras_deeplab.training import evaluate as ev
from keras_deeplab.training import multi_worker, recipe, strategy
from keras_deeplab.training import train as train_module
from keras_deeplab.training.train import DEFAULTS, build_model, load_config, parse_override, resolve_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
RNG = np.random.default_rng(0)


def numpy_iou(labels, predictions, num_classes, ignore=255):
    """Per-class IoU (nan where the union is empty) by direct counting."""
    valid = labels != ignore
    ious = []
    for c in range(num_classes):
        inter = np.sum((labels == c) & (predictions == c) & valid)
        union = np.sum(((labels == c) | (predictions == c)) & valid)
        ious.append(inter / union if union else np.nan)
    return np.array(ious)


def colour_oracle():
    """A 1x1-conv model reading the synthetic classes off the colours: logit1 = R - 160, logit2 = B - 160."""
    images = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 1)
    model = keras.Model(images, conv(images))
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    kernel[0, 0, 0, 1] = kernel[0, 0, 2, 2] = 1.0
    conv.set_weights([kernel, np.array([0.0, -160.0, -160.0], np.float32)])
    return model


# ---- recipe

def test_loss_is_cross_entropy_averaged_over_non_ignored_pixels():
    logits = RNG.normal(size=(2, 5, 6, 4)).astype("float32")
    labels = RNG.integers(0, 4, size=(2, 5, 6))
    labels[0, :2] = 255
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    expected = -np.mean(picked[valid])
    loss = float(recipe.segmentation_loss()(labels, logits))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_mean_iou_metric_and_report_match_direct_counting():
    num_classes = 5
    labels = RNG.integers(0, num_classes, size=(3, 16, 16))
    labels[:, :3] = 255
    labels[labels == 4] = 0  # class 4 never appears in the labels...
    logits = RNG.normal(size=(3, 16, 16, num_classes)).astype("float32")
    logits[..., 3] -= 100  # ...and class 3 is never predicted
    predictions = logits.argmax(-1)
    reference = numpy_iou(labels, predictions, num_classes)
    metric = recipe.mean_iou_metric(num_classes)
    metric.update_state(labels, logits)
    assert float(metric.result()) == pytest.approx(np.nanmean(reference), rel=1e-5)

    confusion = ev.confusion_matrix(labels, predictions, num_classes).numpy()
    assert confusion.sum() == np.sum(labels != 255)
    report = ev.iou_report(confusion, [f"c{i}" for i in range(num_classes)])
    assert report["mean_iou"] == pytest.approx(np.nanmean(reference), rel=1e-9)
    for i, value in enumerate(reference):
        assert report["per_class_iou"][f"c{i}"] == (None if np.isnan(value) else pytest.approx(value))
    valid = labels != 255
    assert report["pixel_accuracy"] == pytest.approx(np.mean(predictions[valid] == labels[valid]))


def test_poly_schedule_follows_the_formula_and_serializes():
    schedule = recipe.poly_schedule(0.007, 1000, power=0.9)
    for step in (0, 1, 250, 999, 1000, 1500):
        expected = 0.007 * (1 - min(step, 1000) / 1000) ** 0.9
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(restored(400)) == pytest.approx(float(schedule(400)))
    with pytest.raises(ValueError, match="steps"):
        recipe.poly_schedule(0.007, 0)


def test_weight_decay_is_the_gradient_of_an_l2_penalty_on_conv_kernels_only():
    """Two steps of SGDWithL2 on data gradients move every variable as Keras' SGD does on the gradients of the
    loss plus `l2 / 2 * sum(w**2)` over the convolution kernels (the reference code's penalty)."""
    model = DeepLabV3(4, backbone="mobilenet_v2", aspp_filters=8)
    variables = model.trainable_variables
    kernels = {id(layer.kernel) for layer in model._flatten_layers(include_self=False)
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))}
    start = [v.numpy() for v in variables]
    steps = [[tf.constant(RNG.normal(size=v.shape).astype("float32")) for v in variables] for _ in range(2)]

    reference = keras.optimizers.SGD(0.1, momentum=0.9)
    for data_gradients in steps:
        with tf.GradientTape() as tape:
            penalty = 1e-2 / 2 * tf.add_n([tf.reduce_sum(tf.square(v.value)) for v in variables if id(v) in kernels])
        penalty_gradients = tape.gradient(penalty, [v.value for v in variables], unconnected_gradients="zero")
        reference.apply([g + p for g, p in zip(data_gradients, penalty_gradients)], variables)
    expected = [v.numpy() for v in variables]

    for v, value in zip(variables, start):
        v.assign(value)
    optimizer = SGDWithL2(0.1, momentum=0.9, l2=1e-2)
    apply = tf.function(lambda gradients: optimizer.apply(gradients, variables))
    for data_gradients in steps:
        apply(data_gradients)
    assert {id(v) for v in variables if optimizer.decays(v)} == kernels and len(kernels) > 50  # no BN, no bias
    for v, value in zip(variables, expected):
        np.testing.assert_allclose(v.numpy(), value, rtol=1e-5, atol=1e-6, err_msg=v.path)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, SGDWithL2) and (restored.l2, restored.momentum) == (1e-2, 0.9)
    with pytest.raises(ValueError, match="l2"):
        SGDWithL2(0.1, l2=-1.0)


@pytest.mark.parametrize("optimizer,early", [(SGDWithL2(0.1, momentum=0.9, l2=1e-4), []),
                                             (keras.optimizers.SGD(0.1, momentum=0.9), ["Mul", "Mul"])],
                         ids=["ours", "keras"])
def test_weight_decay_and_momentum_wait_for_the_gradient(optimizer, early):
    """In a traced update, `l2 * w` and `momentum * m` are computed from a variable once its gradient exists:
    nothing of a variable's size is computed from the variables alone, which TF's executor would run at the start
    of a training step and keep until the backward reaches the variable. Keras' SGD computes `momentum * m` early
    (one Mul per variable)."""
    variables = [keras.Variable(np.ones((3, 3, 2, 4)), name="kernel"), keras.Variable(np.ones(4), name="bias")]
    optimizer.build(variables)
    graph = tf.function(lambda gradients: optimizer.apply(gradients, variables)).get_concrete_function(
        [tf.TensorSpec(v.shape) for v in variables]).graph
    from_gradients = downstream(graph, {t.op.name for t in graph.inputs if t.dtype == tf.float32})
    reads = {op.name for op in graph.get_operations() if op.type == "ReadVariableOp"}
    from_variables_alone = [graph.get_operation_by_name(name) for name in downstream(graph, reads) - from_gradients
                            if name not in reads]
    assert sorted(op.type for op in from_variables_alone if op.outputs and op.outputs[0].shape.rank) == early


def traced_train_steps():
    """The graphs of one training step that Keras has traced and that are alive in this process (ids)."""
    import gc

    from tensorflow.python.framework.func_graph import FuncGraph

    gc.collect()
    return {id(graph) for graph in gc.get_objects()
            if isinstance(graph, FuncGraph) and graph.name == "one_step_on_data"}


@pytest.mark.parametrize("built", [True, False], ids=["compile_model", "optimizer_left_unbuilt"])
def test_compile_model_builds_the_optimizer_so_the_train_step_is_traced_once(built):
    """With its variables created before the first step, Keras' train function is traced (and kept) once; left to
    the first step, TF traces it again to lift the variables' initialisation and keeps both graphs."""
    images = keras.Input((None, None, 3))
    model = keras.Model(images, keras.layers.Conv2D(3, 3, padding="same")(images))
    recipe.compile_model(model, num_classes=3, steps=10)
    if not built:  # as Keras' compile leaves it
        model.compile(optimizer=recipe.sgd(steps=10), loss=recipe.segmentation_loss())
    assert model.optimizer.built == built
    images = RNG.uniform(0, 255, (2, 33, 33, 3)).astype("float32")
    before = traced_train_steps()
    model.train_on_batch(images, RNG.integers(0, 3, (2, 33, 33)))
    model.train_on_batch(images, RNG.integers(0, 3, (2, 33, 33)))
    assert len(traced_train_steps() - before) == (1 if built else 2)


def test_frozen_batch_norm_keeps_its_statistics_in_training_mode():
    model = DeepLabV3(3, backbone="mobilenet_v2", aspp_filters=8, bn_momentum=0.5)
    bns = [layer for layer in model._flatten_layers(include_self=False)
           if isinstance(layer, keras.layers.BatchNormalization)]
    images = RNG.uniform(0, 255, (2, 33, 33, 3)).astype("float32")
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    model(images, training=True)
    assert any(not np.array_equal(bn.moving_mean.numpy(), mean) for bn, mean in zip(bns, before))
    assert recipe.freeze_batch_norm(model) == len(bns) > 0
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    model(images, training=True)
    for bn, mean in zip(bns, before):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    frozen = {id(v) for bn in bns for v in bn.weights}
    assert model.trainable_weights and not frozen & {id(v) for v in model.trainable_weights}


# ---- configs

def test_every_shipped_config_loads():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert {"voc_train_aug.yaml", "cityscapes.yaml", "camvid_demo.yaml", "camvid_full.yaml"} <= set(names)
    model_arguments = set(inspect.signature(DeepLabV3.__init__).parameters)
    assert set(DEFAULTS["model"]) - {"architecture"} <= model_arguments  # and DeepLabV3 keyword arguments
    for name in names:
        config = load_config(CONFIGS / name)
        assert set(config["model"]) == set(train_module.model_defaults(config["model"]["architecture"]))


def test_the_model_section_is_deeplabv3s_keyword_arguments():
    """The architecture (default deeplabv3), then every keyword argument of DeepLabV3 but input_shape and name,
    with DeepLabV3's default, and each settable; an unknown key is refused, naming the allowed ones."""
    parameters = inspect.signature(DeepLabV3.__init__).parameters
    keywords = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert list(DEFAULTS["model"]) == ["architecture"] + [name for name in keywords
                                                          if name not in ("input_shape", "name")]
    assert DEFAULTS["model"]["architecture"] == "deeplabv3"
    for name, value in list(DEFAULTS["model"].items())[1:]:
        default = parameters[name].default
        assert value == (list(default) if isinstance(default, tuple) else default), name
    values = {"architecture": "deeplabv3", "backbone": "resnet50", "output_stride": 8, "multi_grid": [1, 1, 1],
              "atrous_rates": [12, 24, 36], "image_pooling": False, "aspp_filters": 64, "aspp_dropout": 0.1,
              "head_conv": True, "aux_head": True, "preprocessing": None, "backbone_weights": "imagenet",
              "bn_momentum": 0.99, "synchronized_bn": True, "atrous_implementation": "native"}
    assert values.keys() == DEFAULTS["model"].keys()
    assert load_config(None, [f"model.{key}={json.dumps(value)}" for key, value in values.items()])["model"] == values
    for key in ("input_shape", "name", "num_classes", "aux"):
        with pytest.raises(ValueError, match=f"unknown key model.{key};") as error:
            load_config(None, [f"model.{key}=1"])
        assert all(repr(name) in str(error.value) for name in DEFAULTS["model"])


def test_the_aux_head_builds_from_the_config_but_is_not_trained(tmp_path, capsys):
    assert train_module.main(["--set", "model.aux_head=true", "--print-config"]) == 0
    assert "aux_head: true" in capsys.readouterr().out
    config = load_config(None, ["model.aux_head=true", "model.backbone=mobilenet_v3_large", "model.aspp_filters=8"])
    model = build_model(config["model"], 3, config["train"])
    outputs = model(RNG.uniform(0, 255, (1, 33, 33, 3)).astype("float32"))
    assert model.aux_head and outputs["aux"].shape == outputs["out"].shape == (1, 33, 33, 3)
    with pytest.raises(ValueError, match="model.aux_head: training with the auxiliary head is not supported"):
        train_module.train(config, tmp_path / "data", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_table5_configs_are_the_papers_rows():
    expected = {
        "mg111_aspp": ([1, 1, 1], [6, 12, 18], False), "mg121_aspp": ([1, 2, 1], [6, 12, 18], False),
        "mg124_aspp": ([1, 2, 4], [6, 12, 18], False), "mg124_aspp24": ([1, 2, 4], [6, 12, 18, 24], False),
        "mg124_aspp_pool": ([1, 2, 4], [6, 12, 18], True),
    }
    assert {p.stem[len("voc_table5_"):] for p in CONFIGS.glob("voc_table5_*.yaml")} == set(expected)
    for row, (multi_grid, rates, pooling) in expected.items():
        config = load_config(CONFIGS / f"voc_table5_{row}.yaml")
        model = config["model"]
        assert model["multi_grid"] == multi_grid and model["atrous_rates"] == rates
        assert model["image_pooling"] == pooling
        assert (model["backbone"], model["output_stride"]) == ("resnet101", 16)
        train = config["train"]
        assert (train["batch_size"], train["steps"], train["learning_rate"], config["data"]["crop_size"]) == (
            16, 30000, 0.007, [513, 513])
    assert load_config(CONFIGS / "cityscapes.yaml")["data"]["crop_size"] == [769, 769]


def test_config_base_chain_overrides_and_errors(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "train:\n  steps: 100\n  steps_per_epoch: 10\nmodel:\n  backbone: resnet50\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  steps: 40\n")
    config = load_config(tmp_path / "child.yaml", ["model.aspp_filters=32", "data.crop_size=65"])
    assert config["train"]["steps"] == 40 and config["train"]["steps_per_epoch"] == 10
    assert config["model"]["backbone"] == "resnet50" and config["model"]["aspp_filters"] == 32
    assert config["data"]["crop_size"] == [65, 65]
    assert config["train"]["learning_rate"] == DEFAULTS["train"]["learning_rate"]
    assert parse_override("train.init_checkpoint=null") == {"train": {"init_checkpoint": None}}
    with pytest.raises(ValueError, match="unknown key train.stepz"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ValueError, match="unknown section"):
        resolve_config({"optimizer": {"lr": 1}})
    with pytest.raises(ValueError, match="section.key=value"):
        parse_override("steps=3")
    with pytest.raises(ValueError, match="multiple of train.steps_per_epoch"):
        load_config(None, ["train.steps=25", "train.steps_per_epoch=10"])
    with pytest.raises(ValueError, match="mixed_precision"):
        load_config(None, ["train.mixed_precision=float8"])


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    """`1e-4` in a config file or an override, and `--learning_rate 1e-05` (which reaches the config as text),
    are floats; a value that is not a number is refused by name."""
    (tmp_path / "decay.yaml").write_text("train:\n  weight_decay: 1e-4\n  momentum: 9E-1\n")
    config = load_config(tmp_path / "decay.yaml", ["train.learning_rate=2e-3", "train.lr_power=+1e0"])
    assert config["train"]["weight_decay"] == 1e-4 and config["train"]["momentum"] == 0.9
    assert config["train"]["learning_rate"] == 0.002 and config["train"]["lr_power"] == 1.0
    assert parse_override("model.name=1e4x") == {"model": {"name": "1e4x"}}  # not a number: text
    assert train_module.main(["--learning_rate", "0.00001", "--print-config"]) == 0
    with pytest.raises(ValueError, match="train.momentum must be a number, got 'high'"):
        load_config(None, ["train.momentum=high"])


# ---- strategy and multi-worker workaround

def test_strategy_choice_on_a_cpu_machine(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    chosen = strategy.get_strategy("auto")
    assert chosen is tf.distribute.get_strategy()
    assert strategy.describe(chosen) == "default strategy with 1 replica(s)"
    two = json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                      "task": {"type": "worker", "index": 0}})
    assert strategy.cluster_size(two) == 2
    assert strategy.cluster_size(json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}})) == 2
    assert strategy.cluster_size("") == 0
    with pytest.raises(ValueError, match="TF_CONFIG"):
        strategy.cluster_size("{not json")
    with pytest.raises(ValueError, match="distribute.strategy"):
        strategy.get_strategy("horovod")
    assert not multi_worker.is_multi_worker(chosen) and multi_worker.is_chief(chosen)
    assert multi_worker.worker_dir("/runs/x", chosen) == "/runs/x"
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    step = model.train_step
    assert multi_worker.patch_model(model, chosen) is model and model.train_step == step


# ---- callbacks

def test_nan_loss_stops_training_with_a_clear_error(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.ones((8, 3), np.float32)
    x[5] = np.nan  # a poisoned example in the third batch
    y = np.zeros(8, np.int32)
    seen = []
    recorder = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    with pytest.raises(cb.TrainingDivergedError, match=r"loss is nan at step 3 \(epoch 1, batch 3"):
        model.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0,
                  callbacks=[cb.StopOnNaN(str(tmp_path)), recorder])
    assert seen == [0, 1]  # stopped at the first NaN batch


def test_resumed_run_trims_the_csv_log_and_keeps_the_best_value(tmp_path):
    backup = tmp_path / cb.BACKUP_DIR
    backup.mkdir()
    (backup / cb.BACKUP_METADATA).write_text(json.dumps({"epoch": 2, "batch": 1, "step": 9, "weights": "w"}))
    csv_path = tmp_path / cb.CSV_FILE
    csv_path.write_text("epoch,loss,val_mean_iou\n0,1.0,0.3\n1,0.8,0.5\n2,0.7,0.4\n")
    callbacks = cb.training_callbacks(str(tmp_path), steps_per_epoch=4)
    assert [row["epoch"] for row in cb.read_csv_log(csv_path)] == [0, 1]  # epoch 2 ran past the backup
    assert cb.backed_up_step(str(backup)) == 9
    checkpoint = next(c for c in callbacks if isinstance(c, keras.callbacks.ModelCheckpoint))
    assert checkpoint.best == pytest.approx(0.5)
    kinds = [type(c) for c in callbacks]
    assert kinds[-1] is cb.StepBackupAndRestore  # backs up only after logging and checkpointing
    assert issubclass(cb.StepBackupAndRestore, keras.callbacks.BackupAndRestore)
    assert kinds.index(cb.StepLogger) < kinds.index(keras.callbacks.CSVLogger)
    assert next(c for c in callbacks if isinstance(c, keras.callbacks.CSVLogger)).append


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("every_steps, crash_after, resume_step", [(3, 7, 6), (None, 7, 4), (2, 4, 2)])
def test_backup_resumes_at_the_backed_up_step_with_nothing_lost_or_repeated(tmp_path, every_steps,
                                                                            crash_after, resume_step):
    """A run interrupted after `crash_after` of 12 steps (3 epochs of 4) and restarted ends with the weights
    and optimizer state of an uninterrupted run: it resumes at the last backup (mid-epoch: only that epoch's
    remaining batches), reads the data stream on from there, and takes 12 steps in all. (2, 4, 2): the backup
    at an epoch's last step waits for the end of the epoch, so a crash before that resumes at step 2."""
    steps_per_epoch, epochs = 4, 3
    x = RNG.normal(size=(24, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")

    def stream(skip_batches=0):  # the batches a run reads, from `skip_batches` on
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat().skip(skip_batches)

    def new_model():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def fit(model, data, *callbacks):
        model.fit(data, epochs=epochs, steps_per_epoch=steps_per_epoch, shuffle=False, verbose=0,
                  callbacks=list(callbacks))

    reference = new_model()
    fit(reference, stream())

    def crash(batch, logs):
        if int(interrupted.optimizer.iterations.numpy()) == crash_after:
            raise Interrupt

    backup = tmp_path / "backup"
    interrupted = new_model()
    with pytest.raises(Interrupt):
        fit(interrupted, stream(), cb.StepBackupAndRestore(str(backup), steps_per_epoch, every_steps),
            keras.callbacks.LambdaCallback(on_train_batch_end=crash))
    epoch, batch = divmod(resume_step, steps_per_epoch)
    metadata = cb.read_backup(str(backup))
    assert (metadata["epoch"], metadata["batch"], metadata["step"]) == (epoch, batch, resume_step)
    assert len(list(backup.glob("*.weights.h5"))) == 1

    seen = []
    resumed = new_model()
    recorder = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: seen.append([e, 0]),
        on_train_batch_end=lambda b, logs: seen[-1].__setitem__(1, b + 1))
    fit(resumed, stream(cb.backed_up_step(str(backup))),
        cb.StepBackupAndRestore(str(backup), steps_per_epoch, every_steps), recorder)
    # The interrupted epoch runs its remaining batches only; no epoch runs twice.
    whole_epochs = [[e, steps_per_epoch] for e in range(epoch + 1, epochs)]
    assert seen == [[epoch, steps_per_epoch - batch]] + whole_epochs
    assert int(resumed.optimizer.iterations.numpy()) == steps_per_epoch * epochs
    for got, want in zip(resumed.weights + resumed.optimizer.variables,
                         reference.weights + reference.optimizer.variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7, err_msg=got.path)
    assert not backup.exists()


def test_backup_every_steps_is_checked():
    assert load_config(overrides=["train.backup_every_steps=null"])["train"]["backup_every_steps"] is None
    for bad in ("0", "true", "2.5"):
        with pytest.raises(ValueError, match="train.backup_every_steps must be a positive integer or null"):
            load_config(overrides=[f"train.backup_every_steps={bad}"])


def test_fit_shows_a_progress_bar_at_verbose_1(synthetic_dir, tmp_path, monkeypatch, capsys):
    # The 1x1-conv colour model stands in for DeepLabV3 (tracing one costs ~25 s); train() and fit are real.
    monkeypatch.setattr(train_module, "build_model", lambda *args: colour_oracle())
    config = {"data": {"crop_size": [33, 33]}, "eval": {"split": None},
              "train": {"batch_size": 2, "steps": 4, "steps_per_epoch": 2, "tensorboard": False, "seed": 0}}
    train_module.train(config, synthetic_dir, tmp_path / "loud", verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    assert re.search(r"1/2\S* \S*━+", out) and re.search(r"2/2\S* \S*━+", out)  # bars at steps 1 and 2
    train_module.train(config, synthetic_dir, tmp_path / "quiet", verbose=0)
    assert "━" not in capsys.readouterr().out


# ---- evaluation

def test_predictor_averages_probabilities_over_scales_and_flips():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, padding="same")])
    images = RNG.uniform(0, 1, (1, 12, 10, 3)).astype("float32")

    def probs(x):
        return tf.nn.softmax(model(x)).numpy()

    single = ev.make_predictor(model)(images).numpy()
    np.testing.assert_allclose(single, probs(images), atol=1e-6)
    flipped = ev.make_predictor(model, flip=True)(images).numpy()
    mirrored = probs(images[:, :, ::-1])[:, :, ::-1]
    np.testing.assert_allclose(flipped, (probs(images) + mirrored) / 2, atol=1e-6)
    assert not np.allclose(flipped, single, atol=1e-3)  # the conv is not flip-symmetric
    half = tf.image.resize(images, (6, 5)).numpy()
    expected = (probs(images) + tf.nn.softmax(tf.image.resize(model(half), (12, 10))).numpy()) / 2
    two_scales = ev.make_predictor(model, scales=(1.0, 0.5))(images).numpy()
    np.testing.assert_allclose(two_scales, expected, atol=1e-6)
    with pytest.raises(ValueError, match="scales"):
        ev.make_predictor(model, scales=(0.0,))


def test_evaluate_reports_exact_iou_on_the_synthetic_dataset(synthetic_dir):
    oracle = ev.evaluate(colour_oracle(), synthetic_dir, "val", progress=False)
    assert oracle["mean_iou"] == pytest.approx(1.0) and oracle["pixel_accuracy"] == pytest.approx(1.0)
    assert oracle["num_images"] == 4 and list(oracle["per_class_iou"]) == CLASS_NAMES

    labels = np.concatenate([lab.numpy().ravel() for _, lab in eval_dataset(synthetic_dir, "val")])
    always_background = keras.initializers.Constant([5.0, 0.0, 0.0])
    background = keras.Sequential([keras.Input((None, None, 3)),
                                   keras.layers.Conv2D(3, 1, kernel_initializer="zeros",
                                                       bias_initializer=always_background)])
    report = ev.evaluate(background, synthetic_dir, "val", progress=False)
    reference = numpy_iou(labels, np.zeros_like(labels), 3)
    assert report["mean_iou"] == pytest.approx(np.nanmean(reference))
    assert report["per_class_iou"]["rectangle"] == 0.0
    assert report["num_pixels"] == np.sum(labels != 255)

    multi = ev.evaluate(colour_oracle(), synthetic_dir, "val", scales=(0.75, 1.0, 1.25), flip=True,
                        max_images=2, progress=False)
    assert multi["num_images"] == 2 and multi["scales"] == [0.75, 1.0, 1.25] and multi["flip"]
    assert 0.9 < multi["mean_iou"] <= 1.0  # only edge pixels can change


def test_evaluate_at_another_output_stride_uses_the_same_weights(synthetic_dir):
    model = DeepLabV3(3, backbone="mobilenet_v2", aspp_filters=8, output_stride=16)
    report = ev.evaluate(model, synthetic_dir, "val", output_stride=8, max_images=1, progress=False)
    assert report["output_stride"] == 8
    with pytest.raises(ValueError, match="split 'test'"):
        ev.evaluate(model, synthetic_dir, "test")


def test_evaluate_cli_prints_and_writes_json(synthetic_dir, tmp_path, capsys):
    path = tmp_path / "oracle.keras"
    colour_oracle().save(path)
    output = tmp_path / "report.json"
    assert ev.main(["--model", str(path), "--data_dir", str(synthetic_dir), "--flip", "--scales", "1,0.5",
                    "--output", str(output), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "rectangle" in printed and "mIoU" in printed
    report = json.loads(output.read_text())
    assert report["flip"] and report["scales"] == [1.0, 0.5] and len(report["confusion_matrix"]) == 3
    assert report["mean_iou"] > 0.9
    assert ev.main(["--model", str(path), "--data_dir", str(synthetic_dir), "--no_progress"]) == 0
    assert (tmp_path / "eval_val.json").exists()  # default: beside the model
    assert "evaluate val" not in capsys.readouterr().err
    assert ev.main(["--model", str(path), "--data_dir", str(synthetic_dir)]) == 0
    err = capsys.readouterr().err
    assert "evaluate val: 100%" in err and "4/4" in err
    with pytest.raises(FileNotFoundError, match="no saved model"):
        ev.load_model(str(tmp_path / "missing"))


# ---- model building: init checkpoint (OS16 -> OS8 stage), mixed precision

SMALL_MODEL = {**DEFAULTS["model"], "backbone": "mobilenet_v2", "aspp_filters": 8}


def test_second_stage_starts_from_the_os16_weights_at_os8_with_frozen_bn(tmp_path):
    first = DeepLabV3(3, **{**SMALL_MODEL, "atrous_rates": [6, 12, 18]})
    first.save(tmp_path / "os16.keras")
    train_config = {**DEFAULTS["train"], "init_checkpoint": str(tmp_path / "os16.keras"), "freeze_bn": True}
    second = build_model({**SMALL_MODEL, "output_stride": 8, "atrous_rates": [12, 24, 36]}, 3, train_config)
    assert second.output_stride == 8 and second.get_layer("aspp").atrous_rates == (12, 24, 36)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not any(layer.trainable for layer in second._flatten_layers(include_self=False)
                   if isinstance(layer, keras.layers.BatchNormalization))
    with pytest.raises(ValueError, match="init_checkpoint .* do not fit"):
        build_model({**SMALL_MODEL, "aspp_filters": 16}, 3, train_config)


def test_mixed_precision_keeps_float32_logits_and_scales_the_loss():
    train_config = {**DEFAULTS["train"], "mixed_precision": "mixed_float16"}
    model = build_model(SMALL_MODEL, 3, train_config)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert model.get_layer("Conv1").compute_dtype == "float16"
    recipe.compile_model(model, num_classes=3, steps=1)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    logits = model(RNG.uniform(0, 255, (1, 33, 33, 3)).astype("float32"))
    assert logits.dtype == "float32" and np.all(np.isfinite(logits.numpy()))
