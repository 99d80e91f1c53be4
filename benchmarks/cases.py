"""Benchmark cases, constructed inside worker processes (see harness.py): each factory returns an object whose
`run()` is one measured iteration.

The peer is torchvision's deeplabv3_resnet50/101 (weights=None, no aux head, seeded initialisation); "ours" is
the same network in keras_deeplab, built with torchvision's configuration and loaded with the peer's very
weights (an .npz written by the torch worker), so both sides compute the same function on the same pixels.
presets.py times a preset's architecture (randomly initialised) against torchvision's builder of the same name,
deeplabv3_mobilenet_v3_large included.
"""
import os
import time

import numpy as np

# "cpu" or "gpu", set by the driver (harness.use_device) for every worker
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
NUM_CLASSES = 21
IGNORE_LABEL = 255
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def image_shape(size):
    """(H, W) of a `size`: a side (square) or an (H, W) pair."""
    return (size, size) if isinstance(size, int) else tuple(size)


def random_images(batch, size, seed=0):
    """float32 RGB images [N, H, W, 3] in [0, 255]; `size` a side or (H, W)."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, *image_shape(size), 3)).astype(np.float32)


def random_labels(batch, size, seed=1):
    """int32 label maps [N, H, W] in [0, NUM_CLASSES) with about 5 % ignored (255) pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, (batch, size, size)).astype(np.int32)
    labels[rng.random((batch, size, size)) < 0.05] = IGNORE_LABEL
    return labels


# ----------------------------------------------------------------------------------------------------------
# torchvision

def _torch(threads=None):
    import torch

    threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if DEVICE == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("--device gpu, but torch sees no CUDA GPU")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # TF autotunes its cuDNN convolutions by default too
    return torch


def _torch_device():
    return "cuda" if DEVICE == "gpu" else "cpu"


def _synchronize_torch(torch):
    """Waits for the GPU's queued work, so that a run's time includes it."""
    if DEVICE == "gpu":
        torch.cuda.synchronize()


TORCHVISION_BACKBONES = ("resnet50", "resnet101", "mobilenet_v3_large")  # torchvision's deeplabv3_<backbone>


def torchvision_model(backbone="resnet50", seed=0, output_stride=8):
    """torchvision's deeplabv3_<backbone> (resnet50, resnet101, mobilenet_v3_large) with weights=None, 21
    classes, no aux head, seeded init. `output_stride` 16 (ResNets): torchvision's classes wired as ours at OS16,
    only the last stage dilated and the ASPP rates halved (6, 12, 18); the state dict is the same."""
    torch = _torch()
    from torchvision.models import resnet, segmentation

    if backbone not in TORCHVISION_BACKBONES:
        raise ValueError(f"no torchvision DeepLabV3 for backbone {backbone!r}; expected one of {TORCHVISION_BACKBONES}")
    torch.manual_seed(seed)
    if output_stride == 8:
        factory = getattr(segmentation, f"deeplabv3_{backbone}")
        return factory(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)
    if output_stride != 16 or not backbone.startswith("resnet"):
        raise ValueError(f"torchvision's {backbone} here has output stride 8 or (ResNets) 16, not {output_stride}")
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

    body = getattr(resnet, backbone)(weights=None, replace_stride_with_dilation=[False, False, True])
    return DeepLabV3(IntermediateLayerGetter(body, {"layer4": "out"}), DeepLabHead(2048, NUM_CLASSES, (6, 12, 18)))


def torchvision_on_device(backbone, seed, training, channels_last, output_stride=8):
    """(torch, device, `torchvision_model` in training or eval mode on the measured device, channels-last if
    asked)."""
    torch = _torch()
    device = _torch_device()
    model = torchvision_model(backbone, seed, output_stride).train(training).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch, device, model


def save_state(model, path):
    """Writes a torch model's state dict to `path` (.npz) for the Keras side."""
    np.savez(path, **{key: value.detach().cpu().numpy() for key, value in model.state_dict().items()})
    return path


