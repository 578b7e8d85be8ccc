"""TensorFlow Datasets by name (`tf_flowers`, `cifar10`, `imagenette`, `imagenet2012` with its
manual download in `data_dir/downloads/manual`). Optional: `pip install keras-vit[tfds]`."""

# Validation split per data set: its own when it has one, else the tail of `train`.
_VAL_SPLITS = ("validation", "test")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "TensorFlow Datasets is an optional extra: pip install 'keras-vit[tfds]'"
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
    val_split = next((s for s in _VAL_SPLITS if s in splits), None)
    if "train" not in splits:
        raise ValueError(f"TFDS data set {name!r} has no 'train' split (has {list(splits)}).")
    if val_split is None:
        # no held-out split: the last `val_fraction` of train, by TFDS's deterministic slicing
        pct = int(round(100 * (1 - val_fraction)))
        if not 0 < pct < 100:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction!r}.")
        train_split, val_split = f"train[:{pct}%]", f"train[{pct}%:]"
    else:
        train_split = "train"
    read = dict(as_supervised=True, shuffle_files=False)
    train_ds = builder.as_dataset(split=train_split, **read)
    val_ds = builder.as_dataset(split=val_split, **read)
    num_train = splits[train_split].num_examples
    num_val = splits[val_split].num_examples
    class_names = tuple(info.features["label"].names)
    return train_ds, val_ds, num_train, num_val, class_names
