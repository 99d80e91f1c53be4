"""TFDS reader on a tiny local builder (generated in memory) and the VOC segmentation builder on a tiny archive
made in the test: no download, no network."""
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from keras_deeplab.data import prepare as prepare_module
from keras_deeplab.data.pipeline import eval_dataset, load_dataset_info
from keras_deeplab.data.prepare import prepare
from keras_deeplab.data.readers import DataError, tfds_builder
from keras_deeplab.data.voc_tfds import ARCHIVE_NAME, VocSegmentation

SIZES = [(20, 24), (16, 30), (18, 18)]  # (height, width) per example


def _example(k):
    rng = np.random.default_rng(k)
    height, width = SIZES[k]
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    trimap = rng.integers(1, 4, (height, width, 1), dtype=np.uint8)  # oxford_iiit_pet style: 1 pet, 2 bg, 3 border
    return image, trimap


class TinyPets(tfds.core.GeneratorBasedBuilder):
    """Three images with trimap masks, laid out like `oxford_iiit_pet`."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
                "file_name": tfds.features.Text(),
            })
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples([0, 1]), "test": self._generate_examples([2])}

    def _generate_examples(self, indices):
        for k in indices:
            image, mask = _example(k)
            yield k, {"image": image, "segmentation_mask": mask, "file_name": f"pet_{k}.png"}


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
    builder = TinyPets(data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare()
    return builder


def test_tfds_prepare_roundtrip_with_pet_preset(tiny_builder, tmp_path):
    info = prepare(tiny_builder, tmp_path / "out", preset="oxford_iiit_pet", splits=["train", "test"], num_shards=2,
                   progress=False)
    assert info["class_names"] == ["background", "pet"] and info["splits"] == {"train": 2, "test": 1}
    assert info == load_dataset_info(tmp_path / "out")
    got = {}
    for split in ("train", "test"):
        for images, labels, ids in eval_dataset(tmp_path / "out", split, with_ids=True):
            got[ids.numpy()[0].decode()] = (images.numpy()[0], labels.numpy()[0])
    assert sorted(got) == ["pet_0.png", "pet_1.png", "pet_2.png"]
    for k in range(3):
        image, trimap = _example(k)
        expected = np.choose(trimap[..., 0] - 1, [1, 0, 255])  # 1 pet -> 1, 2 background -> 0, 3 border -> 255
        np.testing.assert_array_equal(got[f"pet_{k}.png"][0], image)  # stored losslessly
        np.testing.assert_array_equal(got[f"pet_{k}.png"][1], expected)


def test_tfds_raw_labels_outside_classes_are_rejected(tiny_builder, tmp_path):
    with pytest.raises(DataError, match=r"tfds:tiny_pets\[train\] example 0: label values \[3\]"):
        prepare(tiny_builder, tmp_path / "out", format="tfds", splits=["train"], num_classes=3, progress=False)


def test_unprepared_tfds_dataset_is_not_downloaded(tmp_path):
    with pytest.raises(DataError, match="not prepared"):
        tfds_builder(TinyPets(data_dir=str(tmp_path)))
    assert prepare_module.main(["--format", "tfds", "tiny_pets", str(tmp_path / "out"), "--tfds-data-dir",
                                str(tmp_path), "--num-classes", "2", "--splits", "train", "--no-progress"]) == 1


# ------------------------------------------------------------------------------------------------ VOC builder

VOC_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "voc"
VOC_SPLITS = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000129"]}


def _make_voc_manual_dir(root, as_tar):
    """manual_dir with VOCtrainval_11-May-2012.tar (or an extracted VOCdevkit/) made of the fixture masks, the real
    JPEG and synthetic JPEGs of the other masks' sizes, plus SBD-style train_aug.txt and SegmentationClassAug/."""
    voc = root / "extracted" / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for example_id in VOC_SPLITS["train"] + VOC_SPLITS["val"]:
        mask = VOC_FIXTURES / "SegmentationClass" / f"{example_id}.png"
        shutil.copy(mask, voc / "SegmentationClass")
        real = VOC_FIXTURES / "JPEGImages" / f"{example_id}.jpg"
        if real.exists():
            shutil.copy(real, voc / "JPEGImages")
        else:
            height, width = np.array(Image.open(mask)).shape
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
                voc / "JPEGImages" / f"{example_id}.jpg")
    for split, ids in VOC_SPLITS.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    manual = root / "manual"
    manual.mkdir()
    if as_tar:
        with tarfile.open(manual / ARCHIVE_NAME, "w") as archive:
            archive.add(root / "extracted" / "VOCdevkit", arcname="VOCdevkit")
    else:
        shutil.copytree(root / "extracted" / "VOCdevkit", manual / "VOCdevkit")
    shutil.copytree(voc / "SegmentationClass", manual / "SegmentationClassAug")
    (manual / "train_aug.txt").write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n")
    return manual, voc


@pytest.mark.parametrize("as_tar", [True, False], ids=["tar", "folder"])
def test_voc_segmentation_builder_reads_index_masks(tmp_path, as_tar):
    manual, voc = _make_voc_manual_dir(tmp_path, as_tar)
    builder = VocSegmentation(data_dir=str(tmp_path / "tfds"))
    info = prepare(builder, tmp_path / "out", preset="voc_segmentation", splits=["train", "val", "train_aug"],
                   num_shards=1, manual_dir=str(manual), progress=False)
    assert info["splits"] == {"train": 2, "val": 2, "train_aug": 1} and info["num_classes"] == 21
    for split, ids in {**VOC_SPLITS, "train_aug": ["2007_000032"]}.items():
        got = {i.numpy()[0].decode(): (x.numpy()[0], y.numpy()[0])
               for x, y, i in eval_dataset(tmp_path / "out", split, with_ids=True)}
        assert sorted(got) == sorted(ids)
        for example_id, (image, label) in got.items():
            np.testing.assert_array_equal(label, np.array(Image.open(voc / "SegmentationClass" / f"{example_id}.png")))
            np.testing.assert_array_equal(image, np.array(Image.open(voc / "JPEGImages" / f"{example_id}.jpg")))


def test_voc_segmentation_builder_explains_manual_download(tmp_path):
    assert ARCHIVE_NAME in VocSegmentation.MANUAL_DOWNLOAD_INSTRUCTIONS
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(DataError, match=ARCHIVE_NAME):  # empty: TFDS shows the instructions
        tfds_builder(VocSegmentation(data_dir=str(tmp_path / "tfds")), manual_dir=str(manual))
    (manual / "notes.txt").write_text("not the archive")
    with pytest.raises(DataError, match=f"{manual}: neither {ARCHIVE_NAME}"):
        tfds_builder(VocSegmentation(data_dir=str(tmp_path / "tfds")), manual_dir=str(manual))


def test_unknown_tfds_split_or_feature_is_named(tiny_builder, tmp_path):
    with pytest.raises(DataError, match="no split 'validation'"):
        prepare(tiny_builder, tmp_path / "out", preset="oxford_iiit_pet", splits=["validation"], progress=False)
    with pytest.raises(DataError, match="no feature 'annotation'"):
        prepare(tiny_builder, tmp_path / "out", preset="oxford_iiit_pet", splits=["train"], label_key="annotation",
                progress=False)
