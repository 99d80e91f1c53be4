"""A TFDS builder for PASCAL VOC 2012 *segmentation* (TFDS' own `voc/2012` has no masks), reading the official
archive or an extracted VOCdevkit from `manual_dir`. Masks are stored as class indices (0..20, 255 = boundary),
read from the palette PNGs with PIL.

    deeplab prepare --preset voc_segmentation voc_segmentation data/voc --manual-dir ~/Downloads
"""
import io
import tarfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from keras_deeplab.data.presets import VOC_CLASSES

ARCHIVE_NAME = "VOCtrainval_11-May-2012.tar"
_PREFIX = "VOCdevkit/VOC2012/"


def _index_mask(png_bytes):
    """[H, W, 1] uint8 class indices of a VOC palette PNG."""
    with Image.open(io.BytesIO(png_bytes)) as im:
        return np.array(im)[..., None].astype(np.uint8)


class _Source:
    """Reads VOC2012 files (relative to VOCdevkit/VOC2012/) from the tar or from an extracted folder."""

    def __init__(self, manual_dir):
        manual_dir = Path(manual_dir)
        self.tar = manual_dir / ARCHIVE_NAME
        self.folder = next((d for d in (manual_dir / "VOCdevkit" / "VOC2012", manual_dir / "VOC2012", manual_dir)
                            if (d / "JPEGImages").is_dir()), None)
        if not self.tar.is_file() and self.folder is None:
            raise FileNotFoundError(f"{manual_dir}: neither {ARCHIVE_NAME} nor an extracted VOCdevkit/VOC2012 found")

    def files(self, wanted):
        """Yields (relative path, bytes) of the files for which `wanted(relative path)` is true."""
        if self.folder is not None:
            for path in sorted(self.folder.rglob("*")):
                relative = path.relative_to(self.folder).as_posix()
                if path.is_file() and wanted(relative):
                    yield relative, path.read_bytes()
            return
        with tarfile.open(self.tar) as archive:
            for member in archive:
                if member.isfile() and member.name.startswith(_PREFIX) and wanted(member.name[len(_PREFIX):]):
                    yield member.name[len(_PREFIX):], archive.extractfile(member).read()


class VocSegmentation(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 semantic segmentation: splits train (1,464) and val (1,449), plus train_aug (10,582)
    when SBD's SegmentationClassAug/ and train_aug.txt are in manual_dir."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download {ARCHIVE_NAME} from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and place it (or the extracted
    VOCdevkit/ folder) in `manual_dir`. For the `train_aug` split also put SBD's augmented masks
    `SegmentationClassAug/` (index PNGs) and the list `train_aug.txt` (ids, or DeepLab's "image label" lines)
    in `manual_dir`.
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="PASCAL VOC 2012 segmentation with class-index masks (255 = boundary, ignored).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "segmentation_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                "file_name": tfds.features.Text(),
            }),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
            metadata=tfds.core.MetadataDict(class_names=list(VOC_CLASSES), ignore_label=255),
        )

    def _split_generators(self, dl_manager):
        manual_dir = Path(dl_manager.manual_dir)
        source = _Source(manual_dir)
        list_names = ("ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt")
        lists = dict(source.files(lambda p: p in list_names))
        splits = {
            split: self._generate_examples(source, _ids(lists[f"ImageSets/Segmentation/{split}.txt"]), None)
            for split in ("train", "val")
        }
        aug_list, aug_masks = manual_dir / "train_aug.txt", manual_dir / "SegmentationClassAug"
        if aug_list.is_file() and aug_masks.is_dir():
            splits["train_aug"] = self._generate_examples(source, _ids(aug_list.read_bytes()), aug_masks)
        return splits

    def _generate_examples(self, source, ids, aug_masks):
        ids = set(ids)
        masks = {}  # the masks are small: read them first, then stream the JPEGs
        if aug_masks is None:
            for relative, data in source.files(lambda p: p.startswith("SegmentationClass/") and Path(p).stem in ids):
                masks[Path(relative).stem] = _index_mask(data)
        missing = set(ids)
        for relative, data in source.files(lambda p: p.startswith("JPEGImages/") and Path(p).stem in ids):
            example_id = Path(relative).stem
            if aug_masks is None:
                mask = masks.get(example_id)
            else:
                mask_path = aug_masks / f"{example_id}.png"
                mask = _index_mask(mask_path.read_bytes()) if mask_path.is_file() else None
            if mask is None:
                raise FileNotFoundError(f"no segmentation mask for {relative}")
            missing.discard(example_id)
            yield example_id, {"image": io.BytesIO(data), "segmentation_mask": mask, "file_name": example_id}
        if missing:
            raise FileNotFoundError(f"listed ids without JPEGImages/<id>.jpg: {sorted(missing)[:10]}")


def _ids(list_bytes):
    return [Path(line.split()[0]).stem for line in list_bytes.decode().splitlines() if line.strip()]
