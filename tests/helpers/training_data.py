"""Tiny synthetic segmentation datasets for the training tests, written with the data package's TFRecord
writer.

Each image is a noisy background (class 0) with a red rectangle (class 1) and a blue disc (class 2); the
rectangle's outline is labelled 255 (ignored), like VOC's object borders. Colour decides the class, so a
small model learns it in a few dozen steps.
"""
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from keras_deeplab.data.tfrecords import write_tfrecords

CLASS_NAMES = ["background", "rectangle", "disc"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A small, fast model and input size for CPU tests (overrides of the training config).
TINY_CONFIG = {
    "model": {"backbone": "mobilenet_v2", "aspp_filters": 16, "bn_momentum": 0.9},
    "data": {"crop_size": [65, 65], "min_scale": 0.75, "max_scale": 1.25},
    "train": {"batch_size": 4, "steps": 4, "steps_per_epoch": 2, "learning_rate": 0.05, "seed": 1,
              "tensorboard": False},
}


def synthetic_example(rng, height, width):
    """(uint8 image [H, W, 3], uint8 label [H, W]) with the three classes and an ignored outline."""
    image = rng.integers(60, 120, size=(height, width, 3)).astype(np.uint8)
    label = np.zeros((height, width), np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    bottom, right = top + rng.integers(height // 4, height // 2), left + rng.integers(width // 4, width // 2)
    label[top:bottom, left:right] = 255
    label[top + 1:bottom - 1, left + 1:right - 1] = 1
    rows, cols = np.mgrid[:height, :width]
    cy, cx, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(height // 8, height // 3)
    label[(rows - cy) ** 2 + (cols - cx) ** 2 < radius ** 2] = 2
    image[label == 1] = (200, 40, 40)
    image[label == 2] = (40, 40, 200)
    return image, label


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_synthetic_dataset(out_dir, splits=(("train", 8), ("val", 4)), size=(72, 96), seed=0):
    """Writes a prepared dataset (TFRecords + dataset_info.json) to `out_dir`; returns its info."""
    rng = np.random.default_rng(seed)
    info = {"name": "synthetic", "num_classes": len(CLASS_NAMES), "class_names": CLASS_NAMES,
            "ignore_label": 255, "colormap": "pascal", "splits": {}, "mean_rgb": [110.0, 80.0, 100.0]}
    for split, count in splits:
        examples = []
        for index in range(count):
            image, label = synthetic_example(rng, *size)
            examples.append((f"{split}_{index}", _png(image), label))
        write_tfrecords(examples, out_dir, split, 1, info)
    with open(os.path.join(out_dir, "dataset_info.json"), "w") as f:
        json.dump(info, f)
    return info


def config_overrides(config):
    """`--set section.key=value` arguments for a config dict of sections."""
    args = []
    for section, values in config.items():
        for key, value in values.items():
            args += ["--set", f"{section}.{key}={json.dumps(value)}"]
    return args


def train_command(data_dir, model_dir, config=TINY_CONFIG, extra=()):
    """The `deeplab train` command line (as a subprocess argv) for `config` overrides."""
    return [sys.executable, "-m", "keras_deeplab.cli", "train", "--data_dir", str(data_dir), "--model_dir",
            str(model_dir), "--verbose", "2", *config_overrides(config), *extra]


def subprocess_env(**extra):
    """Environment for training subprocesses: quiet TF, no GPU, the repository importable."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    env.update(extra)
    return env


def run(command, timeout=300, **env):
    """Runs a command to completion; returns the CompletedProcess (stdout and stderr as text)."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=subprocess_env(**env),
                          cwd=REPO)
