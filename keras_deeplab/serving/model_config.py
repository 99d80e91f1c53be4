"""TF Serving's `models.config` (a text-format `ModelServerConfig`): which models to serve, from which base path,
which versions (latest N, all, or specific ones) and version labels. Read by `deeplab serve --model_config_file`
and written by `deeplab export --models-config`; the same file works with `tensorflow_model_server`.
"""
import os
from dataclasses import dataclass, field

from keras_deeplab.serving.contract import atomic_path


@dataclass
class ModelConfig:
    """One served model.

    Args:
        name: the model name in request URLs (`/v1/models/{name}`).
        base_path: the folder holding the numeric version folders (as the server sees it).
        versions: None to serve the newest `latest` versions, "all" for every version, or a list of versions.
        latest: how many of the newest versions to serve when `versions` is None (TF Serving's default is 1).
        version_labels: {label: version}, for `/v1/models/{name}/labels/{label}`.
    """

    name: str
    base_path: str
    versions: object = None
    latest: int = 1
    version_labels: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.name or "/" in self.name or ":" in self.name:
            raise ValueError(f"model name {self.name!r} must be non-empty without '/' or ':'")
        if self.versions not in (None, "all"):
            self.versions = tuple(sorted({int(v) for v in self.versions}))
            if not self.versions or min(self.versions) < 0:
                raise ValueError(f"model {self.name!r}: versions must be non-negative integers, got {self.versions}")
        if int(self.latest) < 1:
            raise ValueError(f"model {self.name!r}: latest must be at least 1, got {self.latest}")
        self.version_labels = {str(k): int(v) for k, v in self.version_labels.items()}

    def select(self, available):
        """The versions to serve among the `available` version numbers."""
        available = sorted(available)
        if self.versions == "all":
            return available
        if self.versions is None:
            return available[-int(self.latest):]
        return [v for v in available if v in self.versions]


def read_models_config(path):
    """The list of ModelConfig in a `models.config` file; ValueError naming the file on a parse error."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a text-format ModelServerConfig: {error}") from None
    if proto.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: expected a model_config_list")
    models = []
    for config in proto.model_config_list.config:
        if config.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {config.name!r} has platform {config.model_platform!r}; "
                             "only 'tensorflow' is served")
        policy = config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        versions, latest = None, 1
        if kind == "all":
            versions = "all"
        elif kind == "specific":
            versions = list(policy.specific.versions)
        elif kind == "latest":
            latest = policy.latest.num_versions or 1
        models.append(ModelConfig(config.name, config.base_path, versions, latest, dict(config.version_labels)))
    return models


def write_models_config(path, models):
    """Writes `models` (ModelConfig objects or dicts of its fields) as a `models.config`, atomically.

    Returns the path. Model names must be unique.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    models = [m if isinstance(m, ModelConfig) else ModelConfig(**m) for m in models]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    proto = model_server_config_pb2.ModelServerConfig()
    for model in models:
        config = proto.model_config_list.config.add(name=model.name, base_path=model.base_path,
                                                    model_platform="tensorflow")
        if model.versions == "all":
            config.model_version_policy.all.SetInParent()
        elif model.versions is not None:
            config.model_version_policy.specific.versions.extend(model.versions)
        elif model.latest != 1:
            config.model_version_policy.latest.num_versions = model.latest
        for label, version in model.version_labels.items():
            config.version_labels[label] = version
    with atomic_path(path) as temp:
        temp.write_text(text_format.MessageToString(proto), encoding="utf-8")
    return os.fspath(path)
