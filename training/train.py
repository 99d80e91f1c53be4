"""Train DeepLabV3 from a config; the same as `deeplab train`.

    python training/train.py --config training/configs/camvid_demo.yaml --data_dir data/camvid_sample \
        --model_dir runs/camvid_demo [--set section.key=value ...]
"""
import sys

from keras_deeplab.training.train import main

if __name__ == "__main__":
    sys.exit(main())
