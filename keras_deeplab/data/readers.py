"""Dataset readers: list the samples of a split (PASCAL VOC, image + label folders, TFDS) and load each one into
(id, encoded image bytes, uint8 class-id label) with checks that name the offending file.
"""
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from keras_deeplab.data.tfrecords import invalid_label_values
from keras_deeplab.viz import IGNORE_LABEL

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Formats and PIL modes whose original bytes TensorFlow decodes to the same RGB pixels as PIL; others are re-encoded.
_KEEP_AS_IS = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "RGBA", "L", "LA", "P"}}
VOC_AUG_SPLITS = ("train_aug", "trainaug")


class DataError(ValueError):
    """A sample that cannot be used as is (missing, unreadable, mismatched or out-of-range); names the file."""


@dataclass(frozen=True)
class Sample:
    """One (image, label) pair before loading. `image`/`label` are file paths or decoded arrays (TFDS);
    `origin` says where it came from, for error messages."""

    id: str
    image: object
    label: object
    origin: str = ""


@dataclass(frozen=True)
class LabelSpec:
    """How label files map to training ids: `remap` {file value: class id or ignore}, other values kept as they are;
    the result must lie in 0..num_classes-1 or be `ignore_label`.

    `ignore_label` is a value of the remapped labels, the value the loss and the metrics skip, so it can
    never be a class id: that class would silently vanish from training and evaluation. A label-file value
    to ignore (a class id or any other value) is remapped to the ignore value instead, e.g. CamVid's void 11
    with {11: 255}.
    """

    num_classes: int
    ignore_label: int = IGNORE_LABEL
    remap: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "remap", tuple(sorted(dict(self.remap).items())))
        for source, target in self.remap:
            if not (0 <= source <= 255 and 0 <= target <= 255):
                raise ValueError(f"remap {source}->{target}: label values must be in 0..255")
        if not 0 <= self.ignore_label <= 255:
            raise ValueError(f"ignore_label {self.ignore_label} must be in 0..255")
        if self.ignore_label < self.num_classes:
            raise ValueError(
                f"ignore_label {self.ignore_label} is also a class id (classes 0..{self.num_classes - 1}): "
                f"the pixels of class {self.ignore_label} would be ignored in training and evaluation. "
                f"ignore_label is a value after remapping; to ignore label-file value {self.ignore_label}, "
                f"remap it to an ignore value outside the classes, e.g. remap {{{self.ignore_label}: 255}} "
                f"(--remap {self.ignore_label}:255) with ignore_label 255"
            )

    def lookup_table(self):
        table = np.arange(256, dtype=np.uint8)
        for source, target in self.remap:
            table[source] = target
        return table


# ---------------------------------------------------------------------------------------------------- listing


def _read_id_list(path, suffixes):
    """Ids of a split list file: one per line, either `id` or `path/to/<id><suffix> path/to/label` (the first
    token's file name without the image suffix)."""
    ids = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        name = Path(line.split()[0]).name
        suffix = next((s for s in suffixes if name.lower().endswith(s.lower())), "")
        ids.append(name[: len(name) - len(suffix)])
    return ids


