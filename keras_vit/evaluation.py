"""`keras_vit.validate()` / `keras-vit validate`: a checkpoint's ImageNet-style accuracy, as
timm's `validate.py` measures it.

Images go through the checkpoint's evaluation transform (`keras_vit.data.transform`, timm's
`create_transform(**resolve_data_config({}, model=m))` on PIL, in TensorFlow ops), in tf.data;
the model sees 0..255 pixels and normalises them itself. Sources:

- a folder in timm's layout (`ImageFolder` / `find_images_and_targets`): every image
  (`.png`, `.jpg`, `.jpeg`) under `root`, labelled by the name of the folder that holds it;
  classes in natural sort order (`'class2'` before `'class10'`), images in natural order of
  their paths;
- a TensorFlow Datasets name (`imagenet2012` from its manual download in
  `data_dir/downloads/manual`), read as encoded bytes and decoded here, as PIL would.

The result is a row in the columns of timm's `results-imagenet.csv` (`model, img_size, top1,
top1_err, top5, top5_err, param_count, crop_pct, interpolation`), plus `loss`,
`images_per_sec` and `num_images`.

TensorFlow-only: imported lazily by `keras_vit.validate`.
"""

import itertools
import json
import os
import re
import time

# timm's default image extensions (timm/data/readers/img_extensions.py)
IMG_EXTENSIONS = (".png", ".jpg", ".jpeg")
RESULT_COLUMNS = (
    "model",
    "img_size",
    "top1",
    "top1_err",
    "top5",
    "top5_err",
    "param_count",
    "crop_pct",
    "interpolation",
)


def natural_key(text):
    """timm's `natural_key`: digit runs compare as numbers, the rest case-insensitively."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", text.lower())]


def find_images_and_targets(root):
    """timm's `find_images_and_targets(root)`: `(paths, labels, class_names)`, in timm's order
    (so index `i` is the same image in both, and label `k` the same class)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Data folder {root!r} does not exist.")
    found = []
    for dirpath, _, files in os.walk(root, topdown=False, followlinks=True):
        rel = os.path.relpath(dirpath, root) if dirpath != root else ""
        label = os.path.basename(rel)  # the leaf folder's name ("" for files in `root`)
        for f in files:
            if os.path.splitext(f)[1].lower() in IMG_EXTENSIONS:
                found.append((os.path.join(dirpath, f), label))
    if not found:
        raise ValueError(f"Data folder {root!r} holds no images ({', '.join(IMG_EXTENSIONS)}).")
    class_names = sorted({label for _, label in found}, key=natural_key)
    index = {c: i for i, c in enumerate(class_names)}
    found.sort(key=lambda item: natural_key(item[0]))
    return [p for p, _ in found], [index[c] for _, c in found], tuple(class_names)


def _folder_source(root):
    import tensorflow as tf

    paths, labels, class_names = find_images_and_targets(root)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.map(lambda p, y: (tf.io.read_file(p), y)), paths, class_names


def _tfds_source(name, split, data_dir):
    import tensorflow as tf

    from keras_vit.data.tfds import _import_tfds

    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare()  # imagenet2012: from data_dir/downloads/manual
    if "image" not in builder.info.features or "label" not in builder.info.features:
        raise ValueError(f"TFDS data set {name!r} has no (image, label) features.")
    splits = builder.info.splits
    if splits and split not in splits:
        raise ValueError(f"TFDS data set {name!r} has no split {split!r} (has {list(splits)}).")
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},  # the encoded bytes: decoded as PIL
    )
    ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))
    names = tuple(builder.info.features["label"].names)
    return ds, None, names


def _model_row(model, name, transform):
    import numpy as np

    # timm counts parameters, not BatchNorm's running statistics (Keras's non-trainable
    # weights): the trainable weights of a model that is not frozen
    params = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return {
        "model": name,
        "img_size": int(transform.input_size[-1]),
        "param_count": round(params / 1e6, 2),
        "crop_pct": transform.crop_pct,
        "interpolation": transform.interpolation,
    }


def _checkpoint_name(model):
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg.name if cfg is not None else model.name


