"""The DeepLabV3 model (Chen et al., 2017): atrous backbone -> ASPP -> 1x1 logits -> bilinear upsampling."""
import keras

from keras_deeplab.backbones import get_backbone
from keras_deeplab.layers import ASPP, PACKAGE, AtrousConv2D, BatchNormalization, ImagePreprocessing, ResizeLike

PAPER_ATROUS_RATES = (6, 12, 18)  # at output stride 16


def default_atrous_rates(output_stride):
    """The paper's ASPP rates (6, 12, 18) at OS16, scaled by 16 / output_stride ((12, 24, 36) at OS8)."""
    return tuple(r * 16 // output_stride for r in PAPER_ATROUS_RATES)


def build_encoder(images, *, backbone, output_stride, multi_grid, atrous_rates, image_pooling, aspp_filters,
                  aspp_dropout, preprocessing, bn_momentum, synchronized_bn, atrous_implementation, separable=False):
    """DeepLabV3's encoder on the `images` input (arguments as DeepLabV3's; `separable`: ASPP's): preprocessing,
    atrous backbone, ASPP. Returns (the backbone's features, ASPP's output, the arguments with defaults resolved)."""
    spec = get_backbone(backbone)
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    multi_grid = tuple(int(m) for m in multi_grid)
    atrous_rates = default_atrous_rates(output_stride) if atrous_rates is None else tuple(atrous_rates)
    if preprocessing == "auto":
        preprocessing = spec["preprocessing"]
    x = ImagePreprocessing(preprocessing, name="preprocessing")(images) if preprocessing else images
    backbone_args = {"output_stride": output_stride, "synchronized_bn": synchronized_bn, "bn_momentum": bn_momentum}
    if spec["multi_grid"]:
        backbone_args.update(multi_grid=multi_grid, atrous_implementation=atrous_implementation)
    features = spec["features"](x, **backbone_args)
    x = ASPP(aspp_filters, atrous_rates, image_pooling=image_pooling, dropout=aspp_dropout, bn_momentum=bn_momentum,
             synchronized_bn=synchronized_bn, implementation=atrous_implementation, separable=separable,
             name="aspp")(features["block4"])
    resolved = {"backbone": backbone, "output_stride": int(output_stride), "multi_grid": multi_grid,
                "atrous_rates": atrous_rates, "image_pooling": bool(image_pooling), "aspp_filters": int(aspp_filters),
                "aspp_dropout": float(aspp_dropout), "preprocessing": preprocessing, "bn_momentum": float(bn_momentum),
                "synchronized_bn": bool(synchronized_bn), "atrous_implementation": atrous_implementation}
    return features, x, resolved


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeepLabV3(keras.Model):
    """DeepLabV3 as a functional Keras model: float RGB images `[N, H, W, 3]` in [0, 255], any H and W, to
    per-pixel class logits `[N, H, W, num_classes]` (float32 even under a mixed-precision policy).

    The defaults are the paper's best model (Table 5): ResNet-101, output stride 16, multi-grid (1, 2, 4),
    ASPP rates (6, 12, 18) with image pooling.

    Args:
        num_classes: number of classes (logit channels).
        backbone: a name in `keras_deeplab.backbones.BACKBONES` ("resnet50", "resnet101", "resnet152",
            "resnet50_v1.5", "resnet101_v1.5", "mobilenet_v2", "mobilenet_v3_large").
        output_stride: 8, 16 or 32; strides beyond it are replaced by atrous rates.
        multi_grid: per-unit rate multipliers of the last ResNet block (ignored by the MobileNets).
        atrous_rates: ASPP rates; None means (6, 12, 18) * 16 / output_stride.
        image_pooling: add ASPP's global-pooling branch.
        aspp_filters, aspp_dropout: ASPP width and dropout after its projection.
        head_conv: add torchvision's extra 3x3 conv + BN + ReLU before the classifier.
        aux_head: add torchvision's FCN auxiliary head (on ResNet's block3, MobileNetV3's stride-8 features;
            not for MobileNetV2); outputs become {"out", "aux"}.
        preprocessing: normalization inside the model: "auto" (the backbone's: "caffe" for ResNet v1,
            "torch" for v1.5 and MobileNetV3, "tf" for MobileNetV2), one of those names, or None for
            pre-normalized inputs.
        backbone_weights: None, "imagenet" or a local keras.applications weights file (loaded at build time,
            not saved in the config: a saved model carries its weights).
        bn_momentum: BatchNorm moving-average decay (the paper's 0.9997).
        synchronized_bn: synchronize BatchNorm statistics across replicas.
        atrous_implementation: how the 3x3 convolutions run: "auto", "shifted", "native" or "winograd" (see
            `layers.AtrousConv2D`).
        input_shape: input shape without batch, (None, None, 3) by default.
    """

    def __init__(self, num_classes=21, *, backbone="resnet101", output_stride=16, multi_grid=(1, 2, 4),
                 atrous_rates=None, image_pooling=True, aspp_filters=256, aspp_dropout=0.0, head_conv=False,
                 aux_head=False, preprocessing="auto", backbone_weights=None, bn_momentum=0.9997,
                 synchronized_bn=False, atrous_implementation="auto", input_shape=(None, None, 3),
                 name="deeplabv3", **kwargs):
        spec = get_backbone(backbone)
        if aux_head and spec["aux_features"] is None:
            raise ValueError(f"aux_head needs a ResNet or MobileNetV3 backbone, got {backbone!r}")
        layers = keras.layers

        images = keras.Input(shape=tuple(input_shape), name="images")
        features, x, encoder = build_encoder(
            images, backbone=backbone, output_stride=output_stride, multi_grid=multi_grid, atrous_rates=atrous_rates,
            image_pooling=image_pooling, aspp_filters=aspp_filters, aspp_dropout=aspp_dropout,
            preprocessing=preprocessing, bn_momentum=bn_momentum, synchronized_bn=synchronized_bn,
            atrous_implementation=atrous_implementation)
        multi_grid, atrous_rates = encoder["multi_grid"], encoder["atrous_rates"]
        preprocessing = encoder["preprocessing"]
        bn_args = {"momentum": bn_momentum, "epsilon": 1e-5, "synchronized": synchronized_bn}
        if head_conv:
            x = AtrousConv2D(aspp_filters, 3, use_bias=False, implementation=atrous_implementation,
                             name="head_conv")(x)
            x = layers.Activation("relu", name="head_relu")(BatchNormalization(name="head_bn", **bn_args)(x))
        x = layers.Conv2D(num_classes, 1, name="logits_conv")(x)
        logits = ResizeLike(dtype="float32", name="logits")([x, images])
        outputs = logits
        if aux_head:
            y = features[spec["aux_features"]]
            y = AtrousConv2D(y.shape[-1] // 4, 3, use_bias=False, implementation=atrous_implementation,
                             name="aux_conv")(y)
            y = layers.Activation("relu", name="aux_relu")(BatchNormalization(name="aux_bn", **bn_args)(y))
            y = layers.Dropout(0.1, name="aux_dropout")(y)
            y = layers.Conv2D(num_classes, 1, name="aux_logits_conv")(y)
            outputs = {"out": logits, "aux": ResizeLike(dtype="float32", name="aux_logits")([y, images])}
        super().__init__(inputs=images, outputs=outputs, name=name, **kwargs)

        self.num_classes = int(num_classes)
        self.backbone = backbone
        self.output_stride = int(output_stride)
        self.multi_grid = multi_grid
        self.atrous_rates = atrous_rates
        self.image_pooling = bool(image_pooling)
        self.aspp_filters = int(aspp_filters)
        self.aspp_dropout = float(aspp_dropout)
        self.head_conv = bool(head_conv)
        self.aux_head = bool(aux_head)
        self.preprocessing = preprocessing
        self.bn_momentum = float(bn_momentum)
        self.synchronized_bn = bool(synchronized_bn)
        self.atrous_implementation = atrous_implementation
        self.image_shape = tuple(input_shape)
        if backbone_weights is not None:
            from keras_deeplab.backbones.imagenet import load_imagenet_weights

            load_imagenet_weights(self, backbone, backbone_weights)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "backbone": self.backbone,
            "output_stride": self.output_stride,
            "multi_grid": list(self.multi_grid),
            "atrous_rates": list(self.atrous_rates),
            "image_pooling": self.image_pooling,
            "aspp_filters": self.aspp_filters,
            "aspp_dropout": self.aspp_dropout,
            "head_conv": self.head_conv,
            "aux_head": self.aux_head,
            "preprocessing": self.preprocessing,
            "bn_momentum": self.bn_momentum,
            "synchronized_bn": self.synchronized_bn,
            "atrous_implementation": self.atrous_implementation,
            "input_shape": list(self.image_shape),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, name_or_path, *, num_classes=None, base_url=None, cache_dir=None, **overrides):
        """A pretrained model (keras-hub's convention): a preset name from `keras_deeplab.presets.PRESETS`
        (downloaded once into Keras' cache and checked; `base_url` or `KERAS_DEEPLAB_WEIGHTS_URL` name a mirror
        URL or folder), a local weight file, or a saved `.keras` model. `num_classes` other than the preset's
        replaces the classifier for fine-tuning. See `keras_deeplab.presets.load_preset`."""
        from keras_deeplab.presets import load_preset  # presets build on this module

        return load_preset(name_or_path, num_classes=num_classes, base_url=base_url, cache_dir=cache_dir,
                           **overrides)

    def with_output_stride(self, output_stride, atrous_rates=None):
        """A copy of this model at another output stride, sharing no state but carrying the same weights
        (train at OS16, evaluate at OS8). ASPP rates follow the paper's scaling unless given."""
        config = self.get_config()
        config.update(output_stride=output_stride,
                      atrous_rates=atrous_rates or [r * self.output_stride // output_stride for r in self.atrous_rates])
        clone = type(self).from_config(config)
        clone.set_weights(self.get_weights())
        return clone
