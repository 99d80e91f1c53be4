"""Training extensions: `model.architecture` (with a tiny registered stand-in class), the trimap boundary accuracy
of `evaluate` against a brute-force NumPy reference, and the TensorBoard validation images."""
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_deeplab import DeepLabV3, architectures
from keras_deeplab.data.pipeline import eval_dataset
from keras_deeplab.training import callbacks as cb
from keras_deeplab.training import evaluate as ev
from keras_deeplab.training import train as train_module
from keras_deeplab.training.train import DEFAULTS, build_model, load_config
from keras_deeplab.viz import get_colormap
from test_training import colour_oracle, numpy_iou


@keras.saving.register_keras_serializable(package="keras_deeplab_tests")
class TinySegmenter(keras.Model):
    """A stand-in architecture: a conv on the scaled image, with dict outputs {"out", "aux"} and an output stride
    it only records."""

    def __init__(self, num_classes=3, *, filters=4, output_stride=16, input_shape=(None, None, 3), name="tiny",
                 **kwargs):
        images = keras.Input(input_shape)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(images / 255.0)
        logits = keras.layers.Conv2D(num_classes, 1)(x)
        super().__init__(images, {"out": logits, "aux": logits}, name=name, **kwargs)
        self.num_classes, self.filters, self.output_stride = num_classes, filters, output_stride

    def get_config(self):
        return {"name": self.name, "num_classes": self.num_classes, "filters": self.filters,
                "output_stride": self.output_stride}

    def with_output_stride(self, output_stride):
        clone = TinySegmenter(**{**self.get_config(), "output_stride": output_stride})
        clone.set_weights(self.get_weights())
        return clone


@pytest.fixture
def tiny_architecture(monkeypatch):
    monkeypatch.setitem(architectures.ARCHITECTURES, "tiny", f"{__name__}.TinySegmenter")
    return "tiny"


# ---- architectures

def test_the_registry_names_the_family_and_builds_deeplabv3():
    assert architectures.ARCHITECTURES == {
        "deeplabv3": "keras_deeplab.model.DeepLabV3",
        "deeplabv3_plus": "keras_deeplab.deeplabv3_plus.DeepLabV3Plus",
        "deeplabv3_cascade": "keras_deeplab.cascade.DeepLabV3Cascade",
    }
    assert DEFAULTS["model"]["architecture"] == architectures.DEFAULT_ARCHITECTURE == "deeplabv3"
    overrides = ["model.backbone=mobilenet_v2", "model.aspp_filters=8"]
    config = load_config(None, ["model.architecture=deeplabv3", *overrides])
    assert config == load_config(None, overrides)  # naming the default changes nothing
    model = build_model(config["model"], 3, config["train"])
    assert type(model) is DeepLabV3 and model.backbone == "mobilenet_v2"


def test_the_model_section_follows_the_chosen_architecture(tiny_architecture, tmp_path):
    config = load_config(None, ["model.architecture=tiny"])
    assert config["model"] == {"architecture": "tiny", "filters": 4, "output_stride": 16}
    # DeepLabV3 values set before the switch are kept where the class takes them, refused where not.
    config = load_config(None, ["model.output_stride=8", "model.architecture=tiny", "model.filters=2"])
    assert config["model"] == {"architecture": "tiny", "filters": 2, "output_stride": 8}
    (tmp_path / "base.yaml").write_text("model:\n  backbone: resnet50\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel:\n  architecture: tiny\n")
    for path, overrides in ((None, ["model.architecture=tiny", "model.multi_grid=[1, 1, 1]"]),
                            (tmp_path / "child.yaml", [])):
        with pytest.raises(ValueError, match=r"unknown key model\.\w+; model \(architecture 'tiny'\) has "
                                             r"\['architecture', 'filters', 'output_stride'\]"):
            load_config(path, overrides)
    with pytest.raises(ValueError, match="unknown model.architecture 'nope'; choose from deeplabv3, "
                                         "deeplabv3_plus, deeplabv3_cascade, tiny"):
        load_config(None, ["model.architecture=nope"])
    model = build_model(load_config(None, ["model.architecture=tiny", "model.filters=2"])["model"], 3,
                        DEFAULTS["train"])
    assert isinstance(model, TinySegmenter) and model.filters == 2


