"""From a source's `(image, label)` examples to batches a model trains on.

Everything here is TensorFlow graph code (no `py_function`), so tf.data runs it in parallel
C++ threads on the host; the model's train step is what runs under XLA on the accelerator.

Determinism: the order of epoch `e` is a pure function of `(seed, e)` (`epoch_seed`), and each
batch's augmentation draws from a stateless seed `(epoch_seed, batch index)`, never from a
shared counter. So a run resumed at epoch `e` sees exactly the batches the uninterrupted run
saw, and parallel map threads cannot reorder random draws.
"""

from dataclasses import dataclass, field

# Shuffle buffer cap for data sets that do not fit in memory (the whole set otherwise).
MAX_SHUFFLE_BUFFER = 50_000
# Cache resized examples in memory up to this many bytes.
MAX_CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: input size, and the normalisation the pipeline must apply
    (None when the model normalises 0..255 input itself, keras_vit's default).

    `transform` is how evaluation images reach that size: timm's eval transform
    (`keras_vit.data.transform.EvalTransform`; None: timm's defaults at `image_size`). It is
    left out of `==`, which compares what the model takes."""

    image_size: tuple
    mean: tuple = None
    std: tuple = None
    transform: object = field(default=None, compare=False)

    def eval_transform(self):
        from keras_vit.data.transform import EvalTransform

        return self.transform or EvalTransform(tuple(self.image_size))


def preprocessing_for(model):
    """Read the input size, normalisation and evaluation transform from a model (its
    `pretrained_cfg`, as timm's `resolve_data_config({}, model=m)`)."""
    from keras_vit.data.transform import EvalTransform

    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or shape[1] is None or shape[2] is None:
        raise ValueError(f"Model {model.name!r} has no fixed input size (input shape {shape}).")
    size = (int(shape[1]), int(shape[2]))
    transform = EvalTransform.from_model(model)
    if getattr(model, "include_preprocessing", True):
        return Preprocessing(size, transform=transform)
    # the model takes timm's normalised tensor: normalise here with its checkpoint's mean/std
    return Preprocessing(size, tuple(model.mean), tuple(model.std), transform=transform)


def epoch_seed(seed, epoch):
    """The shuffle seed of epoch `epoch`: a pure function of `(seed, epoch)`, < 2**62."""
    return (int(seed) * 1_000_003 + int(epoch)) % (1 << 62)


def _normalised(image, prep):
    import tensorflow as tf

    from keras_vit.layers.preprocessing import normalize

    if prep.mean is None:
        return image
    return normalize(image, tf.constant(prep.mean), tf.constant(prep.std))


def _prepare(prep):
    import tensorflow as tf

    def fn(image, label):
        image = tf.image.resize(image, prep.image_size, method="bilinear")  # (H, W, 3) float32
        return _normalised(image, prep), tf.cast(label, tf.int32)

    return fn


def _prepare_eval(prep):
    """timm's eval transform. Images of whole numbers in 0..255 (decoded files, TFDS) take
    its exact uint8 path (PIL's pixels); others (digits, 0..16 scaled to 0..255) its float
    path (PIL's "F" mode, no rounding)."""
    import tensorflow as tf

    transform = prep.eval_transform()

    def fn(image, label):
        image = tf.convert_to_tensor(image)
        if image.dtype == tf.uint8:
            out = tf.cast(transform(image), tf.float32)
        else:
            image = tf.cast(image, tf.float32)
            whole = tf.reduce_all((image == tf.round(image)) & (image >= 0.0) & (image <= 255.0))
            out = tf.cond(
                whole,
                lambda: tf.cast(transform(tf.cast(image, tf.uint8)), tf.float32),
                lambda: transform(image),
            )
        return _normalised(out, prep), tf.cast(label, tf.int32)

    return fn


def _resized(examples, num_examples, prep, prepare=_prepare):
    import tensorflow as tf

    ds = examples.map(prepare(prep), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
    """Validation batches in a fixed order, no augmentation, last partial batch kept; images
    through the model's evaluation transform (`prep.transform`, timm's), as timm evaluates."""
    import tensorflow as tf

    ds = _resized(splits.val, splits.num_val, prep, _prepare_eval)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
