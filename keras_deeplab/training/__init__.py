"""Training and evaluation: the paper's recipe (`recipe`), the tf.distribute strategy (`strategy`, with the
`multi_worker` workaround), `callbacks`, `model.fit` from a config (`train.train`, `deeplab train`) and mIoU
evaluation with multi-scale and flip (`evaluate.evaluate`, `deeplab evaluate`).

The functions are not re-exported here, so that `keras_deeplab.training.train` and `.evaluate` stay
modules."""
