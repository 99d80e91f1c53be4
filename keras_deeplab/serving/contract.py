"""The serving contract of a DeepLabV3 export, shared by the export, `deeplab serve`, the client and `deeplab predict`.

- Signatures: `serving_default` (encoded images in; label maps padded with `PAD_LABEL`, their PNGs and sizes out)
  and `predict_images` (uint8 pixels in; labels and softmax probabilities out): names, tensor names, dtypes,
  shapes and TF Serving's predict method name.
- Files of a version folder beside the SavedModel: the warmup records and the export's info file.
- The model folder, as TF Serving's file system poller reads it: numeric version folders (`version_folders`), each
  appearing whole (`atomic_path`, also used for any file a server reads while it runs, such as models.config).

It imports only the standard library: no TensorFlow, Keras or image library.
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

SERVING_SIGNATURE = "serving_default"  # also TF Serving's default signature name
IMAGES_SIGNATURE = "predict_images"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"

# Tensor names: the SignatureDefs' input and output keys.
IMAGE_BYTES = "image_bytes"
LABELS = "labels"
LABEL_PNG_BYTES = "label_png_bytes"
IMAGE_SIZE = "image_size"
IMAGES = "images"
PROBABILITIES = "probabilities"

# The label of the pixels past an image's own size in `labels` (each image is padded to the largest of a batch):
# the datasets' ignore label (`viz.IGNORE_LABEL`), which pictures leave uncoloured. Written out here because
# serving/ stands alone (it needs only the SavedModel); tests/test_serving.py checks the two agree.
PAD_LABEL = 255

# signature -> (inputs, outputs), each {tensor name: DataType name}: what every export provides.
EXPECTED_SIGNATURES = {
    SERVING_SIGNATURE: ({IMAGE_BYTES: "DT_STRING"},
                        {LABELS: "DT_INT32", LABEL_PNG_BYTES: "DT_STRING", IMAGE_SIZE: "DT_INT32"}),
    IMAGES_SIGNATURE: ({IMAGES: "DT_UINT8"}, {LABELS: "DT_INT32", PROBABILITIES: "DT_FLOAT"}),
}
# The same, {tensor name: shape}: -1 is a free dimension, NUM_CLASSES_DIM the model's number of classes.
NUM_CLASSES_DIM = "num_classes"
EXPECTED_SHAPES = {
    SERVING_SIGNATURE: ({IMAGE_BYTES: (-1,)},
                        {LABELS: (-1, -1, -1), LABEL_PNG_BYTES: (-1,), IMAGE_SIZE: (-1, 2)}),
    IMAGES_SIGNATURE: ({IMAGES: (-1, -1, -1, 3)},
                       {LABELS: (-1, -1, -1), PROBABILITIES: (-1, -1, -1, NUM_CLASSES_DIM)}),
}

# Files of a version folder, beside saved_model.pb.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
EXPORT_INFO_FILE = os.path.join("assets.extra", "keras_deeplab_export.json")


def version_folders(base_path):
    """{version: Path} of the numeric folders under a model's base path, the versions TF Serving sees (other names,
    such as the hidden staging folders of `atomic_path`, are not versions); {} if it cannot be listed."""
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return {}
    return {int(entry.name): Path(entry.path) for entry in entries
            if entry.name.isascii() and entry.name.isdigit() and entry.is_dir()}


@contextlib.contextmanager
def atomic_path(path, *, folder=False, overwrite=True):
    """Yields a hidden temporary path beside `path` to write: a file, or with `folder=True` a created folder.

    When the block succeeds it is renamed to `path`, else removed: a reader polling the folder (TF Serving,
    `deeplab serve`) sees all of it or nothing, and a failure leaves nothing behind. An existing `path` is
    replaced, or with `overwrite=False` kept (FileExistsError). A folder is replaced by two renames: a reader
    polling in between may briefly miss it; a new one never appears half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.partial-"
    if folder:
        temp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(handle)
        temp = Path(name)
    # mkdtemp and mkstemp make it private, which would hide it from a server running as another user.
    temp.chmod((0o777 if folder else 0o666) & ~_umask())
    try:
        yield temp
        _move_into_place(temp, path, overwrite)
    except BaseException:
        if folder:
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
        raise


def _move_into_place(temp, path, overwrite):
    replaced = None
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} appeared while it was being written; not overwriting it")
        if path.is_dir():  # a rename cannot replace a folder that holds files: move the old one aside first
            replaced = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            os.rename(path, replaced)
    try:
        os.replace(temp, path)
    except OSError as error:
        if replaced is not None:
            os.rename(replaced, path)
        raise FileExistsError(f"could not move {temp.name} to {path}: {error}") from None
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
