"""The exported computation: the inference size policy, logits at each image's own size, and the
`keras.export.ExportArchive` with the contract's two signatures (no XLA; the model's own compute dtype, float32
logits, labels and probabilities)."""
from keras_deeplab.architectures import main_output
from keras_deeplab.serving.contract import (IMAGE_BYTES, IMAGE_SIZE, IMAGES, IMAGES_SIGNATURE, LABEL_PNG_BYTES,
                                            LABELS, PAD_LABEL, PROBABILITIES, SERVING_SIGNATURE)


def inference_size(height, width, max_long_side):
    """The (height, width) the model sees for an image of `height` x `width` under `max_long_side` (see the
    package doc)."""
    long_side = max(height, width)
    if max_long_side is None or long_side <= max_long_side:
        return height, width
    return tuple(max(1, (2 * side * max_long_side + long_side) // (2 * long_side)) for side in (height, width))


def _tf_inference_size(height, width, max_long_side):
    """`inference_size` on int32 scalar tensors, in the same integer arithmetic."""
    import tensorflow as tf

    long_side = tf.maximum(height, width)

    def scaled(side):  # in int64: 2 * side * max_long_side can pass int32's range
        side, long = tf.cast(side, tf.int64), tf.cast(long_side, tf.int64)
        return tf.cast(tf.maximum(tf.constant(1, tf.int64), (2 * side * max_long_side + long) // (2 * long)), tf.int32)

    shrink = long_side > max_long_side
    return tf.where(shrink, scaled(height), height), tf.where(shrink, scaled(width), width)


def model_logits(model, images):
    """float32 logits of `model` (its main output when it also has an auxiliary one) for float images."""
    import tensorflow as tf

    return tf.cast(main_output(model(images, training=False)), tf.float32)


def logits_at_input_size(model, images, max_long_side=None):
    """Logits [N, H, W, C] for images [N, H, W, 3] (any real dtype, values in [0, 255]) under the size policy."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    if max_long_side is None:
        return model_logits(model, images)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    size = tf.stack(_tf_inference_size(height, width, int(max_long_side)))
    resized = tf.image.resize(images, size, method="bilinear", antialias=False)
    logits = model_logits(model, resized)
    return tf.image.resize(logits, tf.stack([height, width]), method="bilinear", antialias=False)


def build_export_archive(model, max_long_side=None):
    """(the `keras.export.ExportArchive` with the `serving_default` and `predict_images` endpoints, the model's
    number of classes)."""
    import keras
    import tensorflow as tf

    num_classes = int(model_logits(model, tf.zeros([1, 33, 33, 3])).shape[-1])
    png_dtype = tf.uint8 if num_classes <= 256 else tf.uint16

    def segment_encoded(image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        logits = logits_at_input_size(model, image[tf.newaxis], max_long_side)[0]
        labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
        png = tf.io.encode_png(tf.cast(labels, png_dtype)[..., tf.newaxis])
        return tf.RaggedTensor.from_tensor(labels), png, tf.shape(labels)

    def serve_image_bytes(image_bytes):
        labels, pngs, sizes = tf.map_fn(
            segment_encoded, image_bytes,
            fn_output_signature=(tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1),
                                 tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int32)))
        return {LABELS: labels.to_tensor(default_value=PAD_LABEL), LABEL_PNG_BYTES: pngs, IMAGE_SIZE: sizes}

    def serve_images(images):
        logits = logits_at_input_size(model, images, max_long_side)
        return {LABELS: tf.argmax(logits, axis=-1, output_type=tf.int32), PROBABILITIES: tf.nn.softmax(logits)}

    archive = keras.export.ExportArchive()
    archive.add_endpoint(SERVING_SIGNATURE, serve_image_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    archive.add_endpoint(IMAGES_SIGNATURE, serve_images,
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES)])
    return archive, num_classes
