"""Where the examples come from: `digits` (built in, offline), a folder of class subfolders,
or a TensorFlow Datasets name. Every source yields unbatched `(image (H, W, 3) float32 RGB in
0..255, label int32)` and a fixed train/validation split (the same on every run and machine).
"""

import os
from dataclasses import dataclass

import numpy as np

SPLIT_SEED = 0  # the train/validation split never depends on the training seed


@dataclass
class DataSplits:
    train: object  # tf.data.Dataset of (image, label)
    val: object
    num_train: int
    num_val: int
    class_names: tuple

    @property
    def num_classes(self):
        return len(self.class_names)


def _split_indices(n, val_fraction):
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction!r}.")
    order = np.random.RandomState(SPLIT_SEED).permutation(n)
    num_val = max(1, int(round(n * val_fraction)))
    return order[num_val:], order[:num_val]


def load_splits(dataset, data_dir=None, val_fraction=0.2):
    """`dataset`: `"digits"`, an existing folder of class subfolders, or a TFDS name."""
    import tensorflow as tf

    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"`dataset` must be 'digits', a folder or a TFDS name, got {dataset!r}.")
    if dataset == "digits":
        from keras_vit.data.digits import CLASS_NAMES, load_digits_arrays

        images, labels = load_digits_arrays()
        tr, va = _split_indices(len(labels), val_fraction)
        train = tf.data.Dataset.from_tensor_slices((images[tr], labels[tr]))
        val = tf.data.Dataset.from_tensor_slices((images[va], labels[va]))
        return DataSplits(train, val, len(tr), len(va), CLASS_NAMES)
    if os.path.isdir(dataset):
        from keras_vit.data.folder import decode_image, list_image_folder

        paths, labels, class_names = list_image_folder(dataset)
        paths, labels = np.array(paths), np.array(labels, np.int32)
        tr, va = _split_indices(len(labels), val_fraction)

        def files(idx):
            ds = tf.data.Dataset.from_tensor_slices((paths[idx], labels[idx]))
            return ds.map(
                lambda p, y: (decode_image(p), y),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )

        return DataSplits(files(tr), files(va), len(tr), len(va), class_names)
    if os.sep in dataset or dataset.startswith("."):
        raise FileNotFoundError(f"Data set folder {dataset!r} does not exist.")
    from keras_vit.data.tfds import load_tfds

    train, val, num_train, num_val, class_names = load_tfds(dataset, data_dir, val_fraction)

    def to_float(ds):
        return ds.map(
            lambda x, y: (tf.cast(x, tf.float32), tf.cast(y, tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    return DataSplits(to_float(train), to_float(val), num_train, num_val, class_names)
