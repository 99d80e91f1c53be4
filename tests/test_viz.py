"""keras_deeplab.viz: colormaps against the datasets' real palettes, palette label PNGs, overlays and legends."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_deeplab import viz

FIXTURES = Path(__file__).parent / "fixtures" / "viz"
CAMVID_IMAGE = FIXTURES / "camvid_0016E5_07959_120x90.png"


def test_pascal_colormap_is_the_palette_of_a_real_voc_mask():
    mask = Image.open(FIXTURES / "voc2012_2007_000862.png")
    assert mask.mode == "P"
    voc_palette = np.array(mask.getpalette(), np.uint8).reshape(-1, 3)
    assert voc_palette.shape == (256, 3)
    np.testing.assert_array_equal(viz.get_colormap("pascal"), voc_palette)


def test_camvid_colormap_is_segnets_palette_image():
    # camvid11.png is 256x1 RGBA: pixel i has the colour of class i (11 = void is black).
    segnet = np.array(Image.open(FIXTURES / "camvid11.png").convert("RGB"))[0]
    colormap = viz.get_colormap("camvid")
    np.testing.assert_array_equal(colormap[:12], segnet[:12])
    np.testing.assert_array_equal(colormap[viz.IGNORE_LABEL], [0, 0, 0])


def test_cityscapes_colormap_has_the_trainid_colours():
    colormap = viz.get_colormap("cityscapes")
    # trainId colours from cityscapesScripts helpers/labels.py.
    expected = {0: (128, 64, 128), 8: (107, 142, 35), 10: (70, 130, 180), 11: (220, 20, 60), 13: (0, 0, 142),
                18: (119, 11, 32)}
    for train_id, colour in expected.items():
        assert tuple(colormap[train_id]) == colour, viz.class_names("cityscapes")[train_id]
    assert len({tuple(c) for c in colormap[:19]}) == 19
    assert not colormap[19:].any()


def test_ade20k_names_are_the_benchmarks_class_list():
    lines = (FIXTURES / "objectInfo150.txt").read_text().splitlines()[1:]
    first_synonyms = [line.split("\t")[-1].split(",")[0].strip() for line in lines]
    assert viz.class_names("ade20k") == first_synonyms


def test_ade20k_colormap_is_tf_deeplabs_without_the_other_entry():
    colormap = viz.get_colormap("ade20k")
    # create_ade20k_label_colormap()[1], [13], [21], [150] in TF DeepLab's get_dataset_colormap.py.
    assert tuple(colormap[0]) == (120, 120, 120)  # wall
    assert tuple(colormap[12]) == (150, 5, 61)  # person
    assert tuple(colormap[20]) == (0, 102, 200)  # car
    assert tuple(colormap[149]) == (92, 0, 255)  # flag
    assert colormap[:150].any(axis=1).all()
    assert not colormap[150:].any()


@pytest.mark.parametrize("name, count", [("pascal", 21), ("cityscapes", 19), ("camvid", 11), ("ade20k", 150)])
def test_class_names_and_colormap_shapes(name, count):
    names = viz.class_names(name)
    assert len(names) == count == len(set(names))
    colormap = viz.get_colormap(name)
    assert colormap.shape == (256, 3) and colormap.dtype == np.uint8


def test_unknown_colormap_is_named_in_the_error():
    with pytest.raises(ValueError, match="'voc'.*pascal"):
        viz.get_colormap("voc")


def test_save_label_png_round_trips_exact_labels(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 21, size=(37, 53)).astype(np.int32)
    labels[:5] = viz.IGNORE_LABEL
    path = tmp_path / "labels.png"
    viz.save_label_png(labels, path, "pascal")
    saved = Image.open(path)
    assert saved.mode == "P"
    np.testing.assert_array_equal(np.array(saved), labels)
    np.testing.assert_array_equal(np.array(saved.getpalette(), np.uint8).reshape(-1, 3), viz.get_colormap("pascal"))


@pytest.mark.parametrize("labels, message", [
    (np.full((4, 4), 256), "0..255"),
    (np.full((4, 4), -1), "0..255"),
    (np.zeros((1, 4, 4), np.int32), "2-D"),
    (np.zeros((4, 4), np.float32), "integer"),
])
def test_save_label_png_rejects_bad_label_maps(tmp_path, labels, message):
    with pytest.raises(ValueError, match=message):
        viz.save_label_png(labels, tmp_path / "x.png", "camvid")


def test_legend_entries_are_exactly_the_present_classes():
    labels = np.array([[3, 3, 255], [7, 12, 3]])
    names = viz.class_names("camvid")
    assert viz.present_classes(labels) == [3, 7, 12]
    assert viz.legend_entries(labels, names) == [(3, "road"), (7, "fence"), (12, "class 12")]
    assert viz.legend_entries(labels) == [(3, "class 3"), (7, "class 7"), (12, "class 12")]
    assert viz.legend_entries(np.full((2, 2), 255), names) == []


def _camvid_image_and_labels():
    image = np.array(Image.open(CAMVID_IMAGE).convert("RGB"))
    height, width = image.shape[:2]
    labels = np.full((height, width), 3, np.int32)  # road
    labels[: height // 3] = 5  # tree
    labels[height // 3: height // 2, : width // 2] = 8  # car
    labels[-10:, -10:] = viz.IGNORE_LABEL
    return image, labels


def test_overlay_blends_where_labelled_and_adds_a_legend_beside_the_image():
    image, labels = _camvid_image_and_labels()
    colormap = viz.get_colormap("camvid")
    alpha = 0.4
    result = viz.overlay(image, labels, colormap, alpha=alpha, class_names=viz.class_names("camvid"))
    height, width = image.shape[:2]
    assert result.dtype == np.uint8 and result.shape[0] == height and result.shape[2] == 3
    assert result.shape[1] > width
    picture = result[:, :width].astype(np.int32)
    labelled = labels != viz.IGNORE_LABEL
    expected = (1 - alpha) * image.astype(np.float64) + alpha * colormap[labels].astype(np.float64)
    assert np.abs(picture[labelled] - expected[labelled]).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(picture[~labelled], image[~labelled])


def test_legend_shows_the_colours_of_present_classes_only():
    image, labels = _camvid_image_and_labels()
    colormap = viz.get_colormap("camvid")
    result = viz.overlay(image, labels, colormap, class_names=viz.class_names("camvid"))
    legend_colours = {tuple(c) for c in result[:, image.shape[1]:].reshape(-1, 3)}
    for class_id in range(1, 11):  # not sky: its grey (128, 128, 128) also occurs in anti-aliased text
        assert (tuple(colormap[class_id]) in legend_colours) == (class_id in (3, 5, 8)), class_id


def test_overlay_without_classes_is_the_image_itself():
    image, _ = _camvid_image_and_labels()
    labels = np.full(image.shape[:2], viz.IGNORE_LABEL)
    np.testing.assert_array_equal(viz.overlay(image, labels, "camvid"), image)


def test_overlay_rejects_labels_of_another_size():
    image, labels = _camvid_image_and_labels()
    with pytest.raises(ValueError, match=r"\[89, 120\].*\[90, 120\]"):
        viz.overlay(image, labels[:-1], "camvid")


def test_save_overlay_writes_the_overlay(tmp_path):
    image, labels = _camvid_image_and_labels()
    path = tmp_path / "overlay.png"
    viz.save_overlay(image, labels, path, "camvid", class_names=viz.class_names("camvid"))
    np.testing.assert_array_equal(np.array(Image.open(path)), viz.overlay(image, labels, "camvid",
                                                                          class_names=viz.class_names("camvid")))
