"""Data: palette masks, VOC and folder readers, prepare -> TFRecords -> parse round trip, augmentation alignment,
train/eval pipelines, and the `deeplab prepare` CLI on sample_data/camvid."""
import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_deeplab.data import augment as aug
from keras_deeplab.data import prepare as prepare_module
from keras_deeplab.data.pipeline import eval_dataset, load_dataset_info, tfrecord_files, train_dataset
from keras_deeplab.data.prepare import prepare
from keras_deeplab.data.presets import CAMVID_CLASSES
from keras_deeplab.data.readers import LabelSpec, folder_samples, load_example, load_label
from keras_deeplab.data.tfrecords import IMAGE_KEY, FEATURES, parse_example

REPO = Path(__file__).resolve().parents[1]
VOC_FIXTURES = REPO / "tests" / "fixtures" / "voc"
VOC_MASKS = sorted((VOC_FIXTURES / "SegmentationClass").glob("*.png"))
VOC_TRAIN_IDS = ["2007_000032", "2007_000039", "2007_000063"]
VOC_VAL_IDS = ["2007_000033", "2007_000042", "2007_000129"]
CAMVID = REPO / "sample_data" / "camvid"
CAMVID_VAL_IDS = sorted(p.stem for p in (CAMVID / "val").glob("*.png"))


def _pil_indices(path):
    return np.array(Image.open(path))


def _camvid_label(split, example_id):
    raw = _pil_indices(CAMVID / f"{split}annot" / f"{example_id}.png")
    return np.where(raw == 11, 255, raw).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ palette masks


