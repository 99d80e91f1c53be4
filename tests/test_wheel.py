"""The package as a user installs it: built from this checkout (source distribution, then the wheel from it),
installed into a folder of its own and run from a folder outside the checkout.

Installing TensorFlow into a fresh environment would take minutes, so the installed folder is put on PYTHONPATH
of this environment's interpreter: the dependencies are this environment's, keras_deeplab is the wheel's.
Further checks of the installed package take the `installed` fixture and use `installed.run(...)`.
"""
import dataclasses
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from helpers.serving_models import CAMVID_FILES, camvid_pixels
from helpers.torch_format import write_pth
from helpers.torchvision_state import KEYS_MOBILENET_V3, MOBILENET_V3_BN_WEIGHT_SHIFT
from helpers.torchvision_state import deterministic_state, torchvision_keys
from keras_deeplab.training.train import load_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIGS = sorted(path.name for path in (REPO / "training" / "configs").glob("*.yaml"))


@dataclasses.dataclass
class Installed:
    """keras_deeplab installed from its wheel into `site`; `sdist` is the source distribution it was built from."""
    sdist: Path
    site: Path
    env: dict
    cwd: Path

    def run(self, *args, timeout=300):
        """`python ARGS` run in `cwd` (outside the checkout) with the installed package (a CompletedProcess with
        its text output)."""
        return subprocess.run([sys.executable, *args], env=self.env, cwd=self.cwd, capture_output=True, text=True,
                              timeout=timeout)


def checked(command, **kwargs):
    """Runs a build or install step; its output in the failure message."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Builds the source distribution from the checkout and the wheel from it (in pip's own build folder, so
    nothing stale in the checkout's build/ can slip in), and installs the wheel with pip --target."""
    root = tmp_path_factory.mktemp("wheel")
    dist, site, cwd = root / "dist", root / "site", root / "elsewhere"
    cwd.mkdir()
    build_sdist = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    sdist = dist / checked([sys.executable, "-c", build_sdist, str(dist)], cwd=REPO).stdout.split()[-1]
    checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(sdist)])
    (wheel,) = dist.glob("keras_deeplab-*.whl")
    checked([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)])
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(site)
    return Installed(sdist=sdist, site=site, env=env, cwd=cwd)


def test_the_source_distribution_carries_the_configs(installed):
    with tarfile.open(installed.sdist) as archive:
        names = {Path(name).relative_to(Path(name).parts[0]).as_posix() for name in archive.getnames()}
    assert {f"training/configs/{name}" for name in SHIPPED_CONFIGS} <= names


def test_the_wheel_holds_every_module_and_the_package_data(installed):
    result = installed.run("-c", "import keras_deeplab; print(keras_deeplab.__file__)")
    assert result.returncode == 0, result.stderr[-3000:]
    package = installed.site / "keras_deeplab"
    assert Path(result.stdout.strip()) == package / "__init__.py"
    # Every module of the checkout (the package list in pyproject.toml is explicit: a new subpackage must be in it).
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "keras_deeplab").rglob("*.py")}
    assert modules <= {path.relative_to(installed.site).as_posix() for path in package.rglob("*.py")}
    assert sorted(path.name for path in (package / "configs").glob("*.yaml")) == SHIPPED_CONFIGS
    assert (package / "configs" / "__init__.py").is_file()
    shipped_images = {path.name for path in (REPO / "keras_deeplab" / "sample_images").iterdir()}
    assert shipped_images and shipped_images == {path.name for path in (package / "sample_images").iterdir()}
    page_files = {path.name for path in (REPO / "keras_deeplab" / "serving" / "static").iterdir()}
    assert page_files and page_files <= {path.name for path in (package / "serving" / "static").iterdir()}


def test_help_of_the_installed_command_imports_no_tensorflow(installed):
    result = installed.run("-X", "importtime", "-m", "keras_deeplab.cli", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: deeplab"), result.stderr[-3000:]
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "keras_deeplab" in imported and not {"keras", "tensorflow"} & imported


def test_train_finds_a_shipped_config_by_name(installed):
    result = installed.run("-m", "keras_deeplab.cli", "train", "--config", "voc_train_aug", "--steps", "100",
                           "--print-config")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = load_config(REPO / "training" / "configs" / "voc_train_aug.yaml", ["train.steps=100"])
    assert yaml.safe_load(result.stdout) == expected
    result = installed.run("-m", "keras_deeplab.cli", "train", "--config", "no_such_config", "--print-config")
    assert result.returncode == 2
    assert "no_such_config" in result.stderr and "voc_train_aug" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_without_the_sample_data_says_what_it_needs(installed):
    result = installed.run("-m", "keras_deeplab.cli", "demo")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for needed in ("CamVid", "--data PATH", "sample_data/camvid"):
        assert needed in result.stderr, result.stderr


def test_pretrained_models_work_from_the_wheel(installed, tmp_path):
    """`deeplab presets`, `from_preset` and `deeplab predict --preset` with a torchvision-format weight file on disk
    (a MobileNetV3-Large DeepLabV3 written in torch's format), from the installed package."""
    weights = tmp_path / "deeplabv3_mobilenet_v3_large_finetuned.pth"
    keys = torchvision_keys(KEYS_MOBILENET_V3)
    write_pth(weights, deterministic_state(keys, bn_weight_shift=MOBILENET_V3_BN_WEIGHT_SHIFT))
    result = installed.run("-m", "keras_deeplab.cli", "presets")
    assert result.returncode == 0 and "deeplabv3_resnet101_coco_voc" in result.stdout, result.stderr[-3000:]
    script = ("import sys, keras_deeplab; m = keras_deeplab.DeepLabV3.from_preset(sys.argv[1], num_classes=3); "
              "print(keras_deeplab.__file__, m.backbone, m.num_classes)")
    result = installed.run("-c", script, str(weights))
    assert result.returncode == 0, result.stderr[-3000:]
    package = installed.site / "keras_deeplab"
    assert result.stdout.split() == [str(package / "__init__.py"), "mobilenet_v3_large", "3"]
    image = tmp_path / "photo.png"
    Image.fromarray(camvid_pixels(CAMVID_FILES[0], (97, 65))).save(image)
    result = installed.run("-m", "keras_deeplab.cli", "predict", str(image), "--preset", str(weights),
                           "--colormap", "pascal", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "out" / "photo_labels.png").size == (97, 65)