def find_voc_root(root):
    """The VOC2012 folder (containing JPEGImages/) given it, VOCdevkit/ or the folder above VOCdevkit/."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(f"{root}: not a PASCAL VOC directory (no JPEGImages/ in it, VOC2012/ or VOCdevkit/VOC2012/)")


def voc_samples(root, split, *, label_dir=None, split_list=None):
    """Samples of a VOC segmentation split listed in `ImageSets/Segmentation/<split>.txt` (or `split_list`).

    Labels come from `SegmentationClass/` (palette PNGs whose index is the class, 255 = boundary), or from
    SBD's `SegmentationClassAug/` for the `train_aug` split; `label_dir` overrides either.
    """
    root = find_voc_root(root)
    list_path = Path(split_list) if split_list else root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_path.is_file():
        raise DataError(f"{list_path}: split list for {split!r} not found")
    if label_dir is None:
        label_dir = "SegmentationClassAug" if split in VOC_AUG_SPLITS else "SegmentationClass"
    return [
        Sample(i, root / "JPEGImages" / f"{i}.jpg", root / label_dir / f"{i}.png", origin=f"listed in {list_path}")
        for i in _read_id_list(list_path, (".jpg",))
    ]


def _index_by_suffix(folder, suffixes):
    """{id: path} of the files under `folder` (recursively) whose names end with one of `suffixes`."""
    index = {}
    for path in sorted(Path(folder).rglob("*")):
        for suffix in suffixes:
            if path.name.lower().endswith(suffix.lower()) and path.is_file():
                index.setdefault(path.name[: -len(suffix)], path)
                break
    return index


def folder_samples(root, split, *, image_dir="{split}", label_dir="{split}annot", image_suffixes=IMAGE_SUFFIXES,
                   label_suffix=".png", split_list=None):
    """Samples from an image folder and a label folder of single-channel PNGs (CamVid, Cityscapes, ADE20K).

    `image_dir`, `label_dir` and `split_list` are paths relative to `root` in which `{split}` is replaced.
    A file's id is its name without the suffix (`X_leftImg8bit.png` -> `X`); images and labels are paired by id,
    searching subfolders too. Without `split_list` every image of the folder is used.
    """
    root = Path(root)
    image_root, label_root = root / image_dir.format(split=split), root / label_dir.format(split=split)
    for folder in (image_root, label_root):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (split {split!r})")
    if isinstance(image_suffixes, str):
        image_suffixes = (image_suffixes,)
    images = _index_by_suffix(image_root, image_suffixes)
    labels = _index_by_suffix(label_root, (label_suffix,))
    if split_list:
        list_path = root / split_list.format(split=split)
        if not list_path.is_file():
            raise DataError(f"{list_path}: split list for {split!r} not found")
        ids, origin = _read_id_list(list_path, image_suffixes), f"listed in {list_path}"
    else:
        ids, origin = sorted(images), f"found in {image_root}"
        if not ids:
            raise DataError(f"{image_root}: no images ending in {tuple(image_suffixes)}")
    return [
        Sample(
            i,
            images.get(i, image_root / f"{i}{image_suffixes[0]}"),
            labels.get(i, label_root / f"{i}{label_suffix}"),
            origin=origin,
        )
        for i in ids
    ]


def tfds_builder(name_or_builder, *, data_dir=None, manual_dir=None, download=False):
    """A prepared TFDS builder. Downloads and prepares only when `download` is True (a manual-download dataset
    reads its archives from `manual_dir`); otherwise the dataset must already be prepared in `data_dir`."""
    import tensorflow_datasets as tfds

    import keras_deeplab.data.voc_tfds  # noqa: F401  (registers `voc_segmentation`)

    if isinstance(name_or_builder, str):
        builder = tfds.builder(name_or_builder, data_dir=data_dir)
    else:
        builder = name_or_builder
    if download or manual_dir:
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        except (AssertionError, FileNotFoundError) as error:  # how TFDS reports a missing manual download
            raise DataError(f"TFDS dataset {builder.name}: {error}") from error
    elif not Path(builder.data_dir, "dataset_info.json").exists():
        raise DataError(
            f"TFDS dataset {builder.name} is not prepared in {builder.data_dir}; pass download=True "
            "(`--download`), or `manual_dir` for a manually downloaded dataset"
        )
    return builder


def tfds_samples(builder, split, *, image_key="image", label_key="segmentation_mask"):
    """(iterator of Samples, count) of a TFDS split whose examples hold an image and a segmentation mask.
    Images stay encoded (the original JPEG/PNG bytes), so they are stored and decoded exactly as the files."""
    import tensorflow_datasets as tfds

    if split not in builder.info.splits:
        raise DataError(f"TFDS dataset {builder.name} has no split {split!r}; splits: {list(builder.info.splits)}")
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise DataError(f"TFDS dataset {builder.name} has no feature {key!r}; features: {list(features)}")
    decoders = {image_key: tfds.decode.SkipDecoding()} if isinstance(features[image_key], tfds.features.Image) else None
    dataset = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)

    def samples():
        for n, example in enumerate(tfds.as_numpy(dataset)):
            example_id = example["file_name"].decode() if "file_name" in features else f"{split}_{n:06d}"
            yield Sample(example_id, example[image_key], example[label_key],
                         origin=f"tfds:{builder.name}[{split}] example {n}")

    return samples(), builder.info.splits[split].num_examples


# ---------------------------------------------------------------------------------------------------- loading


def _encode_png(rgb):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def load_image(image, where):
    """(encoded bytes TF can decode, RGB uint8 array) of an image file, encoded bytes or array; raises DataError
    naming it."""
    if isinstance(image, np.ndarray):
        rgb = image if image.ndim == 3 else np.stack([image] * 3, axis=-1)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise DataError(f"{where}: image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        return _encode_png(rgb), rgb
    if isinstance(image, bytes):
        data, path = image, where
    else:
        path = Path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found ({where})") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, mode = im.format, im.mode
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: unreadable or truncated image ({error})") from None
    if mode not in _KEEP_AS_IS.get(fmt, ()):
        data = _encode_png(rgb)
    return data, rgb


def load_label(label, where):
    """A label file (palette or grayscale PNG: the pixel value/index is the class) or array as a 2-D integer array.

    Palette PNGs are read by index with PIL; TF's decode_png would return palette colours instead.
    """
    if isinstance(label, np.ndarray):
        array = label
    else:
        path = Path(label)
        try:
            with Image.open(path) as im:
                im.load()
                fmt, mode = im.format, im.mode
                array = np.array(im)
        except FileNotFoundError:
            raise DataError(f"{path}: label file not found ({where})") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"{path}: unreadable or truncated label mask ({error})") from None
        if fmt != "PNG":
            raise DataError(f"{path}: label mask is {fmt}, expected a lossless PNG of class ids")
        if array.ndim != 2:
            raise DataError(f"{path}: label must be a single-channel index mask (PNG mode P or L), got mode {mode}")
        where = path
    if array.ndim == 3 and all(np.array_equal(array[..., 0], array[..., c]) for c in range(array.shape[-1])):
        array = array[..., 0]
    if array.ndim != 2:
        raise DataError(f"{where}: label must be a single-channel [H, W] mask, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return array


def load_example(sample, spec):
    """(id, image bytes, uint8 label of class ids, RGB array) of a sample, checked: both files readable, same size,
    label values (after `spec.remap`) within the classes or the ignore value. Raises DataError naming the file."""
    image_where = sample.image if isinstance(sample.image, (str, Path)) else sample.origin
    label_where = sample.label if isinstance(sample.label, (str, Path)) else sample.origin
    image_bytes, rgb = load_image(sample.image, sample.origin)
    raw = load_label(sample.label, sample.origin)
    if raw.shape != rgb.shape[:2]:
        raise DataError(
            f"{label_where}: mask size {raw.shape[1]}x{raw.shape[0]} (WxH) differs from image {image_where} "
            f"size {rgb.shape[1]}x{rgb.shape[0]}"
        )
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise DataError(f"{label_where}: label values {raw.min()}..{raw.max()} do not fit 0..255")
    table = spec.lookup_table()
    raw = raw.astype(np.uint8)
    bad = [v for v in np.unique(raw) if invalid_label_values(table[v], spec.num_classes, spec.ignore_label).size]
    if bad:
        mapped = f" (mapped to {table[bad].tolist()})" if spec.remap else ""
        raise DataError(
            f"{label_where}: label values {[int(v) for v in bad]}{mapped} are outside the classes "
            f"0..{spec.num_classes - 1} and the ignore value {spec.ignore_label}"
        )
    return sample.id, image_bytes, table[raw], rgb