@pytest.mark.parametrize("path", VOC_MASKS, ids=lambda p: p.stem)
def test_voc_palette_mask_read_as_class_indices(path):
    label = load_label(path, "test")
    with Image.open(path) as im:
        assert im.mode == "P"
        palette = np.array(im.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
        colours = np.array(im.convert("RGB"))
    assert label.dtype == np.uint8 and label.shape == colours.shape[:2]
    # Independent reference: the palette colour of each read index is the pixel's colour.
    np.testing.assert_array_equal(palette[label], colours)
    values = set(np.unique(label).tolist())
    assert 255 in values and 0 in values and values <= set(range(21)) | {255}
    # TF's decoder returns colours (luminance), not the class ids.
    decoded = tf.io.decode_png(path.read_bytes(), channels=1).numpy()[..., 0]
    assert not np.array_equal(decoded, label)
    np.testing.assert_array_equal(tf.io.decode_png(path.read_bytes(), channels=3).numpy(), colours)


def test_grayscale_and_palette_encodings_of_the_same_voc_mask_agree():
    palette_mask = load_label(VOC_FIXTURES / "SegmentationClass" / "2007_000129.png", "test")
    gray_path = VOC_FIXTURES / "drsleep" / "2007_000129.png"
    assert Image.open(gray_path).mode == "L"
    np.testing.assert_array_equal(load_label(gray_path, "test"), palette_mask)
    assert set(np.unique(palette_mask).tolist()) == {0, 2, 15, 255}


# ------------------------------------------------------------------------------------------------ VOC round trip


def make_voc_tree(root):
    """A VOC2012 tree from the fixture masks: the one real JPEG plus synthetic JPEGs of the other masks' sizes."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    shutil.copytree(VOC_FIXTURES / "SegmentationClass", voc / "SegmentationClass")
    shutil.copytree(VOC_FIXTURES / "SegmentationClass", voc / "SegmentationClassAug")
    rng = np.random.default_rng(0)
    for mask in VOC_MASKS:
        target = voc / "JPEGImages" / f"{mask.stem}.jpg"
        real = VOC_FIXTURES / "JPEGImages" / target.name
        if real.exists():
            shutil.copy(real, target)
        else:
            height, width = _pil_indices(mask).shape
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(target, quality=90)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(VOC_TRAIN_IDS) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_VAL_IDS) + "\n")
    # train_aug list in the DeepLab/SBD "image label" line format.
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in VOC_TRAIN_IDS + VOC_VAL_IDS[:1])
    )
    return voc


def _records(data_dir, split):
    """{id: (raw feature dict, parsed example)} of every record of a split."""
    out = {}
    for serialized in tf.data.TFRecordDataset(tfrecord_files(data_dir, split)):
        raw = tf.io.parse_single_example(serialized, FEATURES)
        parsed = {k: v.numpy() for k, v in parse_example(serialized).items()}
        out[parsed["id"].decode()] = (raw, parsed)
    return out


def test_voc_prepare_roundtrip_gives_identical_pixels_and_labels(tmp_path):
    voc = make_voc_tree(tmp_path / "src")
    out = tmp_path / "tfr"
    info = prepare(tmp_path / "src", out, format="voc", splits=["train", "val", "train_aug"], num_shards=2,
                   progress=False)
    assert info == load_dataset_info(out)
    assert info["num_classes"] == 21 and info["colormap"] == "pascal" and info["class_names"][15] == "person"
    assert info["splits"] == {"train": 3, "val": 3, "train_aug": 4}
    for split, ids in (("train", VOC_TRAIN_IDS), ("val", VOC_VAL_IDS), ("train_aug", VOC_TRAIN_IDS + VOC_VAL_IDS[:1])):
        records = _records(out, split)
        assert sorted(records) == sorted(ids)
        label_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        for example_id, (raw, parsed) in records.items():
            jpeg = (voc / "JPEGImages" / f"{example_id}.jpg").read_bytes()
            assert raw[IMAGE_KEY].numpy() == jpeg  # original bytes, not re-encoded
            # Same pixels as PIL's decoder (TF's default fast IDCT would differ by up to ~20 levels).
            pil = np.array(Image.open(voc / "JPEGImages" / f"{example_id}.jpg").convert("RGB"))
            np.testing.assert_array_equal(parsed["image"], pil)
            np.testing.assert_array_equal(parsed["label"], _pil_indices(voc / label_dir / f"{example_id}.png"))


def test_voc_eval_dataset_keeps_list_order_and_pads_batches(tmp_path):
    make_voc_tree(tmp_path / "src")
    out = tmp_path / "tfr"
    info = prepare(tmp_path / "src" / "VOCdevkit", out, format="voc", splits=["val"], num_shards=2, progress=False)
    mean = np.array(info["mean_rgb"], np.float32)
    singles = list(eval_dataset(out, "val", with_ids=True))
    assert [ids.numpy()[0].decode() for _, _, ids in singles] == VOC_VAL_IDS
    for (images, labels, _), example_id in zip(singles, VOC_VAL_IDS):
        expected = _pil_indices(VOC_FIXTURES / "SegmentationClass" / f"{example_id}.png")
        assert images.shape == (1, *expected.shape, 3) and images.dtype == tf.float32
        assert labels.dtype == tf.int32
        np.testing.assert_array_equal(labels.numpy()[0], expected)
    (images, labels), _ = list(eval_dataset(out, "val", batch_size=2))
    height = max(s[1].shape[1] for s in singles[:2])
    width = max(s[1].shape[2] for s in singles[:2])
    assert images.shape == (2, height, width, 3) and labels.shape == (2, height, width)
    for k in range(2):
        single_image, single_label = singles[k][0].numpy()[0], singles[k][1].numpy()[0]
        h, w = single_label.shape
        np.testing.assert_allclose(images.numpy()[k, :h, :w], single_image, atol=1e-4)
        np.testing.assert_array_equal(labels.numpy()[k, :h, :w], single_label)
        padded = np.ones((height, width), bool)
        padded[:h, :w] = False
        assert np.all(labels.numpy()[k][padded] == 255)
        np.testing.assert_allclose(images.numpy()[k][padded], np.broadcast_to(mean, (padded.sum(), 3)), atol=1e-4)


# ------------------------------------------------------------------------------------------------ folders / CamVid


def test_folder_reader_camvid_remaps_void_to_ignore():
    spec = LabelSpec(11, 255, {11: 255})
    samples = folder_samples(CAMVID, "val")
    assert [s.id for s in samples] == CAMVID_VAL_IDS
    void_seen = False
    for sample in samples[:3]:
        example_id, image_bytes, label, rgb = load_example(sample, spec)
        raw = _pil_indices(CAMVID / "valannot" / f"{example_id}.png")
        void_seen |= bool((raw == 11).any())
        np.testing.assert_array_equal(label[raw == 11], 255)
        np.testing.assert_array_equal(label[raw != 11], raw[raw != 11])
        assert image_bytes == (CAMVID / "val" / f"{example_id}.png").read_bytes()
        np.testing.assert_array_equal(rgb, np.array(Image.open(CAMVID / "val" / f"{example_id}.png")))
    assert void_seen


def test_folder_reader_split_list_and_suffixes(tmp_path):
    # Cityscapes-style names in city subfolders, paired by the part before the suffix.
    for split, city in (("train", "aachen"), ("train", "bonn")):
        for folder, suffix, mode in (("leftImg8bit", "_leftImg8bit.png", "RGB"),
                                     ("gtFine", "_gtFine_labelIds.png", "L")):
            path = tmp_path / folder / split / city / f"{city}_000000_000019{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new(mode, (8, 4), 7).save(path)
    samples = folder_samples(tmp_path, "train", image_dir="leftImg8bit/{split}", label_dir="gtFine/{split}",
                             image_suffixes=("_leftImg8bit.png",), label_suffix="_gtFine_labelIds.png")
    assert [s.id for s in samples] == ["aachen_000000_000019", "bonn_000000_000019"]
    assert all(s.label.exists() and s.image.exists() for s in samples)
    (tmp_path / "train.txt").write_text("/x/leftImg8bit/bonn_000000_000019_leftImg8bit.png y\n")
    listed = folder_samples(tmp_path, "train", image_dir="leftImg8bit/{split}", label_dir="gtFine/{split}",
                            image_suffixes=("_leftImg8bit.png",), label_suffix="_gtFine_labelIds.png",
                            split_list="{split}.txt")
    assert [s.id for s in listed] == ["bonn_000000_000019"]


# ------------------------------------------------------------------------------------------------ CLI + pipelines


@pytest.fixture(scope="module")
def camvid_tfrecords(tmp_path_factory):
    out = tmp_path_factory.mktemp("camvid") / "tfr"
    rc = prepare_module.main(["--preset", "camvid", str(CAMVID), str(out), "--splits", "train", "val",
                              "--num-shards", "2", "--no-progress"])
    assert rc == 0
    return out


def test_prepare_cli_camvid_end_to_end(camvid_tfrecords):
    info = json.loads((camvid_tfrecords / "dataset_info.json").read_text())
    assert info["name"] == "camvid" and info["colormap"] == "camvid" and info["ignore_label"] == 255
    assert info["num_classes"] == 11 and info["class_names"] == list(CAMVID_CLASSES)
    train_ids = sorted(p.stem for p in (CAMVID / "train").glob("*.png"))
    assert info["splits"] == {"train": len(train_ids), "val": len(CAMVID_VAL_IDS)}
    assert len(tfrecord_files(camvid_tfrecords, "train")) == 2
    pixels = np.concatenate([np.array(Image.open(CAMVID / "train" / f"{i}.png")).reshape(-1, 3) for i in train_ids])
    np.testing.assert_allclose(info["mean_rgb"], pixels.mean(axis=0), atol=1e-2)
    records = _records(camvid_tfrecords, "val")
    assert sorted(records) == CAMVID_VAL_IDS
    for example_id, (_, parsed) in records.items():
        np.testing.assert_array_equal(parsed["label"], _camvid_label("val", example_id))
        np.testing.assert_array_equal(parsed["image"], np.array(Image.open(CAMVID / "val" / f"{example_id}.png")))


def test_train_dataset_static_shapes_and_label_values(camvid_tfrecords):
    ds = train_dataset(camvid_tfrecords, batch_size=2, crop_size=(65, 97), resize=0.25, seed=3)
    images_spec, labels_spec = ds.element_spec
    assert images_spec.shape == (2, 65, 97, 3) and images_spec.dtype == tf.float32
    assert labels_spec.shape == (2, 65, 97) and labels_spec.dtype == tf.int32
    seen = set()
    for images, labels in ds.take(4):
        assert 0 <= images.numpy().min() and images.numpy().max() <= 255
        seen |= set(np.unique(labels.numpy()).tolist())
    assert seen <= set(range(11)) | {255} and len(seen) > 5


def test_train_dataset_pads_with_mean_and_ignore(camvid_tfrecords):
    # 480x360 * 0.25 = 120x90: a 129x161 crop at scale 1 must pad bottom/right.
    info = load_dataset_info(camvid_tfrecords)
    ds = train_dataset(camvid_tfrecords, batch_size=1, crop_size=(129, 161), resize=0.25, min_scale=1.0,
                       max_scale=1.0, flip=False, seed=0, repeat=False)
    batches = list(ds)
    assert len(batches) == info["splits"]["train"]
    for images, labels in batches[:3]:
        image, label = images.numpy()[0], labels.numpy()[0]
        assert np.all(label[90:] == 255) and np.all(label[:, 120:] == 255)
        np.testing.assert_allclose(image[90:].reshape(-1, 3), np.broadcast_to(info["mean_rgb"], (39 * 161, 3)),
                                   atol=1e-3)
        assert (label[:90, :120] != 255).mean() > 0.8  # the image part keeps its labels (void is ignored)


def test_train_dataset_is_deterministic_given_a_seed(camvid_tfrecords):
    def first_batches(seed):
        ds = train_dataset(camvid_tfrecords, batch_size=2, crop_size=(65, 65), resize=0.25, seed=seed,
                           shuffle_buffer=8)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(3)]

    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_eval_dataset_whole_images(camvid_tfrecords):
    batches = list(eval_dataset(camvid_tfrecords, "val", with_ids=True))
    assert len(batches) == len(CAMVID_VAL_IDS)
    for (images, labels, ids), example_id in zip(batches, CAMVID_VAL_IDS):
        assert ids.numpy()[0].decode() == example_id
        assert images.shape == (1, 360, 480, 3) and labels.shape == (1, 360, 480)
        np.testing.assert_array_equal(labels.numpy()[0], _camvid_label("val", example_id))
    images, labels = next(iter(eval_dataset(camvid_tfrecords, "val", resize=0.5)))
    assert images.shape == (1, 180, 240, 3) and labels.shape == (1, 180, 240)
    # Nearest neighbour with half-pixel centres at factor 1/2 samples every second pixel starting at 1.
    np.testing.assert_array_equal(labels.numpy()[0], _camvid_label("val", CAMVID_VAL_IDS[0])[1::2, 1::2])


# ------------------------------------------------------------------------------------------------ augmentation


def _block_labels(rng, height, width, block=8, classes=10):
    blocks = rng.integers(0, classes, (height // block, width // block))
    return np.kron(blocks, np.ones((block, block), int)).astype(np.uint8)


def test_augment_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    label = _block_labels(rng, 64, 96)
    image = np.repeat(label[..., None] * 20.0, 3, axis=-1).astype(np.float32)  # the pixel value encodes its label
    mean = (200.0, 210.0, 220.0)
    for k in range(12):
        out_image, out_label = aug.augment(tf.constant(image), tf.constant(label), tf.constant([k, 1], tf.int64),
                                           crop_size=(80, 80), mean_rgb=mean)
        out_image, out_label = out_image.numpy(), out_label.numpy()
        assert out_image.shape == (80, 80, 3) and out_label.shape == (80, 80)
        pad = out_label == 255
        np.testing.assert_allclose(out_image[pad], np.broadcast_to(mean, (pad.sum(), 3)), atol=1e-3)
        # Pixels whose 3x3 neighbourhood (inside the crop) has one label are away from block edges, where bilinear
        # and nearest resizing agree: the value must match exactly.
        padded = np.pad(out_label.astype(int), 1, constant_values=-1)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
        interior = (windows.min(axis=(2, 3)) == windows.max(axis=(2, 3))) & ~pad
        assert interior.mean() > 0.3
        np.testing.assert_allclose(out_image[..., 0][interior], out_label[interior] * 20.0, atol=1e-3)


def test_augment_flip_and_scale_match_numpy_references():
    rng = np.random.default_rng(1)
    label = _block_labels(rng, 32, 48, block=4)
    cols = np.broadcast_to(np.arange(48, dtype=np.float32), (32, 48))
    image = np.stack([cols, cols, cols], axis=-1)
    flips = set()
    for k in range(10):
        out_image, out_label = aug.augment(tf.constant(image), tf.constant(label), tf.constant([k, 0], tf.int64),
                                           crop_size=(32, 48), min_scale=1.0, max_scale=1.0)
        flipped = out_image.numpy()[0, 0, 0] > out_image.numpy()[0, -1, 0]
        flips.add(bool(flipped))
        np.testing.assert_array_equal(out_image.numpy(), image[:, ::-1] if flipped else image)
        np.testing.assert_array_equal(out_label.numpy(), label[:, ::-1] if flipped else label)
    assert flips == {True, False}
    # Exact 2x scale: nearest-neighbour labels are each pixel repeated 2x2.
    _, doubled = aug.augment(tf.constant(image), tf.constant(label), tf.constant([0, 0], tf.int64),
                             crop_size=(64, 96), min_scale=2.0, max_scale=2.0, flip=False)
    np.testing.assert_array_equal(doubled.numpy(), np.repeat(np.repeat(label, 2, axis=0), 2, axis=1))


def test_augment_random_scale_covers_the_range():
    image, label = tf.zeros([100, 100, 3]), tf.zeros([100, 100], tf.uint8)
    sizes = [aug.random_scale(image, label, tf.constant([k, 5], tf.int64), 0.5, 2.0)[1].shape[0] for k in range(40)]
    assert min(sizes) >= 50 and max(sizes) <= 200 and min(sizes) < 70 and max(sizes) > 170


# ------------------------------------------------------------------------------------------------ architecture


def test_data_package_does_not_import_model_code():
    forbidden = ("keras_deeplab.model", "keras_deeplab.backbones", "keras_deeplab.layers", "keras_deeplab.training")
    for path in (REPO / "keras_deeplab" / "data").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            assert not any(n.startswith(forbidden) for n in names), f"{path.name} imports {names}"


def test_ade20k_preset_ignores_other_and_shifts_classes(tmp_path):
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    raw = np.array([[0, 1, 2], [75, 150, 0]], np.uint8)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "images" / "validation" / "ADE_val_1.jpg")
    Image.fromarray(raw).save(tmp_path / "annotations" / "validation" / "ADE_val_1.png")
    info = prepare(tmp_path, tmp_path / "out", preset="ade20k", splits=["validation"], progress=False)
    assert info["num_classes"] == 150 and info["class_names"][0] == "wall" and info["colormap"] == "ade20k"
    (_, labels), = list(eval_dataset(tmp_path / "out", "validation"))
    np.testing.assert_array_equal(labels.numpy()[0], [[255, 0, 1], [74, 149, 255]])


# ------------------------------------------------------------------------------------------------ Cityscapes


def make_cityscapes_tree(root, label_ids):
    """A Cityscapes-like tree (leftImg8bit/val/<city>/, gtFine/val/<city>/) with one image and both label
    files, as after cityscapesscripts' createTrainIdLabelImgs.py: `*_gtFine_labelIds.png` holding `label_ids`
    and `*_gtFine_labelTrainIds.png` holding their train ids (the official table, written out independently).
    Returns the train ids."""
    official_train_ids = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                          25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    train_ids = np.vectorize(lambda v: official_train_ids.get(int(v), 255))(label_ids).astype(np.uint8)
    images, labels = root / "leftImg8bit" / "val" / "frankfurt", root / "gtFine" / "val" / "frankfurt"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    name = "frankfurt_000000_000294"
    image = np.random.default_rng(0).integers(0, 256, (*label_ids.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(images / f"{name}_leftImg8bit.png")
    Image.fromarray(label_ids).save(labels / f"{name}_gtFine_labelIds.png")
    Image.fromarray(train_ids).save(labels / f"{name}_gtFine_labelTrainIds.png")
    return train_ids


def test_cityscapes_presets_label_label_ids_and_train_ids_files_alike(tmp_path):
    # Road (7 -> 0), sidewalk (8 -> 1), car (26 -> 13), bicycle (33 -> 18), terrain (22 -> 9); unlabeled (0),
    # ego vehicle (1) and 255 are ignored.
    label_ids = np.array([[7, 7, 8, 26], [0, 1, 33, 22], [7, 26, 255, 8]], np.uint8)
    expected = make_cityscapes_tree(tmp_path, label_ids)
    np.testing.assert_array_equal(expected, [[0, 0, 1, 13], [255, 255, 18, 9], [0, 13, 255, 1]])
    for preset in ("cityscapes", "cityscapes_trainids"):
        info = prepare(tmp_path, tmp_path / preset, preset=preset, splits=["val"], progress=False)
        assert info["num_classes"] == 19 and info["class_names"][0] == "road" and info["ignore_label"] == 255
        (_, labels), = list(eval_dataset(tmp_path / preset, "val"))
        np.testing.assert_array_equal(labels.numpy()[0], expected, err_msg=preset)


@pytest.mark.parametrize("preset, suffix, use", [
    ("cityscapes", "_gtFine_labelTrainIds.png", "cityscapes_trainids"),
    ("cityscapes_trainids", "_gtFine_labelIds.png", "cityscapes"),
])
def test_cityscapes_preset_refuses_label_files_it_would_mislabel(tmp_path, capsys, preset, suffix, use):
    make_cityscapes_tree(tmp_path, np.array([[7, 8], [26, 0]], np.uint8))
    with pytest.raises(ValueError, match=f"would be mislabelled. Use --preset {use} "):
        prepare(tmp_path, tmp_path / "out", preset=preset, splits=["val"], label_suffix=suffix,
                progress=False)
    assert not (tmp_path / "out").exists()
    args = ["--preset", preset, str(tmp_path), str(tmp_path / "out"), "--splits", "val",
            "--label-suffix", suffix, "--no-progress"]
    assert prepare_module.main(args) == 1
    assert f"preset {preset!r} is for" in capsys.readouterr().err
    # An explicit remap replaces the preset's, and with it the check: {} keeps the train ids as they are.
    prepare(tmp_path, tmp_path / "explicit", preset="cityscapes", splits=["val"],
            label_suffix="_gtFine_labelTrainIds.png", remap={}, progress=False)
    (_, labels), = list(eval_dataset(tmp_path / "explicit", "val"))
    np.testing.assert_array_equal(labels.numpy()[0], [[0, 1], [13, 255]])


# ------------------------------------------------------------------------------------------------ determinism


def test_prepare_twice_writes_byte_identical_shards(camvid_tfrecords, tmp_path):
    again = tmp_path / "again"
    assert prepare_module.main(["--preset", "camvid", str(CAMVID), str(again), "--splits", "train", "val",
                                "--num-shards", "2", "--no-progress"]) == 0
    names = sorted(p.name for p in camvid_tfrecords.iterdir())
    assert names == sorted(p.name for p in again.iterdir()) and len(names) == 5  # 2 + 2 shards + info
    for name in names:
        assert (again / name).read_bytes() == (camvid_tfrecords / name).read_bytes(), name


def test_prepare_cli_shows_a_progress_bar_on_stderr(tmp_path, capsys):
    args = ["--preset", "camvid", str(CAMVID), str(tmp_path / "out"), "--splits", "val"]
    assert prepare_module.main(args) == 0
    captured = capsys.readouterr()
    n = len(CAMVID_VAL_IDS)
    assert "prepare val: 100%" in captured.err and f"{n}/{n}" in captured.err
    assert "prepare val" not in captured.out
    assert prepare_module.main(["--preset", "camvid", str(CAMVID), str(tmp_path / "quiet"), "--splits", "val",
                                "--no-progress"]) == 0
    assert "prepare val" not in capsys.readouterr().err


def test_train_dataset_skip_batches_continues_the_same_stream(camvid_tfrecords):
    def batches(skip_batches, count):
        ds = train_dataset(camvid_tfrecords, batch_size=3, crop_size=(33, 33), resize=0.25, seed=5,
                           shuffle_buffer=8, skip_batches=skip_batches)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(count)]

    # 3 batches of 3 from 22 examples: the resumed stream also crosses a pass over the data (reshuffled).
    whole = batches(0, 10)
    resumed = batches(7, 3)
    for (x_whole, y_whole), (x_resumed, y_resumed) in zip(whole[7:], resumed):
        np.testing.assert_array_equal(x_resumed, x_whole)
        np.testing.assert_array_equal(y_resumed, y_whole)
