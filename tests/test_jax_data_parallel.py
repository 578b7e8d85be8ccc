"""JAX backend, two host devices: `keras_vit.train(strategy="auto")` trains with
`keras.distribution.DataParallel` and ends, after 2 epochs, with the weights of a one-device
run of the same global batch (max |diff| <= 1e-5, and so are the logits), for plain training
and for DeiTDistiller with hard distillation. The devices exist only if XLA_FLAGS is set before JAX is imported,
hence the subprocess."""

import json
import subprocess
import sys

import pytest
from helpers import subprocess_env

pytest.importorskip("jax")

SCRIPT = r"""
import json, sys
import numpy as np, keras, jax
assert keras.backend.backend() == "jax" and len(jax.devices()) == 2, jax.devices()
import keras_vit
from keras_vit.training.small_models import small_convnet

root = sys.argv[1]
from keras_vit.data.digits import load_digits_arrays
images = np.asarray(keras.ops.image.resize(load_digits_arrays()[0][:64], (16, 16)))
keras.utils.set_random_seed(11)
teacher = small_convnet(10, 16)  # a fixed (random) teacher: both runs distil from the same one
teacher.save(root + "/teacher.keras")
common = dict(dataset="digits", epochs=2, batch_size=64, image_size=16, seed=3, verbose=0,
              recipe={"drop_path_rate": 0.1})
report = {}
for mode, extra in (("none", {}), ("hard", {"teacher": root + "/teacher.keras"})):
    runs = {}
    for strategy in ("one", "auto"):
        out = f"{root}/{mode}_{strategy}"
        m = keras_vit.train(output=out, distillation=mode, strategy=strategy, **common, **extra)
        model = keras.saving.load_model(out + "/model.keras")
        w = {v.path: np.asarray(v) for v in model.weights}
        runs[strategy] = (m, w, np.asarray(model.predict(images, verbose=0)))
    (m1, w1, y1), (m2, w2, y2) = runs["one"], runs["auto"]
    diffs, key_bias = {}, 0.0
    for path, a in w1.items():
        b = w2[path]
        if path.endswith("attn/qkv/bias"):
            # The key bias adds q.b_k to every logit of a query: softmax ignores it, its
            # gradient is zero up to float noise, and AdamW turns that noise into steps
            # of size ~lr. It changes no output; compared apart.
            dim = a.shape[0] // 3
            key_bias = max(key_bias, float(np.max(np.abs(a[dim : 2 * dim] - b[dim : 2 * dim]))))
            a, b = np.delete(a, np.s_[dim : 2 * dim]), np.delete(b, np.s_[dim : 2 * dim])
        diffs[path] = float(np.max(np.abs(a - b)))
    worst = max(diffs, key=diffs.get)
    report[mode] = dict(
        replicas=[m1["replicas"], m2["replicas"]],
        distillation=[m1["distillation"], m2["distillation"]],
        loss=[m1["train_loss"], m2["train_loss"]],
        val=[m1["val_accuracy"], m2["val_accuracy"]],
        weight_diff=diffs[worst], worst=worst, key_bias_diff=key_bias,
        logit_diff=float(np.max(np.abs(y1 - y2))),
        logit_spread=float(np.max(np.abs(y1[0] - y1[1]))),
        trained=float(np.max(np.abs(y1))),
        n=len(w1),
    )
print(json.dumps(report))
"""


def test_jax_data_parallel_two_devices_equals_one(tmp_path):
    env = subprocess_env(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    for mode in ("none", "hard"):
        r = report[mode]
        assert r["replicas"] == [1, 2], r
        assert r["distillation"] == [mode, mode]
        assert r["n"] > 10
        assert r["weight_diff"] <= 1e-5, (mode, r["worst"], r["weight_diff"])
        assert r["logit_diff"] <= 1e-5 and r["logit_spread"] > 0.05  # the same function
        assert r["key_bias_diff"] <= 1e-3  # (noise-driven, bounded by lr x steps)
        assert r["loss"][0] == pytest.approx(r["loss"][1], abs=1e-5)
        assert r["val"][0] == pytest.approx(r["val"][1], abs=1e-5)
