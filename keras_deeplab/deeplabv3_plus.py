"""DeepLabv3+ (Chen et al., ECCV 2018): DeepLabV3's encoder with a decoder on the backbone's stride-4 features."""
import keras

from keras_deeplab.backbones import get_backbone
from keras_deeplab.layers import PACKAGE, AtrousConv2D, BatchNormalization, ResizeLike
from keras_deeplab.model import DeepLabV3, build_encoder


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeepLabV3Plus(keras.Model):
    """DeepLabv3+ as a functional Keras model: float RGB images `[N, H, W, 3]` in [0, 255], any H and W, to
    per-pixel class logits `[N, H, W, num_classes]` (float32 even under a mixed-precision policy).

    Encoder: DeepLabV3's (atrous backbone, ASPP). Decoder (paper Sec. 3.1, Fig. 2): the backbone's stride-4
    features -> 1x1 conv (`low_level_filters`) + BN + ReLU; the encoder output resized bilinearly to their size;
    concatenation (encoder first); two 3x3 convs (`decoder_filters`) + BN + ReLU; 1x1 logits; bilinear resize to
    the input size. Resizing to the actual sizes (not by a factor of 4) makes any input size work.

    Where the paper is silent, this follows the TF reference (tensorflow/models research/deeplab, `model.py`
    `refine_by_decoder`, `core/feature_extractor.py`):
    - low-level features: ResNet's block1 output (`conv2_block3_out`, the last unit before the stride to 8; the TF
      code reads `block1/unit_2/bottleneck_v1/conv3`, the same stage in slim's layout); MobileNetV2 and
      MobileNetV3-Large: the depthwise output of the last stride-4 block (`layer_4/depthwise_output`:
      keras.applications' `block_2_depthwise_relu`, torchvision's `features[3]` depthwise conv);
    - `separable=True` is `split_separable_conv2d`: depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU, in
      ASPP's atrous branches and both decoder convs;
    - the logits conv has a bias; every other conv is followed by BN and has none.
    Unlike the TF code, resizing is half-pixel bilinear (`align_corners=False`, torchvision's) and ASPP has no
    dropout unless `aspp_dropout` is set (the TF code drops 10 % after ASPP's projection in training).

    Args:
        num_classes, backbone, output_stride, multi_grid, atrous_rates, image_pooling, aspp_filters, aspp_dropout,
            preprocessing, backbone_weights, bn_momentum, synchronized_bn, atrous_implementation, input_shape:
            as `DeepLabV3`'s.
        decoder_filters: width of the decoder's two 3x3 convs (256).
        low_level_filters: width of the 1x1 projection of the stride-4 features (48).
        separable: depthwise-separable convs in ASPP's atrous branches and the decoder.
    """

    def __init__(self, num_classes=21, *, backbone="resnet101", output_stride=16, multi_grid=(1, 2, 4),
                 atrous_rates=None, image_pooling=True, aspp_filters=256, aspp_dropout=0.0, decoder_filters=256,
                 low_level_filters=48, separable=False, preprocessing="auto", backbone_weights=None,
                 bn_momentum=0.9997, synchronized_bn=False, atrous_implementation="auto", input_shape=(None, None, 3),
                 name="deeplabv3_plus", **kwargs):
        layers = keras.layers
        bn_args = {"momentum": bn_momentum, "epsilon": 1e-5, "synchronized": synchronized_bn}

        def conv_bn_relu(x, conv, name):
            return layers.Activation("relu", name=f"{name}_relu")(BatchNormalization(name=f"{name}_bn", **bn_args)(
                conv(x)))

        def decoder_conv(x, name):
            if separable:
                x = conv_bn_relu(x, layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                                           depthwise_initializer="he_normal",
                                                           name=f"{name}_depthwise_conv"), f"{name}_depthwise")
                return conv_bn_relu(x, layers.Conv2D(decoder_filters, 1, use_bias=False, name=f"{name}_pointwise_conv"),
                                    f"{name}_pointwise")
            return conv_bn_relu(x, AtrousConv2D(decoder_filters, 3, use_bias=False,
                                                implementation=atrous_implementation, name=f"{name}_conv"), name)

        images = keras.Input(shape=tuple(input_shape), name="images")
        features, x, encoder = build_encoder(
            images, backbone=backbone, output_stride=output_stride, multi_grid=multi_grid, atrous_rates=atrous_rates,
            image_pooling=image_pooling, aspp_filters=aspp_filters, aspp_dropout=aspp_dropout,
            preprocessing=preprocessing, bn_momentum=bn_momentum, synchronized_bn=synchronized_bn,
            atrous_implementation=atrous_implementation, separable=separable)
        low_level = conv_bn_relu(features[get_backbone(backbone)["decoder_features"]],
                                 layers.Conv2D(low_level_filters, 1, use_bias=False, name="decoder_low_level_conv"),
                                 "decoder_low_level")
        x = ResizeLike(name="decoder_upsample")([x, low_level])
        x = layers.Concatenate(name="decoder_concat")([x, low_level])
        x = decoder_conv(decoder_conv(x, "decoder_conv1"), "decoder_conv2")
        x = layers.Conv2D(num_classes, 1, name="logits_conv")(x)
        logits = ResizeLike(dtype="float32", name="logits")([x, images])
        super().__init__(inputs=images, outputs=logits, name=name, **kwargs)

        self.num_classes = int(num_classes)
        self.encoder_arguments = tuple(encoder)  # the attributes below named as DeepLabV3's arguments
        for key, value in encoder.items():
            setattr(self, key, value)
        self.decoder_filters = int(decoder_filters)
        self.low_level_filters = int(low_level_filters)
        self.separable = bool(separable)
        self.image_shape = tuple(input_shape)
        if backbone_weights is not None:
            from keras_deeplab.backbones.imagenet import load_imagenet_weights

            load_imagenet_weights(self, backbone, backbone_weights)

    def get_config(self):
        encoder = {key: list(value) if isinstance(value, tuple) else value
                   for key, value in ((key, getattr(self, key)) for key in self.encoder_arguments)}
        return {"name": self.name, "trainable": self.trainable, "num_classes": self.num_classes, **encoder,
                "decoder_filters": self.decoder_filters, "low_level_filters": self.low_level_filters,
                "separable": self.separable, "input_shape": list(self.image_shape)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    with_output_stride = DeepLabV3.with_output_stride
