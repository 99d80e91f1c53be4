"""Layers of DeepLabv3: input preprocessing, dynamic-size bilinear resize, BatchNorm, convolutions (plain and
atrous), ASPP.

All layers use `keras.ops` (so they also run on JAX) and serialize completely through `get_config`.
"""
from keras_deeplab.layers.aspp import ASPP, ASPPPart
from keras_deeplab.layers.convolution import AtrousConv2D, Conv2D, choose_implementation
from keras_deeplab.layers.normalization import BatchNormalization
from keras_deeplab.layers.preprocessing import (PREPROCESSING_MODES, ImagePreprocessing, ResizeLike, resize_bilinear,
                                                spatial_size)
from keras_deeplab.layers.registration import PACKAGE

__all__ = ["ASPP", "ASPPPart", "AtrousConv2D", "BatchNormalization", "Conv2D", "ImagePreprocessing", "PACKAGE",
           "PREPROCESSING_MODES", "ResizeLike", "choose_implementation", "resize_bilinear", "spatial_size"]
