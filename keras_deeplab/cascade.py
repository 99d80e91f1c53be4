"""DeepLabv3's cascaded model ("going deeper with atrous convolution", Sec. 3.2, Fig. 3): ResNet with copies of
block4 as block5..block7 in cascade, a 1x1 classifier on the last block, bilinear upsampling; no ASPP."""
import keras

from keras_deeplab.backbones import get_backbone
from keras_deeplab.layers import PACKAGE, ImagePreprocessing, ResizeLike

CASCADE_BACKBONES = ("resnet50", "resnet101", "resnet152")
LAST_BLOCKS = (4, 5, 6, 7)
CONFIG_KEYS = ("num_classes", "backbone", "last_block", "output_stride", "multi_grid", "preprocessing", "bn_momentum",
               "synchronized_bn", "atrous_implementation")


def cascade_output_strides(last_block):
    """The output strides a cascade ending at `last_block` reaches: 8 up to its stride without atrous
    convolution, 4 * 2 ** (last_block - 1) (32 for block4, 256 for block7)."""
    return tuple(2 ** k for k in range(3, last_block + 2))


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeepLabV3Cascade(keras.Model):
    """The paper's cascaded model as a functional Keras model: float RGB images `[N, H, W, 3]` in [0, 255] to
    per-pixel class logits `[N, H, W, num_classes]` (float32).

    block5..block7 repeat block4 (three bottleneck units, 512 / 2048 filters). Where the paper leaves it open:
    - The stride of each block sits in its first unit (keras.applications' "v1" layout, so ImageNet weights
      load by name into block1..block4; block5..block7 start fresh): block4 ends at OS32, block7 at OS256. TF's
      slim ResNet strides in the last unit of the previous block instead: the same chain of resolutions.
    - A block whose stride is replaced by atrous convolution uses its rate in every unit, its first included
      (as the TF DeepLab code does: slim's striding 3x3 conv keeps the previous rate, and that conv is in the
      previous block). Rates double per block: OS16 gives block4..7 rates 2, 4, 8, 16; OS8 block3 2 and
      block4..7 4, 8, 16, 32; OS256 has no atrous convolution. `multi_grid` multiplies the unit rates of block4
      and every block after it.
    - The classifier is one plain 1x1 conv (with bias) on the last block's output, as in the paper's Fig. 3 and
      the TF reference: no extra 3x3 conv, BatchNorm or ReLU before it.

    Args:
        num_classes: number of classes (logit channels).
        backbone: "resnet50", "resnet101" or "resnet152" (the paper: ResNet-50 and -101).
        last_block: 4 (plain ResNet) to 7 (the paper's deepest cascade).
        output_stride: 8, 16, ... up to `4 * 2 ** (last_block - 1)`; strides beyond it become atrous rates.
        multi_grid: per-unit rate multipliers of block4..last_block.
        preprocessing: "auto" (the backbone's: "caffe"), another `ImagePreprocessing` mode, or None.
        backbone_weights: None, "imagenet" or a local keras.applications weights file (block1..block4).
        bn_momentum, synchronized_bn, atrous_implementation, input_shape: as for `DeepLabV3`.
    """

    def __init__(self, num_classes=21, *, backbone="resnet50", last_block=7, output_stride=16, multi_grid=(1, 1, 1),
                 preprocessing="auto", backbone_weights=None, bn_momentum=0.9997, synchronized_bn=False,
                 atrous_implementation="auto", input_shape=(None, None, 3), name="deeplabv3_cascade", **kwargs):
        if backbone not in CASCADE_BACKBONES:
            raise ValueError(f"the cascaded model needs one of {CASCADE_BACKBONES} as backbone, got {backbone!r}")
        if last_block not in LAST_BLOCKS:
            raise ValueError(f"last_block must be one of {LAST_BLOCKS}, got {last_block!r}")
        if output_stride not in cascade_output_strides(last_block):
            raise ValueError(f"output_stride must be one of {cascade_output_strides(last_block)} with last_block "
                             f"{last_block}, got {output_stride!r}")
        spec = get_backbone(backbone)
        multi_grid = tuple(int(m) for m in multi_grid)
        if preprocessing == "auto":
            preprocessing = spec["preprocessing"]

        images = keras.Input(shape=tuple(input_shape), name="images")
        x = ImagePreprocessing(preprocessing, name="preprocessing")(images) if preprocessing else images
        features = spec["features"](x, output_stride=output_stride, multi_grid=multi_grid,
                                    extra_blocks=last_block - 4, bn_momentum=bn_momentum,
                                    synchronized_bn=synchronized_bn, atrous_implementation=atrous_implementation)
        x = keras.layers.Conv2D(num_classes, 1, name="logits_conv")(features[f"block{last_block}"])
        logits = ResizeLike(dtype="float32", name="logits")([x, images])
        super().__init__(inputs=images, outputs=logits, name=name, **kwargs)

        settings = {"num_classes": int(num_classes), "backbone": backbone, "last_block": int(last_block),
                    "output_stride": int(output_stride), "multi_grid": multi_grid, "preprocessing": preprocessing,
                    "bn_momentum": float(bn_momentum), "synchronized_bn": bool(synchronized_bn),
                    "atrous_implementation": atrous_implementation}
        for key, value in settings.items():
            setattr(self, key, value)
        self.image_shape = tuple(input_shape)
        if backbone_weights is not None:
            from keras_deeplab.backbones.imagenet import load_imagenet_weights

            load_imagenet_weights(self, backbone, backbone_weights)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **{key: getattr(self, key) for key in CONFIG_KEYS},
                "multi_grid": list(self.multi_grid), "input_shape": list(self.image_shape)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def with_output_stride(self, output_stride):
        """A copy at another output stride carrying the same weights (train at OS16, evaluate at OS8)."""
        clone = type(self).from_config({**self.get_config(), "output_stride": output_stride})
        clone.set_weights(self.get_weights())
        return clone