class TorchInference:
    """Eval-mode forward of torchvision's DeepLabV3 on [0, 255] RGB images (normalisation included, as our
    model does it inside), under `torch.inference_mode`."""

    def __init__(self, backbone="resnet50", batch=1, size=513, channels_last=False, seed=0, output_stride=8):
        torch, device, self.model = torchvision_on_device(backbone, seed, False, channels_last, output_stride)
        self.torch = torch
        self.channels_last = channels_last
        self.pixels = torch.from_numpy(random_images(batch, size)).permute(0, 3, 1, 2).contiguous().to(device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        import platform

        import torchvision

        self.meta = {"framework": "torch", "channels_last": channels_last, "device": device,
                     "parameters": sum(p.numel() for p in self.model.parameters()),
                     # the worker's own, which may be another interpreter than the driver's (harness.Worker)
                     # (str: torch's version is a str subclass of torch's, which the driver may not import)
                     "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                                  "torchvision": str(torchvision.__version__), "numpy": np.__version__}}

    def save_state(self, path):
        return save_state(self.model, path)

    def _forward(self):
        with self.torch.inference_mode():
            x = (self.pixels - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=self.torch.channels_last)
            return self.model(x)["out"]

    def run(self):
        self._forward()
        _synchronize_torch(self.torch)

    def output(self):
        """Logits NHWC as numpy (for the equality check)."""
        return self._forward().permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def count_macs(self):
        """Multiply-accumulates of one forward pass, counted with hooks on every Conv2d and Linear."""
        torch = self.torch
        total = [0]

        def hook(module, inputs, output):
            if isinstance(module, torch.nn.Conv2d):
                kh, kw = module.kernel_size
                total[0] += output.numel() * kh * kw * module.in_channels // module.groups
            else:
                total[0] += output.numel() * module.in_features

        handles = [m.register_forward_hook(hook) for m in self.model.modules()
                   if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        self._forward()
        for handle in handles:
            handle.remove()
        return total[0]


class TorchTrainStep:
    """One SGD step of torchvision's DeepLabV3 (train mode, BN in batch statistics) with cross-entropy ignoring
    255, momentum 0.9 and weight decay 1e-4: the paper's loss and optimizer as a torch user writes them."""

    def __init__(self, backbone="resnet50", batch=2, size=321, channels_last=False, seed=0, output_stride=8):
        torch, device, self.model = torchvision_on_device(backbone, seed, True, channels_last, output_stride)
        self.torch = torch
        pixels = torch.from_numpy(random_images(batch, size)).permute(0, 3, 1, 2)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.images = ((pixels - mean) / std).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format).to(device)
        self.labels = torch.from_numpy(random_labels(batch, size)).long().to(device)
        self.loss = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_LABEL)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.007, momentum=0.9, weight_decay=1e-4)
        self.meta = {"framework": "torch", "channels_last": channels_last, "device": device}

    def save_state(self, path):
        return save_state(self.model, path)

    def run(self):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model(self.images)["out"], self.labels)
        loss.backward()
        self.optimizer.step()
        _synchronize_torch(self.torch)


# ----------------------------------------------------------------------------------------------------------
# matmul peak

class MatmulPeak:
    """A large fp32 matmul (n x n times n x n) in TF, torch or NumPy (its BLAS): the achievable FMA throughput
    of this CPU."""

    def __init__(self, framework="tensorflow", n=3072):
        self.framework = framework
        self.n = n
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        self._synchronize = lambda: None
        if framework == "torch":
            torch = _torch()
            self.a, self.b = (torch.from_numpy(m).to(_torch_device()) for m in (a, b))
            self._matmul = torch.matmul
            self._synchronize = lambda: _synchronize_torch(torch)
        elif framework == "numpy":
            self.a, self.b = a, b
            self._matmul = np.matmul
        else:
            tf = _tf()
            self.a, self.b = tf.constant(a), tf.constant(b)
            self._matmul = tf.function(tf.matmul)
            self._synchronize = lambda: _synchronize_tf(tf)
        self.run()
        self.meta = {"framework": framework, "n": n, "flop": 2 * n ** 3}

    def run(self):
        self._matmul(self.a, self.b)
        self._synchronize()


# ----------------------------------------------------------------------------------------------------------
# keras_deeplab

