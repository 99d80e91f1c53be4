"""The model classes a training config names with `model.architecture`, imported by dotted path when first asked
for (so the registry loads while a model's module is missing or being written)."""
import importlib
import inspect

DEFAULT_ARCHITECTURE = "deeplabv3"
ARCHITECTURES = {
    "deeplabv3": "keras_deeplab.model.DeepLabV3",
    "deeplabv3_plus": "keras_deeplab.deeplabv3_plus.DeepLabV3Plus",
    "deeplabv3_cascade": "keras_deeplab.cascade.DeepLabV3Cascade",
}
# Keyword arguments a config does not set: training crops and whole validation images need a model of any input
# size, and the model's name is its class's. num_classes (not keyword-only) comes from the dataset.
NOT_CONFIGURED = ("input_shape", "name")


class MissingArchitectureError(ImportError):
    """The module of a registered architecture does not exist."""


def get_architecture(name):
    """The model class of architecture `name`; ValueError for an unknown name, MissingArchitectureError naming
    the module when it does not exist."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model.architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    module_name, _, class_name = ARCHITECTURES[name].rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise MissingArchitectureError(f"model.architecture {name!r} needs {class_name} from the module "
                                       f"{module_name}, which does not exist") from err
    return getattr(module, class_name)


def architecture_defaults(name):
    """The keyword-only arguments of architecture `name`'s class with their defaults (tuples as lists, as YAML
    writes them), but for NOT_CONFIGURED."""
    parameters = inspect.signature(get_architecture(name).__init__).parameters.values()
    return {p.name: list(p.default) if isinstance(p.default, tuple) else p.default for p in parameters
            if p.kind is p.KEYWORD_ONLY and p.name not in NOT_CONFIGURED}


def import_available():
    """Imports the modules of the architectures that exist, registering their classes for `load_model`."""
    for name in ARCHITECTURES:
        try:
            get_architecture(name)
        except MissingArchitectureError:
            pass


def main_output(outputs):
    """The segmentation logits of a model's outputs: the tensor itself, or a dict output's "out"."""
    return outputs["out"] if isinstance(outputs, dict) else outputs
