"""DeepLabV3 learns real data: a short training on the bundled CamVid sample (prepared with `deeplab prepare`)
lowers the loss and reaches a validation mIoU several times that of predicting the most frequent class; the
evaluation API agrees with the validation metric of `fit`, and the saved model.keras is the returned model."""
from pathlib import Path

import numpy as np
import pytest

from keras_deeplab.data.pipeline import eval_dataset
from keras_deeplab.data.prepare import prepare
from keras_deeplab.training.evaluate import confusion_matrix, evaluate, iou_report, load_model
from keras_deeplab.training.train import load_config, train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # about 80 s of CPU; over 2 minutes of wall time on a busy 2-core machine


@pytest.fixture(scope="module")
def camvid_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("camvid")
    prepare(REPO / "sample_data" / "camvid", path, preset="camvid", splits=["train", "val"], progress=False)
    return path


def majority_class_miou(data_dir, resize):
    """mIoU of always predicting the most frequent validation class (the chance level to beat)."""
    labels = [label.numpy() for _, label in eval_dataset(data_dir, "val", resize=resize)]
    valid = np.concatenate([label[label != 255] for label in labels])
    majority = np.bincount(valid).argmax()
    confusion = sum(confusion_matrix(label, np.full_like(label, majority), 11).numpy() for label in labels)
    return iou_report(confusion, [str(i) for i in range(11)])["mean_iou"]


def test_short_training_on_camvid_learns(camvid_dir, tmp_path):
    config = load_config(REPO / "training" / "configs" / "camvid_demo.yaml",
                         ["train.steps=60", "train.steps_per_epoch=30", "train.tensorboard=false"])
    model, history = train(config, camvid_dir, tmp_path, verbose=0)
    logs = history.history
    assert logs["loss"][1] < logs["loss"][0] * 0.9
    assert logs["mean_iou"][1] > logs["mean_iou"][0]
    chance = majority_class_miou(camvid_dir, resize=0.5)
    assert chance < 0.05
    best = max(logs["val_mean_iou"])
    assert best > 3 * chance

    # evaluate() on the returned model (the best epoch's weights) reproduces fit's validation mIoU.
    report = evaluate(model, camvid_dir, "val", resize=0.5, progress=False)
    assert report["mean_iou"] == pytest.approx(best, abs=2e-3)
    assert report["num_images"] == 8 and len(report["per_class_iou"]) == 11
    saved = load_model(str(tmp_path))
    for a, b in zip(saved.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
