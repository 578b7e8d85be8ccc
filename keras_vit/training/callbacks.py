"""Callbacks that make training resumable bit for bit and observable from outside."""

import json
import os
import tempfile

import keras
import numpy as np

from keras_vit import _keras_compat


def seed_generators(model):
    """Every `SeedGenerator` (Dropout, DropPath, ...) inside `model`, in a fixed order."""
    found, seen = [], set()
    for layer in _keras_compat.flatten_layers(model):
        for generator in _keras_compat.seed_generators(layer):
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append(generator)
    return found


class EpochRNG(keras.callbacks.Callback):
    """At the start of epoch `e`, sets generator `i`'s state to `(seed * 7919 + i, e * 2**20)`.

    `BackupAndRestore` saves weights and optimizer but not the generators' counters, so a
    resumed run would otherwise replay epoch 1's dropout/drop-path masks in epoch 2. Keyed on
    the epoch, the masks of epoch `e` are the same whether or not the run was interrupted.
    """

    def __init__(self, seed):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        for i, generator in enumerate(seed_generators(self.model)):
            state = generator.state
            value = np.array([self.seed * 7919 + i, epoch * 2**20])
            state.assign(value.astype(keras.backend.standardize_dtype(state.dtype)))


class ProgressFile(keras.callbacks.Callback):
    """Writes `{"epoch": e, "batch": b}` (0-based, last finished batch) to a JSON file, so
    another process can see where training stands (tests kill it mid-epoch)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self._epoch = 0

    def _write(self, batch):
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"epoch": self._epoch, "batch": batch}, f)
        os.replace(tmp, self.path)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._write(-1)

    def on_train_batch_end(self, batch, logs=None):
        self._write(batch)


class SharedBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` for several workers reading one backup directory.

    Every worker restores from `backup_dir` at the start of `fit`; only the `writer` (the
    chief) writes it, at each epoch end, so no worker reads a file that another is halfway
    through writing. Saving under MultiWorkerMirrored runs collectives that every worker must
    join, so the others save too, into a temporary directory of their own that is removed
    right after (TensorFlow's multi-worker guide).

    Each epoch's weights go to their own file, `epoch_E.weights.h5`; then
    `training_metadata.json` (`{"epoch": E, "weights": file}`) is replaced in one rename and
    the older file removed. A chief killed while saving thus leaves the previous epoch's
    backup whole, never the weights of one epoch beside the number of another. `tf.io.gfile`
    writes local disks and buckets (`gs://`) alike.
    """

    def __init__(self, backup_dir, writer=True):
        super().__init__(backup_dir, delete_checkpoint=False)
        self.writer = bool(writer)

    def _metadata(self):
        import tensorflow as tf

        if not tf.io.gfile.exists(self._training_metadata_path):
            return None
        with tf.io.gfile.GFile(self._training_metadata_path) as f:
            return json.loads(f.read())

    def _load_model(self):
        meta = self._metadata()
        if meta is None or "weights" not in meta:  # nothing yet, or Keras's own layout
            return super()._load_model()
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, meta["weights"]))
        self.model._initial_epoch = int(meta["epoch"])  # as BackupAndRestore sets it

    def _save_model(self):
        import tensorflow as tf

        if not self.writer:
            with tempfile.TemporaryDirectory(prefix="keras_vit_worker_") as tmp:
                self.model.save_weights(os.path.join(tmp, "backup.weights.h5"))
            return

        tf.io.gfile.makedirs(self.backup_dir)
        previous = (self._metadata() or {}).get("weights")
        name = f"epoch_{self._current_epoch}.weights.h5"
        self.model.save_weights(os.path.join(self.backup_dir, name), overwrite=True)
        tmp = f"{self._training_metadata_path}.tmp"
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(json.dumps({"epoch": self._current_epoch, "weights": name}))
        tf.io.gfile.rename(tmp, self._training_metadata_path, overwrite=True)
        for old in (previous, "latest.weights.h5"):
            path = os.path.join(self.backup_dir, old) if old and old != name else None
            if path and tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
