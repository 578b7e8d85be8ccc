"""Callbacks that make training resumable bit for bit and observable from outside."""

import json
import os

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
