"""A client for TensorFlow Serving's REST API, for DeepLabV3 exports; works against TF Serving and `deeplab serve`.

Needs only httpx, numpy and Pillow (to encode arrays, `keras_deeplab.serving.images`); no TensorFlow.

    client = TFServingClient("http://localhost:8501", "deeplabv3")
    label_maps = client.predict(["street.jpg", image_array])  # one int32 [H, W] array per image
"""
import base64
import os

import httpx
import numpy as np

from keras_deeplab.serving.contract import IMAGE_SIZE, LABELS, SERVING_SIGNATURE
from keras_deeplab.serving.images import encode_image


class TFServingError(Exception):
    """A request the server refused or could not answer: `message` is the server's error text, `status_code`
    the HTTP status (None if the server could not be reached)."""

    def __init__(self, message, status_code=None, url=None):
        self.message = message
        self.status_code = status_code
        self.url = url
        where = f" from {url}" if url else ""
        super().__init__(f"HTTP {status_code}{where}: {message}" if status_code else f"{url}: {message}")


def _image_list(images):
    """A list of images from one image or a sequence of them ([N, H, W, 3] arrays are N images)."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if type(images).__module__.startswith("PIL."):
        return [images]
    return list(images)


class TFServingClient:
    """TF Serving REST client for one model.

    Args:
        url: the server's REST address, e.g. "http://localhost:8501".
        model_name: the served model's name.
        version: a version number to pin, or None for the server's newest.
        timeout: seconds to wait for one reply.
        batch_size: images per predict request (`predict` splits longer lists).
    """

    def __init__(self, url="http://localhost:8501", model_name="deeplabv3", *, version=None, timeout=60.0,
                 batch_size=8):
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.batch_size = int(batch_size)
        self._http = httpx.Client(timeout=timeout)

    @property
    def model_url(self):
        url = f"{self.url}/v1/models/{self.model_name}"
        return url if self.version is None else f"{url}/versions/{int(self.version)}"

    def predict(self, images, signature_name=SERVING_SIGNATURE):
        """Label maps (int32 [H, W], each at its image's size) for one image or a list of images (paths, encoded
        bytes, PIL images or uint8 arrays), using the export's `image_bytes` signature."""
        label_maps = []
        images = _image_list(images)
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            instances = [{"b64": base64.b64encode(encode_image(image)).decode("ascii")} for image in batch]
            reply = self.predict_request(instances=instances, signature_name=signature_name)
            for prediction in reply["predictions"]:
                height, width = prediction[IMAGE_SIZE]
                label_maps.append(np.asarray(prediction[LABELS], dtype=np.int32)[:height, :width])
        return label_maps

    def predict_request(self, *, instances=None, inputs=None, signature_name=None):
        """Sends a raw predict request (row `instances` or columnar `inputs`) and returns the decoded JSON reply."""
        if (instances is None) == (inputs is None):
            raise ValueError("give exactly one of instances and inputs")
        body = {"instances": instances} if instances is not None else {"inputs": inputs}
        if signature_name is not None:
            body["signature_name"] = signature_name
        return self._request("POST", f"{self.model_url}:predict", json=body)

    def status(self):
        """The model's version status (`{"model_version_status": [...]}`)."""
        return self._request("GET", self.model_url)

    def metadata(self):
        """The model spec and SignatureDefs (`{"model_spec": ..., "metadata": {"signature_def": ...}}`)."""
        return self._request("GET", f"{self.model_url}/metadata")

    def _request(self, method, url, **kwargs):
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            raise TFServingError(f"cannot reach the server: {type(error).__name__}: {error}", url=url) from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code != 200:
            message = document.get("error") if isinstance(document, dict) else None
            raise TFServingError(message or response.text or response.reason_phrase, response.status_code, url)
        if document is None:
            raise TFServingError(f"the reply is not JSON: {response.text[:200]!r}", response.status_code, url)
        return document

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