def test_a_missing_architecture_module_is_named(monkeypatch):
    monkeypatch.setitem(architectures.ARCHITECTURES, "ghost", "keras_deeplab.no_such_module.Ghost")
    with pytest.raises(architectures.MissingArchitectureError, match="Ghost from the module "
                                                                     "keras_deeplab.no_such_module"):
        architectures.get_architecture("ghost")
    with pytest.raises(ValueError, match="keras_deeplab.no_such_module, which does not exist"):
        load_config(None, ["model.architecture=ghost"])
    architectures.import_available()  # skips it


def test_evaluate_loads_and_restrides_another_architecture(tiny_architecture, synthetic_dir, tmp_path):
    model = TinySegmenter(3, filters=2)
    model.save(tmp_path / "tiny.keras")
    loaded = ev.load_model(str(tmp_path / "tiny.keras"))
    assert isinstance(loaded, TinySegmenter)
    report = ev.evaluate(loaded, synthetic_dir, "val", output_stride=8, flip=True, max_images=1, progress=False)
    assert report["output_stride"] == 8 and 0 <= report["mean_iou"] <= 1
    with pytest.raises(ValueError, match="Sequential cannot be evaluated at another output stride"):
        plain = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(3, 1)])
        plain.output_stride = 16
        ev.evaluate(plain, synthetic_dir, "val", output_stride=8)


# ---- trimap

