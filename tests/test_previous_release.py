"""Files saved by an earlier release (tests/fixtures/previous_release, see its README) load with the current code
and compute what they computed then."""
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_deeplab

FIXTURES = Path(__file__).parent / "fixtures" / "previous_release"
IMAGES = np.load(FIXTURES / "images.npy")


@pytest.mark.parametrize("name", ["small", "small_folded", "deeplabv3_mobilenet_v2"])
def test_saved_keras_model_loads_and_computes_the_stored_logits(name):
    model = keras.models.load_model(FIXTURES / f"{name}.keras")
    assert isinstance(model, keras_deeplab.DeepLabV3) == name.startswith("deeplabv3")
    logits = model(IMAGES.astype("float32"), training=False)
    expected = np.load(FIXTURES / f"{name}_logits.npy")
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_saved_model_serves_the_stored_labels():
    """The export (BatchNorm folded, TF Serving signatures) serves the unfolded model's probabilities and labels,
    from pixels and from PNG bytes; labels are compared where the top two classes are not a near tie."""
    served = tf.saved_model.load(str(FIXTURES / "small_saved_model" / "1"))
    expected = tf.nn.softmax(np.load(FIXTURES / "small_logits.npy")).numpy()
    outputs = served.signatures["predict_images"](images=tf.constant(IMAGES))
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    top_two = np.sort(expected, axis=-1)[..., -2:]
    clear = top_two[..., 1] - top_two[..., 0] > 1e-4
    assert clear.mean() > 0.99
    labels = expected.argmax(axis=-1)
    np.testing.assert_array_equal(np.asarray(outputs["labels"])[clear], labels[clear])
    png = tf.stack([tf.io.encode_png(image) for image in IMAGES])
    from_bytes = served.signatures["serving_default"](image_bytes=png)
    np.testing.assert_array_equal(np.asarray(from_bytes["labels"])[clear], labels[clear])
    np.testing.assert_array_equal(from_bytes["image_size"], [IMAGES.shape[1:3]] * len(IMAGES))
