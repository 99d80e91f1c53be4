"""Bad data: every problem raises an error naming the file, `skip_bad` / `--skip-bad` logs and skips it instead,
and an interrupted prepare never leaves a dataset that looks complete."""
import logging

import numpy as np
import pytest
from PIL import Image

from keras_deeplab.data import prepare as prepare_module
from keras_deeplab.data.pipeline import eval_dataset, load_dataset_info, tfrecord_files
from keras_deeplab.data.prepare import prepare
from keras_deeplab.data.readers import DataError, LabelSpec
from keras_deeplab.data.tfrecords import write_tfrecords

H, W = 12, 16
GOOD_IDS = ["a", "b", "c"]


def _write_pair(root, split, example_id, label=None, image_size=(W, H)):
    rng = np.random.default_rng(abs(hash(example_id)) % 2**32)
    image = Image.fromarray(rng.integers(0, 256, (image_size[1], image_size[0], 3), dtype=np.uint8))
    image.save(root / split / f"{example_id}.png")
    if label is None:
        label = rng.integers(0, 3, (H, W), dtype=np.uint8)
    Image.fromarray(label).save(root / f"{split}annot" / f"{example_id}.png")


@pytest.fixture
def dataset(tmp_path):
    """A CamVid-layout folder dataset with 3 good samples (classes 0..2, 11 = void)."""
    root = tmp_path / "src"
    for folder in ("train", "trainannot"):
        (root / folder).mkdir(parents=True)
    for example_id in GOOD_IDS:
        _write_pair(root, "train", example_id)
    return root


def _prepare(root, out, **kwargs):
    return prepare(root, out, format="folder", splits=["train"], num_shards=2, num_classes=3, remap={11: 255},
                   progress=False, **kwargs)


def _truncated(root):
    path = root / "train" / "bad.jpg"
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "trainannot" / "bad.png")
    return path, "truncated"


def _unreadable(root):
    path = root / "train" / "bad.png"
    path.write_bytes(b"this is not an image")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "trainannot" / "bad.png")
    return path, "unreadable"


def _size_mismatch(root):
    _write_pair(root, "train", "bad", image_size=(W + 4, H))
    return root / "trainannot" / "bad.png", "differs from image"


def _out_of_range(root):
    label = np.zeros((H, W), np.uint8)
    label[3, 4] = 7  # neither a class (0..2) nor void (11 -> 255)
    _write_pair(root, "train", "bad", label=label)
    return root / "trainannot" / "bad.png", "[7]"


def _colour_label(root):
    _write_pair(root, "train", "bad")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "trainannot" / "bad.png")
    return root / "trainannot" / "bad.png", "mode RGB"


def _jpeg_label(root):
    _write_pair(root, "train", "bad")
    (root / "trainannot" / "bad.png").unlink()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "trainannot" / "bad.png", format="JPEG")
    return root / "trainannot" / "bad.png", "JPEG"


def _missing_label(root):
    _write_pair(root, "train", "bad")
    (root / "trainannot" / "bad.png").unlink()
    return root / "trainannot" / "bad.png", "not found"


BAD_CASES = [_truncated, _unreadable, _size_mismatch, _out_of_range, _colour_label, _jpeg_label, _missing_label]