def numpy_band(labels, width):
    """The trimap band by brute force: pixels within chessboard distance `width` of a pixel whose label differs
    from one of its (up to 8) neighbours'."""
    height, breadth = labels.shape
    boundary = np.zeros(labels.shape, bool)
    for y in range(height):
        for x in range(breadth):
            window = labels[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
            boundary[y, x] = np.any(window != labels[y, x])
    ys, xs = np.nonzero(boundary)
    band = np.zeros(labels.shape, bool)
    for y in range(height):
        for x in range(breadth):
            band[y, x] = np.any(np.maximum(abs(ys - y), abs(xs - x)) <= width)
    return band


def test_trimap_band_matches_brute_force():
    split = np.zeros((10, 10), np.int32)
    split[:, 5:] = 1
    for width, columns in ((0, 2), (1, 4), (3, 8)):
        assert int(tf.reduce_sum(tf.cast(ev.trimap_band(split[None], width), tf.int32))) == 10 * columns
    labels = np.zeros((24, 30), np.int32)
    labels[3:10, 4:15] = 1
    labels[12:22, 10:27] = 2
    labels[12, 10:27] = 255  # an ignored edge counts as a label in the boundary
    labels[0:2, 25:30] = 3  # at the image border
    for width in (0, 1, 2, 5):
        band = ev.trimap_band(np.stack([labels, np.ones_like(labels)]), width).numpy()
        np.testing.assert_array_equal(band[0], numpy_band(labels, width))
        assert band[0].any() and not band[0].all() and not band[1].any()  # one label: no boundary


def test_evaluate_reports_the_trimap_miou_of_the_models_own_predictions(synthetic_dir, tmp_path, capsys):
    model = colour_oracle()  # at scales 0.5 and 1 with flips: wrong only near the edges
    scales = (0.5, 1.0)
    report = ev.evaluate(model, synthetic_dir, "val", scales=scales, flip=True, trimap=(1, 3), progress=False)
    predict = ev.make_predictor(model, scales, flip=True)
    pairs = [(label[0], np.argmax(predict(image).numpy()[0], -1)) for image, label in
             eval_dataset(synthetic_dir, "val").as_numpy_iterator()]
    assert [band["width"] for band in report["trimap"]] == [1, 3]
    previous = 0
    for band in report["trimap"]:
        masked = np.concatenate([np.where(numpy_band(label, band["width"]), label, 255).ravel()
                                 for label, _ in pairs])
        predictions = np.concatenate([prediction.ravel() for _, prediction in pairs])
        valid = masked != 255
        assert band["num_pixels"] == valid.sum() > previous
        assert band["mean_iou"] == pytest.approx(np.nanmean(numpy_iou(masked, predictions, 3)))
        assert band["pixel_accuracy"] == pytest.approx(np.mean(masked[valid] == predictions[valid]))
        previous = band["num_pixels"]
    assert report["trimap"][0]["mean_iou"] < report["trimap"][1]["mean_iou"] < report["mean_iou"]

    path = tmp_path / "oracle.keras"
    model.save(path)
    assert ev.main(["--model", str(path), "--data-dir", str(synthetic_dir), "--scales", "0.5,1", "--flip",
                    "--trimap", "1", "3", "--output", str(tmp_path / "r.json"), "--no-progress"]) == 0
    assert "trimap 1 px: mIoU" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["trimap"] == report["trimap"]
    assert ev.evaluate(model, synthetic_dir, "val", max_images=1, progress=False)["trimap"] == []


# ---- TensorBoard images

def image_summaries(log_dir):
    """{tag: [(step, decoded uint8 image), ...]} of the image summaries in the event files of `log_dir`."""
    found = {}
    for path in sorted(tf.io.gfile.glob(str(log_dir / "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    png = tf.make_ndarray(value.tensor)[2]
                    found.setdefault(value.tag, []).append((event.step, np.asarray(Image.open(io.BytesIO(png)))))
    return found


def test_training_writes_validation_images_with_label_and_prediction(synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "build_model", lambda *args: colour_oracle())
    config = {"data": {"crop_size": [33, 33]}, "eval": {"split": "val"},
              "train": {"batch_size": 2, "steps": 4, "steps_per_epoch": 2, "learning_rate": 0.0, "seed": 0,
                        "tensorboard": True, "tensorboard_images": 2}}
    train_module.train(config, synthetic_dir, tmp_path / "run", verbose=0)
    found = image_summaries(tmp_path / "run" / "logs" / "validation")
    assert sorted(found) == [f"{cb.IMAGE_TAG}/0", f"{cb.IMAGE_TAG}/1"]
    colormap = get_colormap("pascal")
    samples = list(eval_dataset(synthetic_dir, "val").take(2).as_numpy_iterator())
    for index, (image, label) in enumerate(samples):
        pictures = found[f"{cb.IMAGE_TAG}/{index}"]
        assert [step for step, _ in pictures] == [0, 1]
        picture = pictures[-1][1]
        assert picture.shape == (72, 3 * 96, 3)
        np.testing.assert_array_equal(picture[:, :96], image[0].astype(np.uint8))
        np.testing.assert_array_equal(picture[:, 96:192], colormap[label[0]])
        # The unchanged oracle (learning rate 0) is right wherever the label is not ignored.
        np.testing.assert_array_equal(picture[:, 192:], colormap[np.where(label[0] == 255, 0, label[0])])

    for count in (0, 3):  # off, or without TensorBoard
        config["train"].update(tensorboard_images=count, tensorboard=bool(count == 0))
        assert train_module.image_samples(train_module.resolve_config(config), synthetic_dir) == []
    with pytest.raises(ValueError, match="train.tensorboard_images must be a non-negative integer"):
        load_config(None, ["train.tensorboard_images=-1"])


def test_validation_images_take_the_main_output_of_dict_models(synthetic_dir, tmp_path):
    image, label = next(eval_dataset(synthetic_dir, "val").as_numpy_iterator())
    callback = cb.ValidationImages(str(tmp_path), [(image[0], label[0])], get_colormap("camvid"))
    callback.set_model(TinySegmenter(3))
    callback.on_epoch_end(4)
    callback.on_train_end()
    [(step, picture)] = image_summaries(tmp_path)[f"{cb.IMAGE_TAG}/0"]
    assert step == 4 and picture.shape == (72, 288, 3)
