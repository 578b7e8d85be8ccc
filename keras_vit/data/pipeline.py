"""From a source's `(image, label)` examples to batches a model trains on.

Everything here is TensorFlow graph code (no `py_function`), so tf.data runs it in parallel
C++ threads on the host; the model's train step is what runs under XLA on the accelerator.

Determinism: the order of epoch `e` is a pure function of `(seed, e)` (`epoch_seed`), and each
batch's augmentation draws from a stateless seed `(epoch_seed, batch index)`, never from a
shared counter. So a run resumed at epoch `e` sees exactly the batches the uninterrupted run
saw, and parallel map threads cannot reorder random draws.
"""

from dataclasses import dataclass

# Shuffle buffer cap for data sets that do not fit in memory (the whole set otherwise).
MAX_SHUFFLE_BUFFER = 50_000
# Cache resized examples in memory up to this many bytes.
MAX_CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: input size, and the normalisation the pipeline must apply
    (None when the model normalises 0..255 input itself, keras_vit's default)."""

    image_size: tuple
    mean: tuple = None
    std: tuple = None


def preprocessing_for(model):
    """Read the input size and normalisation from a model's config."""
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or shape[1] is None or shape[2] is None:
        raise ValueError(f"Model {model.name!r} has no fixed input size (input shape {shape}).")
    size = (int(shape[1]), int(shape[2]))
    if getattr(model, "include_preprocessing", True):
        return Preprocessing(size)
    # the model takes timm's normalised tensor: normalise here with its checkpoint's mean/std
    return Preprocessing(size, tuple(model.mean), tuple(model.std))


def epoch_seed(seed, epoch):
    """The shuffle seed of epoch `epoch`: a pure function of `(seed, epoch)`, < 2**62."""
    return (int(seed) * 1_000_003 + int(epoch)) % (1 << 62)


def _prepare(prep):
    import tensorflow as tf

    def fn(image, label):
        image = tf.image.resize(image, prep.image_size, method="bilinear")  # (H, W, 3) float32
        if prep.mean is not None:
            image = (image / 255.0 - tf.constant(prep.mean)) / tf.constant(prep.std)
        return image, tf.cast(label, tf.int32)

    return fn


def _resized(examples, num_examples, prep):
    import tensorflow as tf

    ds = examples.map(_prepare(prep), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    h, w = prep.image_size
    if num_examples * h * w * 3 * 4 <= MAX_CACHE_BYTES:
        ds = ds.cache()
    return ds


def train_dataset(
    splits,
    prep,
    batch_size,
    seed,
    epochs,
    initial_epoch=0,
    augment=None,
    one_hot=False,
):
    """Batches for epochs `initial_epoch .. epochs - 1`, back to back, and the steps per epoch.

    Args:
        splits: `DataSplits` (its `train` part is used).
        prep: `Preprocessing` (resize, optional normalisation).
        batch_size: the *global* batch; a strategy splits it across replicas.
        seed, epochs, initial_epoch: epoch `e`'s order depends on `(seed, e)` only.
        augment: None or `fn(images, labels, seed) -> (images, labels)` on a batch, graph ops,
            drawing its randomness from the `(2,)` int64 `seed` (see `keras_vit.training.recipes`).
        one_hot: labels as one-hot float vectors (needed by MixUp/CutMix) instead of ints.

    Returns `(dataset, steps_per_epoch)`; pass both to `fit` (with `initial_epoch`).
    """
    import tensorflow as tf

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if not 0 <= initial_epoch <= epochs:
        raise ValueError(f"`initial_epoch` {initial_epoch!r} must be in [0, epochs={epochs}].")
    steps = splits.num_train // batch_size
    if steps < 1:
        raise ValueError(
            f"`batch_size` {batch_size} is larger than the training split ({splits.num_train})."
        )
    base = _resized(splits.train, splits.num_train, prep)
    buffer = min(splits.num_train, MAX_SHUFFLE_BUFFER)
    num_classes = splits.num_classes

    def one_epoch(epoch):
        s = epoch_seed(seed, epoch)
        ds = base.shuffle(buffer, seed=s, reshuffle_each_iteration=False)
        ds = ds.batch(batch_size, drop_remainder=True).take(steps)
        if one_hot:
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
        if augment is not None:
            ds = ds.enumerate().map(
                lambda i, xy: augment(xy[0], xy[1], tf.stack([tf.constant(s, tf.int64), i])),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        return ds

    # Epochs chained in Python: `shuffle` takes its seed as a Python int, not a tensor, so the
    # epoch cannot come from a `Dataset.range`. `concatenate` closes each epoch's iterator
    # (and its shuffle buffer) before opening the next.
    ds = None
    for epoch in range(initial_epoch, epochs):
        ds = one_epoch(epoch) if ds is None else ds.concatenate(one_epoch(epoch))
    if ds is None:  # nothing left to train: an empty dataset of the right structure
        ds = one_epoch(0).take(0)
    return ds.prefetch(tf.data.AUTOTUNE), steps


def eval_dataset(splits, prep, batch_size):
    """Validation batches in a fixed order, no augmentation, last partial batch kept."""
    import tensorflow as tf

    ds = _resized(splits.val, splits.num_val, prep)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
