"""The shipped training configs (`*.yaml`), installed as `keras_deeplab.configs`: `deeplab train --config NAME`."""
