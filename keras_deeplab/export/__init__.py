"""Export a DeepLabV3 model as a versioned SavedModel for TensorFlow Serving (`deeplab export`).

Signatures (built with `keras.export.ExportArchive`, no XLA, JSON-encodable dtypes; float32 compute, or bfloat16
with `precision="bfloat16"` / `--precision bfloat16`, same signatures and dtypes):

- `serving_default`: `image_bytes` (DT_STRING [-1]: JPEG, PNG, GIF, BMP or WebP bytes; REST clients send
  `{"b64": ...}`) -> `labels` (int32 [-1, H, W]: each image's label map at its original size, padded with 255
  (`PAD_LABEL`) to the largest image of the request; with more than 255 classes crop by `image_size`), `label_png_bytes`
  (DT_STRING [-1]: the label map as a PNG, 8-bit, or 16-bit above 256 classes; REST returns it as b64) and
  `image_size` (int32 [-1, 2]: height, width).
  Bytes that are not an image fail with InvalidArgument (HTTP 400 in TF Serving). Every input and output has
  a batch dimension, so TF Serving's `--enable_batching` works (labels are then padded to the largest image
  of the merged batch: crop with `image_size`).
- `predict_images`: `images` (uint8 [-1, -1, -1, 3], one size per request) -> `labels` (int32 [-1, H, W]) and
  `probabilities` (float32 [-1, H, W, num_classes], softmax).

Inference size policy, fixed at export by `max_long_side`:
- None: the model sees every image whole, at its own size.
- M: an image whose long side exceeds M is resized (bilinear, aspect ratio kept, each side rounded to the
  nearest integer, at least 1) so that its long side is M; the logits are resized back (bilinear) to the
  original size before argmax and softmax, so outputs always have the input's size. Smaller images are
  not enlarged.

A version is written atomically: into a hidden staging folder beside the versions (TF Serving ignores
non-numeric names), checked, then renamed to `base_dir/N`; a failed export leaves nothing under `base_dir`.
The checks load the version in a fresh process as TF Serving does (TF1 SavedModel loader, tags `serve`,
a Session run by the SignatureDefs' tensor names), check every signature's names, dtypes, shapes and method
name, and compare its labels with the in-process Keras model on real images (a bfloat16 export's must equal the
float32 model's on at least `min_label_agreement`, 99.5 % of the pixels; the info file records the precision and
the measured agreement): the `check_images` given, else
two small CamVid frames shipped with the package (`keras_deeplab/sample_images/`, a 160x120 JPEG and a 96x128
PNG; non-commercial licence, see SOURCE.md there).

Serve the folder with TensorFlow Serving (use a release not older than the TensorFlow that exported it):

    docker run --rm -p 8501:8501 -v "$PWD/saved_models/deeplabv3:/models/deeplabv3" \\
        -e MODEL_NAME=deeplabv3 tensorflow/serving

or locally, with the same REST API: `deeplab serve --model_name deeplabv3 --model_base_path saved_models/deeplabv3`.

Modules: signatures.py (the computation and its ExportArchive), warmup.py (check images, warmup records),
publish.py (`export_saved_model`), precision.py (the bfloat16 copy), checks.py (`check_export`,
`verify_saved_model`), cli.py (`deeplab export`, also `python -m keras_deeplab.export`), preset.py (`--preset`,
shared with `deeplab predict`). The names, shapes and files of the contract live in `keras_deeplab.serving.contract`.
"""
from keras_deeplab.export.checks import (ExportCheckError, check_export, find_xla_ops, reference_labels,
                                         verify_saved_model)
from keras_deeplab.export.cli import main
from keras_deeplab.export.precision import DEFAULT_MIN_LABEL_AGREEMENT, PRECISIONS, label_agreement, with_precision
from keras_deeplab.export.publish import export_saved_model, next_version
from keras_deeplab.export.signatures import build_export_archive, inference_size, logits_at_input_size, model_logits
from keras_deeplab.export.warmup import (SAMPLE_IMAGES, SAMPLE_IMAGES_FOLDER, default_check_images, encoded_image,
                                         sample_images, synthetic_images, write_warmup_requests)
from keras_deeplab.serving.contract import (EXPECTED_SHAPES, EXPECTED_SIGNATURES, EXPORT_INFO_FILE, IMAGES_SIGNATURE,
                                            PAD_LABEL, SERVING_SIGNATURE, WARMUP_FILE)

__all__ = ["DEFAULT_MIN_LABEL_AGREEMENT", "EXPECTED_SHAPES", "EXPECTED_SIGNATURES", "EXPORT_INFO_FILE",
           "ExportCheckError", "IMAGES_SIGNATURE", "PAD_LABEL", "PRECISIONS", "SAMPLE_IMAGES", "SAMPLE_IMAGES_FOLDER",
           "SERVING_SIGNATURE", "WARMUP_FILE", "build_export_archive", "check_export", "default_check_images",
           "encoded_image", "export_saved_model", "find_xla_ops", "inference_size", "label_agreement",
           "logits_at_input_size", "main", "model_logits", "next_version", "reference_labels", "sample_images",
           "synthetic_images", "verify_saved_model", "with_precision", "write_warmup_requests"]
