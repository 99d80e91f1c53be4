"""Serving DeepLabV3 SavedModels over TensorFlow Serving's REST API.

- `TFServingClient` (client.py): predict / status / metadata against TF Serving or `deeplab serve`; needs no TF.
- `deeplab serve` (server.py): a local TF Serving-compatible REST server (Starlette + uvicorn) that loads versions
  the way TF Serving does (TF1 SavedModel loader, Session, signature tensor names) and picks up new ones; gRPC
  on `--port` (grpc_server.py); both through service.py's PredictionService, with request batching across clients
  (batching.py) and Prometheus metrics (metrics.py; text-format configs: text_protos.py); a page at `/` to try
  the models in a browser (page.py, static/).
- contract.py: the export's signatures, tensor names and shapes, label padding, version folders and atomic writes;
  images.py: encoded images (encode, decode, sizes from headers) with Pillow.
- json_tensor.py: TF Serving's JSON <-> tensor rules; model_config.py: models.config files.

This package needs only an exported SavedModel; it never imports the model or training code.

The same folder served by TensorFlow Serving (use a release not older than the TensorFlow that exported it):

    docker run --rm -p 8501:8501 \\
        -v "$PWD/saved_models/deeplabv3:/models/deeplabv3" -e MODEL_NAME=deeplabv3 tensorflow/serving

Several models or pinned versions, with a models.config (see `keras_deeplab.export`, `--models-config`):

    docker run --rm -p 8501:8501 -v "$PWD/saved_models:/models" tensorflow/serving \\
        --model_config_file=/models/models.config

And locally: `deeplab serve --model_name deeplabv3 --model_base_path saved_models/deeplabv3 --rest_api_port 8501`.
"""
from keras_deeplab.serving.client import TFServingClient, TFServingError
from keras_deeplab.serving.images import encode_image

__all__ = ["TFServingClient", "TFServingError", "encode_image"]