def validate(
    model,
    data=None,
    dataset=None,
    split="validation",
    data_dir=None,
    weights=None,
    batch_size=64,
    results_file=None,
    transform=None,
    return_predictions=False,
    progress=False,
):
    """Top-1 / top-5 accuracy and loss of `model` on a labelled image set, as timm's
    `validate.py` computes them.

    Args:
        model: a keras_vit model, or a name `NAME[.TAG]` (built with `weights`, default the
            tag's published checkpoint).
        data: a folder in timm's layout (see the module doc); or
        dataset: a TensorFlow Datasets name, with `split` and `data_dir`.
        weights: with a name: a checkpoint file (any format `create_model` reads).
        batch_size: images per forward pass.
        results_file: write the result row there (`.csv`: timm's CSV with its header; any
            other name: JSON).
        transform: an `EvalTransform` replacing the checkpoint's.
        return_predictions: add `predictions` (top-1 class per image, in the source's order).
        progress: show a progress bar on stderr.
    Returns: a dict: timm's result columns, `loss`, `images_per_sec`, `num_images`.
    """
    import numpy as np
    import tensorflow as tf

    from keras_vit.export import eval_transform

    if (data is None) == (dataset is None):
        raise ValueError("Give exactly one of `data` (an image folder) or `dataset` (a TFDS name).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if isinstance(model, str):
        from keras_vit.registry import create_model

        model = create_model(model, weights=weights or "pretrained")
    elif weights is not None:
        raise ValueError("`weights` goes with a model name, not a built model.")
    if getattr(model, "num_classes", 1) == 0:
        raise ValueError(f"Model {model.name!r} has no classifier (num_classes=0).")
    transform = eval_transform(model, transform)

    if data is not None:
        source, paths, class_names = _folder_source(data)
    else:
        source, paths, class_names = _tfds_source(dataset, split, data_dir)

    def prepare(data_bytes, label):
        return tf.cast(transform.from_bytes(data_bytes), tf.float32), label

    ds = source.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    forward = tf.function(
        lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True
    )

    num_batches = None if paths is None else -(-len(paths) // batch_size)
    batches = iter(ds)
    steps = itertools.count() if num_batches is None else range(num_batches)
    if progress:
        from keras_vit.cli import progress as bar

        steps = bar(steps, total=num_batches, desc="validate")
    logits_top5, predictions, labels, losses = [], [], [], []
    start = time.perf_counter()
    for step in steps:
        try:
            images, y = next(batches)
        except StopIteration:
            break
        except tf.errors.OpError as err:
            raise _bad_file(err, paths, step, batch_size) from None
        logits = forward(images).numpy().astype(np.float64)  # (B, C)
        y = y.numpy()
        if y.max(initial=0) >= logits.shape[1]:
            raise ValueError(
                f"Label {int(y.max())} is out of range for a model with {logits.shape[1]} classes."
            )
        k = min(5, logits.shape[1])
        logits_top5.append(np.argsort(-logits, axis=1, kind="stable")[:, :k])
        predictions.append(logits.argmax(1))
        labels.append(y)
        # cross-entropy per image: logsumexp(logits) - logit[label]
        top = logits.max(1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(1))
        losses.append(lse - logits[np.arange(len(y)), y])
    seconds = time.perf_counter() - start
    if not labels:
        raise ValueError("The data set is empty.")
    top5 = np.concatenate(logits_top5)
    y = np.concatenate(labels)
    top1_acc = 100.0 * float(np.mean(top5[:, 0] == y))
    top5_acc = 100.0 * float(np.mean((top5 == y[:, None]).any(1)))
    row = _model_row(model, _checkpoint_name(model), transform)
    result = {
        "model": row["model"],
        "img_size": row["img_size"],
        "top1": round(top1_acc, 4),
        "top1_err": round(100.0 - top1_acc, 4),
        "top5": round(top5_acc, 4),
        "top5_err": round(100.0 - top5_acc, 4),
        "param_count": row["param_count"],
        "crop_pct": row["crop_pct"],
        "interpolation": row["interpolation"],
        "loss": float(np.concatenate(losses).mean()),
        "images_per_sec": len(y) / seconds if seconds > 0 else float("inf"),
        "num_images": int(len(y)),
    }
    if results_file:
        write_results(result, results_file)
    if return_predictions:
        result["predictions"] = np.concatenate(predictions).tolist()
    return result


def _bad_file(err, paths, step, batch_size):
    """An undecodable file stops tf.data with an error that does not name it: find it."""
    if paths is None:
        return ValueError(
            f"An image of the data set does not decode: {err.message.splitlines()[0]}"
        )
    from keras_vit.data.transform import UnreadableImageError, first_undecodable

    bad = first_undecodable(paths[step * batch_size : (step + 1) * batch_size])
    return UnreadableImageError(bad) if bad else err


def write_results(result, path):
    """The result row: timm's CSV (header + row) for a `.csv` path, else one JSON object."""
    row = {k: result[k] for k in RESULT_COLUMNS}
    if str(path).endswith(".csv"):
        import csv

        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(RESULT_COLUMNS))
            writer.writeheader()
            writer.writerow(row)
    else:
        extra = {k: result[k] for k in ("loss", "images_per_sec", "num_images")}
        with open(path, "w") as f:
            json.dump({**row, **extra}, f, indent=1)
            f.write("\n")
    return path
