"""Training and evaluation: the paper's recipe (recipe), tf.distribute strategy choice (strategy), callbacks,
`model.fit` from a config (train) and mIoU evaluation with multi-scale and flip (evaluate)."""
from keras_deeplab.training.evaluate import evaluate
from keras_deeplab.training.train import load_config, train

__all__ = ["evaluate", "load_config", "train"]
