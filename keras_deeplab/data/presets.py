"""Known datasets: class names, colour map, label remapping and reader defaults, so that
`deeplab prepare --preset camvid SOURCE OUT` needs no other options."""

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian", "bicyclist",
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

# Cityscapes `*_gtFine_labelIds.png` ids -> the 19 train ids; every other id (0..33) is ignored.
CITYSCAPES_LABEL_IDS_TO_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}

# SceneParse150 / ADE20K (first name of each class in objectInfo150.txt of CSAILVision/sceneparsing, BSD-3-Clause).
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel',
    'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television', 'airplane',
    'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
    'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)

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