@pytest.mark.parametrize("make_bad", BAD_CASES, ids=lambda f: f.__name__.strip("_"))
def test_bad_sample_raises_error_naming_the_file(dataset, tmp_path, make_bad):
    bad_path, reason = make_bad(dataset)
    with pytest.raises(DataError) as excinfo:
        _prepare(dataset, tmp_path / "out")
    message = str(excinfo.value)
    assert str(bad_path) in message and reason in message
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        load_dataset_info(tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.tfrecord*"))  # no shards, complete or temporary


@pytest.mark.parametrize("make_bad", BAD_CASES, ids=lambda f: f.__name__.strip("_"))
def test_skip_bad_logs_and_skips(dataset, tmp_path, make_bad, caplog):
    bad_path, _ = make_bad(dataset)
    with caplog.at_level(logging.WARNING, logger="keras_deeplab.data.prepare"):
        info = _prepare(dataset, tmp_path / "out", skip_bad=True)
    assert info["splits"] == {"train": len(GOOD_IDS)} and info["skipped"] == {"train": 1}
    assert any(str(bad_path) in record.getMessage() for record in caplog.records)
    assert load_dataset_info(tmp_path / "out")["splits"] == {"train": len(GOOD_IDS)}


def test_id_listed_in_split_file_without_image(tmp_path):
    voc = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(voc / "JPEGImages" / "x1.jpg")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(voc / "SegmentationClass" / "x1.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(voc / "SegmentationClass" / "x2.png")
    list_path = voc / "ImageSets" / "Segmentation" / "train.txt"
    list_path.write_text("x1\nx2\n")
    with pytest.raises(DataError) as excinfo:
        prepare(voc, tmp_path / "out", format="voc", splits=["train"], num_shards=1, progress=False)
    assert str(voc / "JPEGImages" / "x2.jpg") in str(excinfo.value) and str(list_path) in str(excinfo.value)
    info = prepare(voc, tmp_path / "out", format="voc", splits=["train"], num_shards=1, skip_bad=True,
                   progress=False)
    assert info["splits"] == {"train": 1}


def test_missing_split_list_and_folder_are_named(tmp_path, dataset):
    (tmp_path / "voc" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DataError, match="val.txt"):
        prepare(tmp_path / "voc", tmp_path / "out", format="voc", splits=["val"], progress=False)
    with pytest.raises(DataError, match=str(dataset / "val")):
        prepare(dataset, tmp_path / "out", format="folder", splits=["val"], num_classes=3, progress=False)
    with pytest.raises(DataError, match="not a PASCAL VOC directory"):
        prepare(dataset, tmp_path / "out", format="voc", splits=["val"], progress=False)


def test_failed_prepare_removes_previous_dataset_info(dataset, tmp_path):
    out = tmp_path / "out"
    _prepare(dataset, out)
    assert load_dataset_info(out)["splits"] == {"train": 3}
    _unreadable(dataset)
    with pytest.raises(DataError):
        _prepare(dataset, out, overwrite=True)
    with pytest.raises(FileNotFoundError):
        load_dataset_info(out)


def test_existing_splits_need_overwrite_and_other_splits_are_kept(dataset, tmp_path):
    out = tmp_path / "out"
    for folder in ("val", "valannot"):
        (dataset / folder).mkdir()
    _write_pair(dataset, "val", "v1")
    _prepare(dataset, out)
    with pytest.raises(FileExistsError, match="overwrite"):
        _prepare(dataset, out)
    info = prepare(dataset, out, format="folder", splits=["val"], num_shards=1, num_classes=3, progress=False)
    assert info["splits"] == {"train": 3, "val": 1}
    assert load_dataset_info(out)["splits"] == {"train": 3, "val": 1}
    assert len(tfrecord_files(out, "train")) == 2
    _write_pair(dataset, "val", "v2")
    info = prepare(dataset, out, format="folder", splits=["val"], num_shards=1, num_classes=3, progress=False,
                   overwrite=True)
    assert info["splits"] == {"train": 3, "val": 2}


def test_write_tfrecords_failure_leaves_no_shards(tmp_path):
    def examples():
        yield "ok", b"\x89PNG\r\n\x1a\n", np.zeros((2, 2), np.uint8)
        raise RuntimeError("reader crashed")

    with pytest.raises(RuntimeError):
        write_tfrecords(examples(), tmp_path, "train", 2, {"num_classes": 3, "ignore_label": 255})
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="sample7: label values \\[5\\]"):
        write_tfrecords([("sample7", b"\x89PNG\r\n\x1a\n", np.full((2, 2), 5, np.uint8))], tmp_path, "train", 1,
                        {"num_classes": 3, "ignore_label": 255})
    with pytest.raises(FileNotFoundError, match="no TFRecord shards for split 'train'"):
        tfrecord_files(tmp_path, "train")


def test_cli_skip_bad(dataset, tmp_path, capsys, caplog):
    bad_path, _ = _out_of_range(dataset)
    args = ["--format", "folder", str(dataset), str(tmp_path / "out"), "--splits", "train", "--num-classes", "3",
            "--remap", "11:255", "--no-progress"]
    assert prepare_module.main(args) == 1
    assert str(bad_path) in capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="keras_deeplab.data.prepare"):
        assert prepare_module.main(args + ["--skip-bad"]) == 0
    assert "skipped 1 bad samples" in capsys.readouterr().out
    assert any(str(bad_path) in record.getMessage() for record in caplog.records)
    assert load_dataset_info(tmp_path / "out")["splits"] == {"train": 3}


def test_ignore_label_that_is_a_class_id_is_refused(dataset, tmp_path, capsys):
    # Class 0 would vanish from the loss and the metrics: refused, naming the field and the remedy.
    with pytest.raises(ValueError, match=r"ignore_label 0 is also a class id \(classes 0\.\.2\)"):
        _prepare(dataset, tmp_path / "out", ignore_label=0)
    with pytest.raises(ValueError, match="ignore_label 2 is also a class id"):
        LabelSpec(3, 2, {2: 255})  # remapping the raw value does not free the class id after remapping
    with pytest.raises(ValueError, match="ignore_label 256 must be in 0..255"):
        LabelSpec(3, 256)
    args = ["--format", "folder", str(dataset), str(tmp_path / "cli"), "--splits", "train",
            "--num-classes", "3", "--ignore-label", "1", "--no-progress"]
    assert prepare_module.main(args) == 1
    assert "ignore_label 1 is also a class id" in capsys.readouterr().err and not (tmp_path / "cli").exists()
    # To ignore a label-file value, remap it to an ignore value outside the classes, as the CamVid preset does
    # with void 11 (num_classes 11): here value 2 with 2 classes.
    assert LabelSpec(11, 255, {11: 255}).ignore_label == 255
    raw = np.tile(np.array([[0, 1], [2, 2]], np.uint8), (H // 2, W // 2))
    _write_pair(dataset, "train", "a", label=raw)
    info = prepare(dataset, tmp_path / "remapped", format="folder", splits=["train"], num_classes=2,
                   remap={2: 255}, progress=False)
    assert info["ignore_label"] == 255
    labels = next(iter(eval_dataset(tmp_path / "remapped", "train")))[1].numpy()[0]
    np.testing.assert_array_equal(labels, np.where(raw == 2, 255, raw))
