"""DeepLab training augmentation as pure TF ops (runs inside tf.data maps, in parallel):
random scale 0.5-2.0, pad to the crop (image with the dataset mean, label with the ignore value),
random crop and random left-right flip. Image and label always get the same geometric transform.

Randomness is stateless: every op takes a `seed` tensor of shape [2], so the same seed gives the same result.
"""
import tensorflow as tf


def resize_by(image, label, factor):
    """Scales an image (bilinear) and its label (nearest) by `factor`; the output size is rounded."""
    size = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) * factor), tf.int32)
    size = tf.maximum(size, 1)
    image = tf.image.resize(image, size, method="bilinear")
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    return image, label


def random_scale(image, label, seed, min_scale, max_scale):
    """Rescales image and label by one factor drawn uniformly from [min_scale, max_scale]."""
    if min_scale == max_scale == 1:
        return image, label
    factor = tf.random.stateless_uniform([], seed, minval=min_scale, maxval=max_scale)
    return resize_by(image, label, factor)


def pad_to_size(image, label, height, width, mean_rgb, ignore_label):
    """Pads at the bottom/right to at least (height, width): image with `mean_rgb`, label with `ignore_label`."""
    shape = tf.shape(image)
    pad_h, pad_w = tf.maximum(height - shape[0], 0), tf.maximum(width - shape[1], 0)
    paddings = [[0, pad_h], [0, pad_w]]
    mean = tf.constant(mean_rgb, tf.float32)
    image = tf.pad(image - mean, paddings + [[0, 0]]) + mean
    label = tf.pad(label, paddings, constant_values=tf.cast(ignore_label, label.dtype))
    return image, label


def random_crop(image, label, seed, height, width):
    """Crops the same random (height, width) window from an image and its label (both at least that size)."""
    shape = tf.shape(image)
    limits = tf.stack([shape[0] - height + 1, shape[1] - width + 1])
    offset = tf.random.stateless_uniform([2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32) % limits
    rows, cols = slice(offset[0], offset[0] + height), slice(offset[1], offset[1] + width)
    image, label = image[rows, cols], label[rows, cols]
    image.set_shape([height, width, 3])
    label.set_shape([height, width])
    return image, label


def random_flip(image, label, seed):
    """Flips image and label left-right together with probability 0.5."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return (
        tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
        tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label),
    )


def augment(image, label, seed, *, crop_size, min_scale=0.5, max_scale=2.0, flip=True,
            mean_rgb=(127.5, 127.5, 127.5), ignore_label=255):
    """The paper's training augmentation for one example.

    image: float32 [H, W, 3]; label: integer [H, W]; seed: int [2]. Returns float32 [ch, cw, 3] and the label
    [ch, cw] in its own dtype, both with static shapes.
    """
    scale_seed, crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    height, width = crop_size
    image, label = random_scale(image, label, scale_seed, min_scale, max_scale)
    image, label = pad_to_size(image, label, height, width, mean_rgb, ignore_label)
    image, label = random_crop(image, label, crop_seed, height, width)
    if flip:
        image, label = random_flip(image, label, flip_seed)
    return image, label