def _tf():
    import tensorflow as tf

    threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        # BENCH_TF_INTER_OP_THREADS: how many ops may run at once (each on up to `threads` threads)
        tf.config.threading.set_inter_op_parallelism_threads(int(os.environ.get("BENCH_TF_INTER_OP_THREADS",
                                                                                threads)))
    if DEVICE == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("--device gpu, but TensorFlow sees no GPU")
        tf.config.experimental.enable_tensor_float_32_execution(False)
    return tf


def _synchronize_tf(tf):
    """Waits for the GPU's queued work, so that a run's time includes it."""
    if DEVICE == "gpu":
        tf.test.experimental.sync_devices()


def _library_switches(winograd):
    """For this worker process (the settings are read when the model is traced): `winograd` False keeps
    `layers.AtrousConv2D`'s "auto" on the direct forms in inference too."""
    from keras_deeplab.layers import convolution

    if not winograd:
        convolution.WINOGRAD_MAX_RATE = 0


def torchvision_structure_model(state_path, atrous_implementation="auto", output_stride=8, atrous_variant=None,
                                keras_bn=False, winograd=True):
    """Our DeepLabV3 in torchvision's configuration carrying the state dict at `state_path` (.npz). With the
    default arguments this is exactly `keras_deeplab.convert.from_torchvision(state_path)`.
    `atrous_variant`: a prototype AtrousConv2D from atrous_variants.py, or None for the library's;
    `keras_bn`: BatchNorm through Keras' unfused training ops, as before the library's fused one (keras_bn.py);
    `winograd=False`: the 3x3 convolutions in their direct forms, as before Winograd in `layers.AtrousConv2D`."""
    _tf()
    from atrous_variants import patched
    from keras_bn import use_keras_batch_norm
    from keras_deeplab.convert import (TORCHVISION_CONFIG, _resnet_depth, assign_torchvision_weights,
                                       load_state_dict)
    from keras_deeplab.model import DeepLabV3

    state = load_state_dict(state_path)
    config = dict(TORCHVISION_CONFIG, output_stride=output_stride)
    if output_stride != 8:
        config["atrous_rates"] = tuple(r * 8 // output_stride for r in config["atrous_rates"])
    if keras_bn:
        use_keras_batch_norm()
    _library_switches(winograd)
    with patched(atrous_variant):
        model = DeepLabV3(num_classes=NUM_CLASSES, backbone=f"resnet{_resnet_depth(state)}_v1.5",
                          preprocessing="torch", atrous_implementation=atrous_implementation, **config)
    assign_torchvision_weights(model, state)
    return model


def paper_model(backbone="resnet101", output_stride=16, atrous_implementation="auto", atrous_variant=None,
                keras_bn=False, winograd=True, last_block=None, decoder=False):
    """The paper's model (ResNet v1 layout, MG (1, 2, 4), ASPP (6, 12, 18) at OS16) or MobileNetV2 DeepLabV3,
    randomly initialised (seeded); with `last_block`, its cascaded model (`DeepLabV3Cascade`, MG (1, 1, 1)) up to
    that block; with `decoder`, DeepLabv3+ (`DeepLabV3Plus`); `atrous_variant`, `keras_bn` and
    `winograd` as for `torchvision_structure_model`."""
    _tf()
    import keras

    from atrous_variants import patched
    from keras_bn import use_keras_batch_norm
    from keras_deeplab.cascade import DeepLabV3Cascade
    from keras_deeplab.deeplabv3_plus import DeepLabV3Plus
    from keras_deeplab.model import DeepLabV3

    keras.utils.set_random_seed(0)
    if keras_bn:
        use_keras_batch_norm()
    _library_switches(winograd)
    with patched(atrous_variant):
        if last_block is not None:
            return DeepLabV3Cascade(num_classes=NUM_CLASSES, backbone=backbone, last_block=last_block,
                                    output_stride=output_stride, atrous_implementation=atrous_implementation)
        model_class = DeepLabV3Plus if decoder else DeepLabV3
        return model_class(num_classes=NUM_CLASSES, backbone=backbone, output_stride=output_stride,
                           atrous_implementation=atrous_implementation)


def preset_model(preset, seed=0):
    """The architecture of `keras_deeplab.presets.PRESETS[preset]` (its classes), randomly initialised (seeded):
    no download; time does not depend on the weights."""
    _tf()
    import keras

    from keras_deeplab.model import DeepLabV3
    from keras_deeplab.presets import get_preset

    spec = get_preset(preset)
    keras.utils.set_random_seed(seed)
    return DeepLabV3(num_classes=spec.num_classes or NUM_CLASSES, **spec.architecture)


def build_model(source, **kwargs):
    """`source` "torchvision" (kwargs: state_path, atrous_implementation, output_stride), "paper" or "preset"
    (kwargs: preset)."""
    if source == "torchvision":
        return torchvision_structure_model(**kwargs)
    if source == "preset":
        return preset_model(**kwargs)
    return paper_model(**kwargs)


class KerasInference:
    """Eval-mode forward of our model through a `tf.function` traced for the input's static shape (the graph
    `model.predict` runs, without its per-batch overhead); `dynamic_shape` traces for [None, None, None, 3]
    instead, as an export does. Levers: `jit_compile` (XLA), `fold_bn` (BatchNorm folded into the
    convolutions, `keras_deeplab.fold`, as the export serves it)."""

    def __init__(self, batch=1, size=513, jit_compile=False, fold_bn=False, dynamic_shape=False,
                 model_kwargs=None):
        tf = self.tf = _tf()
        self.model = build_model(**(model_kwargs or {}))
        # as built, before any folding: what torchvision's parameters() counts (no BatchNorm moving statistics)
        trainable_parameters = sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)
        if fold_bn:
            from keras_deeplab.fold import fold_batch_norm

            self.model = fold_batch_norm(self.model)
        model = self.model
        self.images = tf.constant(random_images(batch, size))
        signature = [tf.TensorSpec([None, None, None, 3], tf.float32)] if dynamic_shape else None
        self.forward = tf.function(lambda x: model(x, training=False), jit_compile=jit_compile,
                                   input_signature=signature)
        start = time.perf_counter()
        self.forward(self.images)
        self.meta = {"framework": "tensorflow", "jit_compile": jit_compile, "fold_bn": fold_bn,
                     "dynamic_shape": dynamic_shape,
                     "first_call_s": time.perf_counter() - start, "parameters": model.count_params(),
                     "trainable_parameters": trainable_parameters}

    def run(self):
        self.forward(self.images)
        _synchronize_tf(self.tf)

    def output(self):
        out = self.forward(self.images)
        return (out["out"] if isinstance(out, dict) else out).numpy()

    def count_macs(self):
        """MACs of one forward pass of the batch: one image's times the batch. keras_macs runs the functional model
        eagerly, which holds every intermediate tensor until the end (12.8 GB at batch 8 and 513x513)."""
        from flops import keras_macs

        batch, *image_shape = self.images.shape
        return keras_macs(self.model, (1, *image_shape)) * batch


