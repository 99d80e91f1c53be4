"""Known datasets: class names, colour map, label remapping and reader defaults, so that
`deeplab prepare --preset camvid SOURCE OUT` needs no other options.

A preset whose remap suits only one kind of label file names, in `wrong_label_files`, a (lower-case) part
of the names of the files it would mislabel and the preset for those; `check_label_suffix` refuses them.
"""

from keras_deeplab.viz import class_names

# Class names live with the colour maps in viz (one list per dataset, no TensorFlow needed there).
VOC_CLASSES = tuple(class_names("pascal"))
CAMVID_CLASSES = tuple(class_names("camvid"))
CITYSCAPES_CLASSES = tuple(class_names("cityscapes"))
ADE20K_CLASSES = tuple(class_names("ade20k"))

# Cityscapes `*_gtFine_labelIds.png` ids -> the 19 train ids; every other id (0..33) is ignored.
CITYSCAPES_LABEL_IDS_TO_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}

PRESETS = {
    "voc": {
        "format": "voc",
        "name": "voc2012",
        "class_names": VOC_CLASSES,
        "colormap": "pascal",
        "remap": {},
    },
    "camvid": {
        "format": "folder",
        "name": "camvid",
        "class_names": CAMVID_CLASSES,
        "colormap": "camvid",
        "remap": {11: 255},  # void
        "reader": {"image_dir": "{split}", "label_dir": "{split}annot"},
    },
    # Cityscapes ships `*_gtFine_labelIds.png` (ids 0..33, remapped here to the 19 train ids); its scripts'
    # createTrainIdLabelImgs.py writes `*_gtFine_labelTrainIds.png` (train ids already, 255 ignored): one
    # preset each, and each refuses the other's label files (`wrong_label_files`), which it would mislabel.
    "cityscapes": {
        "format": "folder",
        "name": "cityscapes",
        "class_names": CITYSCAPES_CLASSES,
        "colormap": "cityscapes",
        "remap": {**{i: 255 for i in range(34)}, **CITYSCAPES_LABEL_IDS_TO_TRAIN_IDS},
        "reader": {
            "image_dir": "leftImg8bit/{split}",
            "label_dir": "gtFine/{split}",
            "image_suffixes": ("_leftImg8bit.png",),
            "label_suffix": "_gtFine_labelIds.png",
        },
        "wrong_label_files": {"contains": "trainids", "preset": "cityscapes_trainids"},
    },
    "cityscapes_trainids": {
        "format": "folder",
        "name": "cityscapes",
        "class_names": CITYSCAPES_CLASSES,
        "colormap": "cityscapes",
        "remap": {},
        "reader": {
            "image_dir": "leftImg8bit/{split}",
            "label_dir": "gtFine/{split}",
            "image_suffixes": ("_leftImg8bit.png",),
            "label_suffix": "_gtFine_labelTrainIds.png",
        },
        "wrong_label_files": {"contains": "labelids", "preset": "cityscapes"},
    },
    "ade20k": {
        "format": "folder",
        "name": "ade20k",
        "class_names": ADE20K_CLASSES,
        "colormap": "ade20k",
        "remap": {0: 255, **{i: i - 1 for i in range(1, 151)}},  # 0 = "other" is ignored
        "reader": {"image_dir": "images/{split}", "label_dir": "annotations/{split}", "image_suffixes": (".jpg",)},
    },
    "voc_segmentation": {  # the TFDS builder in voc_tfds.py
        "format": "tfds",
        "name": "voc2012",
        "class_names": VOC_CLASSES,
        "colormap": "pascal",
        "remap": {},
        "reader": {"image_key": "image", "label_key": "segmentation_mask"},
    },
    "oxford_iiit_pet": {
        "format": "tfds",
        "name": "oxford_iiit_pet",
        "class_names": ("background", "pet"),
        "colormap": "pascal",
        "remap": {1: 1, 2: 0, 3: 255},  # trimap: 1 pet, 2 background, 3 border (ignored)
        "reader": {"image_key": "image", "label_key": "segmentation_mask"},
    },
    "scene_parse150": {
        "format": "tfds",
        "name": "scene_parse150",
        "class_names": ADE20K_CLASSES,
        "colormap": "ade20k",
        "remap": {0: 255, **{i: i - 1 for i in range(1, 151)}},
        "reader": {"image_key": "image", "label_key": "annotation"},
    },
}


def check_label_suffix(preset, label_suffix, remap_overridden):
    """Raises ValueError when `preset`'s remap would be applied to label files ending in `label_suffix` that
    it would mislabel (e.g. the Cityscapes labelIds remap on `*_labelTrainIds.png`). An explicit remap
    replaces the preset's and is not checked."""
    wrong = PRESETS[preset].get("wrong_label_files")
    if remap_overridden or not wrong or label_suffix is None or wrong["contains"] not in label_suffix.lower():
        return
    raise ValueError(
        f"preset {preset!r} is for {PRESETS[preset]['reader']['label_suffix']} label files, but the label "
        f"suffix is {label_suffix!r}: their values would be mislabelled. Use --preset {wrong['preset']} for "
        "those files (or give an explicit remap)"
    )
