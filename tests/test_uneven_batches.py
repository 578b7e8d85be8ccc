"""An uneven last global batch under Mirrored over two logical CPUs: 1,000 training examples
at global batch 64 (15 full batches an epoch, the last 40 dropped by the pipeline; 2 epochs) and 797 held out
(12 batches of 64 and one of 29, split 15 / 14 across the replicas). Training equals one
device; evaluation counts every example once, so its metrics equal one device's."""

import json
import subprocess
import sys

import pytest
from helpers import subprocess_env

SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras
from keras_vit.data import DataSplits, eval_dataset, train_dataset
from keras_vit.data.digits import CLASS_NAMES, load_digits_arrays
from keras_vit.training import DeiTDistiller
from keras_vit.training.recipes import make_optimizer, recipe_for
from keras_vit.training.small_models import digits_student
from keras_vit.training.strategy import get_strategy
from keras_vit.training.train import training_preprocessing

images, labels = load_digits_arrays()
n_train = 1000
splits = DataSplits(
    tf.data.Dataset.from_tensor_slices((images[:n_train], labels[:n_train])),
    tf.data.Dataset.from_tensor_slices((images[n_train:], labels[n_train:])),
    n_train, len(labels) - n_train, CLASS_NAMES,
)
BATCH = 64
# one MirroredStrategy for the whole process: a second instance reuses the first one's
# collective keys and its collectives fail with a shape mismatch
STRATEGIES = {"mirrored": get_strategy("mirrored"), "one": get_strategy("one")}


def distiller_for(strat, weights=None):
    with strat.scope():
        keras.utils.set_random_seed(5)
        student = digits_student(splits.num_classes, 16)
        if weights is not None:
            student.set_weights(weights)
        d = DeiTDistiller(student, None, distillation="none", label_smoothing=0.1)
        steps = splits.num_train // BATCH
        optimizer = make_optimizer(recipe_for(None, "digits"), BATCH, steps, 2, model=student)
        d.compile(optimizer=optimizer, jit_compile=False)
    return d, student


out = {}
for name in ("one", "mirrored"):
    strat = STRATEGIES[name]
    d, student = distiller_for(strat)
    prep = training_preprocessing(student)
    ds, steps = train_dataset(splits, prep, BATCH, seed=1, epochs=2)
    hist = d.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0)
    ev = d.evaluate(eval_dataset(splits, prep, BATCH), return_dict=True, verbose=0)
    out[name] = dict(replicas=strat.num_replicas_in_sync, steps=steps,
                     loss=float(hist.history["loss"][-1]), first_loss=float(hist.history["loss"][0]),
                     eval=ev,
                     weights=[w.tolist() for w in student.get_weights()])
# the same weights (those trained on one device) evaluated on one device and on two replicas
w = [np.array(x, np.float32) for x in out["one"]["weights"]]
same = {}
for name in ("one", "mirrored"):
    d, student = distiller_for(STRATEGIES[name], w)
    same[name] = d.evaluate(eval_dataset(splits, training_preprocessing(student), BATCH),
                            return_dict=True, verbose=0)
a, b = out["one"], out["mirrored"]
diff = max(float(np.max(np.abs(np.array(x) - np.array(y)))) for x, y in zip(a["weights"], b["weights"]))
print(json.dumps(dict(replicas=[a["replicas"], b["replicas"]], steps=a["steps"],
                      first_loss=[a["first_loss"], b["first_loss"]],
                      loss=[a["loss"], b["loss"]], eval=[a["eval"], b["eval"]],
                      same_weights_eval=[same["one"], same["mirrored"]], weight_diff=diff)))
"""


def test_mirrored_uneven_last_batch_equals_one_device(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=subprocess_env(CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(r)
    assert r["replicas"] == [1, 2] and r["steps"] == 1000 // 64
    assert r["loss"][0] == pytest.approx(r["loss"][1], abs=1e-5)
    assert r["weight_diff"] <= 1e-4  # 30 AdamW steps; only the all-reduce order differs
    one, two = r["same_weights_eval"]
    assert set(one) == set(two) and {"loss", "accuracy"} <= set(one)
    for key in one:  # every example counted once on two replicas as on one device
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    one, two = r["eval"]  # and the separately trained runs evaluate alike
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-5), key
    assert r["loss"][0] < r["first_loss"][0] - 0.05  # it trained: epoch 2's loss below epoch 1's
    assert one["accuracy"] > 0.2  # (chance: 0.1)
