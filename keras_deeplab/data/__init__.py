"""Data: dataset readers (VOC, image/label folders, TFDS), TFRecord conversion (`deeplab prepare`),
paper-style augmentation and tf.data pipelines. Independent of the model."""
from keras_deeplab.data.pipeline import eval_dataset, load_dataset_info, tfrecord_files, train_dataset

__all__ = ["eval_dataset", "load_dataset_info", "tfrecord_files", "train_dataset"]