class KerasTrainStep:
    """One training step of our model with the paper's recipe (keras_deeplab.training.recipe: cross-entropy
    ignoring 255, SGD momentum 0.9 on the poly schedule, L2 weight decay 1e-4 on conv kernels), through the
    compiled Keras train function (`train_on_batch`, what `fit` runs). No metric, as on the torch side.
    """

    def __init__(self, batch=2, size=321, jit_compile=False, mixed_precision=None, model_kwargs=None):
        _tf()
        import keras

        if mixed_precision:
            keras.mixed_precision.set_global_policy(mixed_precision)
        from keras_deeplab.training.recipe import build_optimizer, segmentation_loss, sgd

        self.model = build_model(**(model_kwargs or {}))
        self.model.compile(optimizer=sgd(steps=30000),
                           loss=segmentation_loss(IGNORE_LABEL), jit_compile=jit_compile)
        build_optimizer(self.model)
        self.images = random_images(batch, size)
        self.labels = random_labels(batch, size)
        start = time.perf_counter()
        self.model.train_on_batch(self.images, self.labels)
        self.meta = {"framework": "tensorflow", "jit_compile": jit_compile, "mixed_precision": mixed_precision,
                     "first_step_s": time.perf_counter() - start}

    def run(self):
        self.model.train_on_batch(self.images, self.labels)  # returns the loss as a number: waits for a GPU
