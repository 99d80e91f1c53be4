"""Fixtures shared by the test modules."""
import pytest

from helpers.training_data import write_synthetic_dataset


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """A small prepared dataset (TFRecords + dataset_info.json) of synthetic images, one per test module."""
    path = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(path)
    return path
