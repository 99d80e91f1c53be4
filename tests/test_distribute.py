"""`model.fit` under tf.distribute on one CPU machine, in subprocesses (strategies must be set up before
TensorFlow starts): two MultiWorkerMirroredStrategy workers on 127.0.0.1 train in lock-step through
`deeplab train`; MirroredStrategy over two logical CPUs with synchronized BatchNorm trains too, and its
BatchNorm statistics are those of the global batch (without synchronization, the first replica's)."""
import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers.training_data import run, subprocess_env, train_command
from keras_deeplab.training.callbacks import CSV_FILE, MODEL_FILE, read_csv_log
from keras_deeplab.training.evaluate import load_model

pytestmark = pytest.mark.slow


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_in_lock_step(synthetic_dir, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    # Global batch 4 (2 per worker), 2 epochs of 2 steps. Synchronized BN: without it each worker would keep
    # the BatchNorm statistics of its own examples (see the last test); only trainable weights would agree.
    command = train_command(synthetic_dir, tmp_path, extra=["--set", "model.synchronized_bn=true"])

    def tf_config(index):
        return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})

    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=subprocess_env(TF_CONFIG=tf_config(i)))
               for i in range(2)]
    try:
        outputs = [worker.communicate(timeout=500) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
        assert "MultiWorkerMirroredStrategy with 2 replica(s), global batch 4" in stdout
    # The chief writes to model_dir, worker 1 to model_dir/worker1 (one directory per worker).
    chief_log, worker_log = read_csv_log(tmp_path / CSV_FILE), read_csv_log(tmp_path / "worker1" / CSV_FILE)
    assert [row["step"] for row in chief_log] == [2, 4]
    assert chief_log == worker_log  # same losses and metrics, though each worker read different examples
    chief, worker = load_model(str(tmp_path / MODEL_FILE)), load_model(str(tmp_path / "worker1" / MODEL_FILE))
    for a, b in zip(chief.get_weights(), worker.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_mirrored_strategy_on_two_logical_cpus_with_synchronized_bn(synthetic_dir, tmp_path):
    extra = ["--set", "distribute.logical_cpus=2", "--set", "model.synchronized_bn=true",
             "--set", "train.tensorboard=true"]
    result = run(train_command(synthetic_dir, tmp_path, extra=extra), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy with 2 replica(s), global batch 4" in result.stdout
    rows = read_csv_log(tmp_path / CSV_FILE)
    assert [row["step"] for row in rows] == [2, 4] and all(np.isfinite(row["val_loss"]) for row in rows)
    assert load_model(str(tmp_path)).synchronized_bn
    for part in ("train", "validation"):  # TensorBoard event files
        assert list((tmp_path / "logs" / part).glob("events.out.tfevents.*"))


MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import keras
    import numpy as np
    import tensorflow as tf
    from keras_deeplab.optimizers import SGDWithL2
    from keras_deeplab.training.strategy import get_strategy

    strategy = get_strategy("mirrored", logical_cpus=2)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    x[4:] += 5.0  # the second replica's half of the batch has another mean
    result = {"replicas": strategy.num_replicas_in_sync}
    for synchronized in (True, False):
        with strategy.scope():
            bn = keras.layers.BatchNormalization(momentum=0.0, synchronized=synchronized)
            model = keras.Sequential([keras.Input((3,)), bn])
            model.compile(keras.optimizers.SGD(0.0), loss="mse")
        model.fit(x, np.zeros_like(x), batch_size=8, epochs=1, shuffle=False, verbose=0)
        result[str(synchronized)] = [bn.moving_mean.numpy().tolist(), bn.moving_variance.numpy().tolist()]
    with strategy.scope():  # weight decay alone (a loss with zero gradient), applied once per step
        conv = keras.layers.Conv2D(2, 1)
        model = keras.Sequential([keras.Input((1, 1, 3)), conv])
        model.compile(SGDWithL2(0.1, l2=0.5), loss=lambda y, p: 0.0 * keras.ops.sum(p))
    kernel, bias = conv.kernel.numpy(), conv.bias.numpy()
    model.fit(x.reshape(8, 1, 1, 3), np.zeros((8, 1, 1, 2)), batch_size=8, epochs=1, verbose=0)
    result["decay"] = [(conv.kernel.numpy() / kernel).tolist(), (conv.bias.numpy() - bias).tolist()]
    print(json.dumps(result))
""")


def test_synchronized_batch_norm_and_weight_decay_across_replicas():
    """Synchronized BatchNorm uses the global batch's statistics; SGDWithL2 decays each kernel once per step."""
    result = run([sys.executable, "-c", MIRRORED_SCRIPT], timeout=200)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["replicas"] == 2
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    x[4:] += 5.0
    # Momentum 0: the moving statistics are the last batch's. Synchronized: the global batch's.
    np.testing.assert_allclose(stats["True"][0], x.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["True"][1], x.var(0), rtol=1e-4)
    # Not synchronized (Keras 3.15): each replica updates its own copy; the first replica's is read and saved.
    np.testing.assert_allclose(stats["False"][0], x[:4].mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["False"][1], x[:4].var(0), rtol=1e-4)
    kernel_ratio, bias_change = (np.array(v) for v in stats["decay"])
    np.testing.assert_allclose(kernel_ratio, 1 - 0.1 * 0.5, rtol=1e-6)  # w -= lr * l2 * w, not twice
    np.testing.assert_array_equal(bias_change, 0.0)
