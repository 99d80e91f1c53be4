"""TFDS reader on a tiny local builder (generated in memory: no download, no network)."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_deeplab.data import prepare as prepare_module
from keras_deeplab.data.pipeline import eval_dataset, load_dataset_info
from keras_deeplab.data.prepare import prepare
from keras_deeplab.data.readers import DataError, tfds_builder

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
