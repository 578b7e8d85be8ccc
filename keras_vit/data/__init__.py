"""tf.data input pipelines: a TensorFlow Datasets name, a folder of class subfolders, or the
built-in offline `digits` set; deterministic per-epoch shuffling; preprocessing from a model.

TensorFlow-only: import this package lazily (the models themselves do not need it).
"""

from keras_vit.data.pipeline import (
    Preprocessing,
    epoch_seed,
    eval_dataset,
    preprocessing_for,
    train_dataset,
)
from keras_vit.data.sources import DataSplits, load_splits

__all__ = [
    "DataSplits",
    "Preprocessing",
    "epoch_seed",
    "eval_dataset",
    "load_splits",
    "preprocessing_for",
    "train_dataset",
]
