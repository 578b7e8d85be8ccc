"""TensorFlow Datasets by name (`tf_flowers`, `cifar10`, `imagenette`, `imagenet2012` with its
manual download in `data_dir/downloads/manual`). Optional: `pip install keras-vit-zoo[tfds]`."""

# Validation split per data set: its own when it has one, else the tail of `train`.
_VAL_SPLITS = ("validation", "test")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "TensorFlow Datasets is an optional extra: pip install 'keras-vit-zoo[tfds]'"
        ) from err
    return tfds


def load_tfds(name, data_dir=None, val_fraction=0.1, download=True):
    """`(train_ds, val_ds, num_train, num_val, class_names)`; elements `(image uint8, label)`."""
    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    info = builder.info
    if "image" not in info.features or "label" not in info.features:
        raise ValueError(f"TFDS data set {name!r} has no (image, label) features.")
    splits = info.splits
    if not splits:  # no split metadata (e.g. under `tfds.testing.mock_data`): TFDS's usual names
        train_split, val_split = "train", "test"
    elif "train" not in splits:
        raise ValueError(f"TFDS data set {name!r} has no 'train' split (has {list(splits)}).")
    else:
        train_split = "train"
        val_split = next((s for s in _VAL_SPLITS if s in splits), None)
    if val_split is None:
        # no held-out split: the last `val_fraction` of train, by TFDS's deterministic slicing
        pct = int(round(100 * (1 - val_fraction)))
        if not 0 < pct < 100:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction!r}.")
        train_split, val_split = f"train[:{pct}%]", f"train[{pct}%:]"
    read = dict(as_supervised=True, shuffle_files=False)
    train_ds = builder.as_dataset(split=train_split, **read)
    val_ds = builder.as_dataset(split=val_split, **read)

    def count(split, ds):
        if splits:
            return splits[split].num_examples
        n = int(ds.cardinality())
        if n < 0:
            raise ValueError(f"TFDS data set {name!r} split {split!r} has an unknown size.")
        return n

    num_train, num_val = count(train_split, train_ds), count(val_split, val_ds)
    class_names = tuple(info.features["label"].names)
    return train_ds, val_ds, num_train, num_val, class_names
