"""DeiTDistiller: loss formulas, tf.distribute, a frozen teacher, mixed precision, XLA, JAX.

Tiny models (16x16 images, patch 4, depth 1, 5 classes) so the file runs in about a minute
or two; the formulas are recomputed here in float64 numpy, independently of the package.
"""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import subprocess_env

import keras_vit
from keras_vit.models import DistilledVisionTransformer
from keras_vit.training import losses

C = 5  # classes


def tiny_student(num_classes=C, **kwargs):
    return keras_vit.create_model(
        "deit_tiny_distilled_patch16_224",
        depth=1,
        image_size=16,
        patch_size=4,
        embed_dim=32,
        num_heads=2,
        num_classes=num_classes,
        **kwargs,
    )


def tiny_teacher(size=16):
    """A convnet with BatchNorm (whose moving statistics must never change)."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs / 255.0)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(C)(x), name="teacher")


def batch(n=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32"), rng.integers(0, C, n)


# --- the formulas, float64 numpy ---
def _log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference_loss(mode, y, cls, dist, teacher, alpha, tau=1.0, smoothing=0.0):
    targets = np.eye(C)[y] if np.ndim(y) == 1 else np.asarray(y, np.float64)
    targets = targets * (1 - smoothing) + smoothing / C
    label = -(targets * _log_softmax(cls)).sum(-1)
    if mode == "none":
        return float(np.mean(label))
    if mode == "hard":
        part = -_log_softmax(dist)[np.arange(len(dist)), np.argmax(teacher, -1)]
    else:
        log_pt = _log_softmax(np.asarray(teacher) / tau)
        part = (np.exp(log_pt) * (log_pt - _log_softmax(np.asarray(dist) / tau))).sum(-1)
        part = part * tau * tau
    return float(np.mean((1 - alpha) * label + alpha * part))


@pytest.mark.parametrize(
    "mode,labels,alpha,tau,smoothing",
    [("hard", "sparse", 0.5, 1.0, 0.1), ("soft", "soft", 0.3, 3.0, 0.0)],
)
def test_reported_loss_equals_formula(mode, labels, alpha, tau, smoothing):
    keras.utils.set_random_seed(0)
    student, teacher = tiny_student(), tiny_teacher()
    x, y = batch()
    if labels == "soft":  # a MixUp of two label sets
        y = 0.7 * np.eye(C)[y] + 0.3 * np.eye(C)[np.roll(y, 1)]
    cls, dist = student.heads_model.predict_on_batch(x)
    t = teacher.predict_on_batch(x)
    expected = reference_loss(mode, y, cls, dist, t, alpha, tau, smoothing)
    d = keras_vit.DeiTDistiller(
        student, teacher, mode, alpha=alpha, temperature=tau, label_smoothing=smoothing
    )
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    logs = d.train_on_batch(x, y, return_dict=True)
    assert abs(logs["loss"] - expected) <= 1e-5, (logs["loss"], expected)
    assert logs["teacher_agreement"] == np.mean(np.argmax(t, -1) == np.argmax((cls + dist) / 2, -1))


def test_soft_term_is_reference_code_times_num_classes():
    """Our soft term is per-example KL; DeiT's code divides the summed KL by B * C (numel)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    s, t, tau = rng.normal(size=(6, C)), rng.normal(size=(6, C)), 2.5
    st, tt = torch.from_numpy(s), torch.from_numpy(t)
    ref = torch.nn.functional.kl_div(
        torch.log_softmax(st / tau, 1),
        torch.log_softmax(tt / tau, 1),
        reduction="sum",
        log_target=True,
    ) * (tau * tau / st.numel())
    ours = np.mean(np.asarray(losses.soft_distillation_loss(s, t, tau)))
    np.testing.assert_allclose(ours, float(ref) * C, rtol=1e-5)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import keras_vit
    from test_distiller import batch, tiny_student, tiny_teacher

    def build(mode):
        keras.utils.set_random_seed(1)
        d = keras_vit.DeiTDistiller(
            tiny_student(), tiny_teacher(), mode, alpha=0.3, temperature=2.0, label_smoothing=0.1
        )
        # XLA is off: TF's XLA rejects MirroredStrategy over logical CPU devices
        d.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
        return d

    x, y = batch(8)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # one global batch of 8
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    for mode in ("hard", "soft"):
        one = build(mode)
        init = [w.numpy() for w in one.weights]
        cls, dist = one.student.heads_model.predict_on_batch(x)
        t = one.teacher.predict_on_batch(x)
        loss_1 = one.fit(ds, verbose=0, shuffle=False).history["loss"][0]
        with strategy.scope():
            two = build(mode)
        for v, w in zip(two.weights, init):
            v.assign(w)
        loss_2 = two.fit(ds, verbose=0, shuffle=False).history["loss"][0]
        pairs = list(zip(one.weights, two.weights))
        out[mode] = dict(
            loss_1=loss_1,
            loss_2=loss_2,
            weight_diff=max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in pairs),
            moved=max(float(np.abs(a.numpy() - w).max()) for a, w in zip(one.weights, init)),
            cls=cls.tolist(), dist=dist.tolist(), teacher=t.tolist(),
        )
    print("RESULT " + json.dumps(out))
    """
)


def _run(script, tmp_path, backend="tensorflow"):
    path = tmp_path / "script.py"
    path.write_text(script)
    env = subprocess_env(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_mirrored_two_replicas_same_loss_and_update_as_one_device(tmp_path):
    out = _run(MIRRORED_SCRIPT, tmp_path)
    assert out["replicas"] == 2
    _, y = batch(8)
    for mode in ("hard", "soft"):
        r = out[mode]
        expected = reference_loss(
            mode, y, np.array(r["cls"]), np.array(r["dist"]), np.array(r["teacher"]), 0.3, 2.0, 0.1
        )
        print(mode, {k: r[k] for k in ("loss_1", "loss_2", "weight_diff", "moved")}, expected)
        assert abs(r["loss_1"] - expected) <= 1e-5
        assert abs(r["loss_2"] - r["loss_1"]) <= 1e-5
        assert r["weight_diff"] <= 1e-5
        assert r["moved"] > 1e-2  # the step did move the weights


def test_teacher_frozen_bn_statistics_included():
    keras.utils.set_random_seed(2)
    student, teacher = tiny_student(), tiny_teacher()
    before = [w.numpy().copy() for w in teacher.weights]  # incl. BN moving mean/variance
    student_before = [w.numpy().copy() for w in student.weights]
    d = keras_vit.DeiTDistiller(student, teacher, "soft", temperature=2.0)
    d.compile(optimizer=keras.optimizers.AdamW(1e-2), jit_compile=True)
    x, y = batch(32)
    d.fit(x, y, batch_size=8, epochs=2, verbose=0)  # 8 steps
    assert teacher.trainable is False and d.trainable_weights[0] is not teacher.weights[0]
    assert len(d.trainable_weights) == len(student.trainable_weights)
    for a, b in zip(before, teacher.weights):
        np.testing.assert_array_equal(a, b.numpy())
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(student_before, student.weights))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_distillation_head_learns_only_from_teacher_term(alpha):
    keras.utils.set_random_seed(3)
    student = tiny_student()
    d = keras_vit.DeiTDistiller(student, tiny_teacher(), "hard", alpha=alpha)
    d.compile(optimizer=keras.optimizers.SGD(1.0))  # new = old - gradient
    head, head_dist = student.get_layer("head"), student.get_layer("head_dist")
    old = [v.numpy().copy() for v in (head.kernel, head_dist.kernel, head_dist.bias)]
    d.train_on_batch(*batch())
    step = [np.abs(v.numpy() - o).max() for v, o in zip((head.kernel, *head_dist.weights), old)]
    assert step[0] > 1e-4  # the class head always learns from the labels
    if alpha == 0:
        assert step[1] == 0 and step[2] == 0  # dist head gradient exactly zero
    else:
        assert step[1] > 1e-4 and step[2] > 1e-4


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_100_steps_under_mixed_precision_are_finite(policy):
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(4)
        student, teacher = tiny_student(), tiny_teacher()
    finally:
        keras.config.set_dtype_policy("float32")
    d = keras_vit.DeiTDistiller(student, teacher, "hard")
    d.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=True, steps_per_execution=20)
    assert d.dtype_policy.name == policy
    assert isinstance(d.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16"
    )
    x, y = batch(800, seed=4)
    running = []
    d.fit(
        x,
        y,
        batch_size=8,  # 100 steps
        verbose=0,
        shuffle=False,
        callbacks=[
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda b, logs: running.append(logs["loss"])
            )
        ],
    )
    cls, dist = student.heads_model(x[:8], training=False)
    # the blocks compute in low precision; the heads (layers/precision.py: classifier_dtype) and the
    # loss in float32
    assert student.get_layer("blocks_0").compute_dtype == policy.split("_")[1]
    assert keras.backend.standardize_dtype(cls.dtype) == "float32"
    loss = d.compute_loss(x[:8], y[:8], d(x[:8], training=True))
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    print(policy, "running mean loss every 20 steps:", running)
    assert len(running) == 5 and np.all(np.isfinite(running))
    assert all(np.all(np.isfinite(w.numpy())) for w in student.weights)
    assert all(w.dtype == "float32" for w in student.trainable_weights)


def test_fit_with_xla_callbacks_and_evaluate_on_averaged_output():
    keras.utils.set_random_seed(5)
    student = tiny_student()
    d = keras_vit.DeiTDistiller(student, tiny_teacher(24), "hard", label_smoothing=0.1)
    d.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        jit_compile=True,
        steps_per_execution=2,
        metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")],
    )
    x, y = batch(32)
    seen = []
    history = d.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        verbose=0,
        validation_data=batch(16, seed=9),
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e))],
    )
    assert seen == [0, 1] and d.jit_compile is True
    names = {"loss", "label_loss", "distillation_loss", "accuracy", "cls_accuracy"}
    names |= {"dist_accuracy", "teacher_agreement", "top2"}
    assert names | {f"val_{n}" for n in names} == set(history.history)
    xv, yv = batch(16, seed=9)
    logs = d.evaluate(xv, yv, batch_size=8, verbose=0, return_dict=True)
    logits = student.predict_on_batch(xv)  # the student's own (averaged) output
    np.testing.assert_allclose(
        logs["loss"], -_log_softmax(logits)[np.arange(16), yv].mean(), atol=1e-5
    )
    np.testing.assert_allclose(logs["accuracy"], np.mean(np.argmax(logits, -1) == yv))


def test_default_adapter_resizes_and_custom_adapter_is_used():
    keras.utils.set_random_seed(6)
    teacher = tiny_teacher(24)
    x, _ = batch(4)
    d = keras_vit.DeiTDistiller(tiny_student(), teacher, "hard")
    resized = keras.ops.image.resize(x, (24, 24), interpolation="bilinear")
    np.testing.assert_allclose(
        d(x)["teacher_logits"], teacher.predict_on_batch(np.asarray(resized)), atol=1e-5
    )
    d2 = keras_vit.DeiTDistiller(
        tiny_student(), tiny_teacher(), "soft", teacher_adapter=lambda im: 255.0 - im
    )
    np.testing.assert_allclose(
        d2(x)["teacher_logits"], d2.teacher.predict_on_batch(255.0 - x), atol=1e-5
    )


def test_none_mode_trains_a_plain_vit_on_labels():
    keras.utils.set_random_seed(7)
    vit = keras_vit.create_model(
        "vit_tiny_patch16_224",
        depth=1,
        image_size=16,
        patch_size=4,
        embed_dim=32,
        num_heads=2,
        num_classes=C,
    )
    d = keras_vit.DeiTDistiller(vit, None, "none", label_smoothing=0.1)
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = batch()
    expected = reference_loss("none", y, vit.predict_on_batch(x), None, None, 0.0, smoothing=0.1)
    logs = d.train_on_batch(x, y, return_dict=True)
    assert abs(logs["loss"] - expected) <= 1e-5
    assert "teacher_agreement" not in logs


def test_distiller_serialises_and_student_saves_alone(tmp_path):
    keras.utils.set_random_seed(8)
    student = tiny_student()
    d = keras_vit.DeiTDistiller(student, tiny_teacher(), "soft", alpha=0.2, temperature=3.0)
    d.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=False)  # XLA tested above
    x, y = batch(16)
    d.fit(x, y, batch_size=8, verbose=0)
    d.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert type(loaded) is keras_vit.DeiTDistiller
    assert {k: v for k, v in loaded.get_config().items() if k not in ("student", "teacher")} == {
        k: v for k, v in d.get_config().items() if k not in ("student", "teacher")
    }
    for key, value in d(x).items():
        np.testing.assert_array_equal(loaded(x)[key], value)
    student.save(tmp_path / "student.keras")
    alone = keras.saving.load_model(tmp_path / "student.keras")
    assert type(alone) is DistilledVisionTransformer
    assert len(alone.weights) == len(student.weights)
    np.testing.assert_array_equal(alone.predict_on_batch(x), student.predict_on_batch(x))


@pytest.mark.parametrize(
    "kwargs,bad",
    [
        (dict(distillation="medium"), "medium"),
        (dict(alpha=1.5), "1.5"),
        (dict(temperature=0.0), "0.0"),
        (dict(label_smoothing=1.0), "1.0"),
        (dict(teacher=None), "None"),
        (dict(teacher_adapter="resize"), "resize"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, bad):
    args = {"student": tiny_student(), "teacher": tiny_teacher(), **kwargs}
    with pytest.raises(ValueError, match=bad):
        keras_vit.DeiTDistiller(**args)


def test_hard_mode_needs_a_two_head_student_and_matching_classes():
    vit = keras_vit.create_model("vit_tiny_patch16_224", depth=1, image_size=16, patch_size=4)
    with pytest.raises(ValueError, match="VisionTransformer"):
        keras_vit.DeiTDistiller(vit, tiny_teacher(), "hard")
    with pytest.raises(ValueError, match="1000"):
        keras_vit.DeiTDistiller(tiny_student(num_classes=1000), tiny_teacher(), "hard")


JAX_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import keras
    import keras_vit
    from test_distiller import batch, tiny_student, tiny_teacher

    assert keras.backend.backend() == "jax"
    keras.utils.set_random_seed(0)
    d = keras_vit.DeiTDistiller(tiny_student(), tiny_teacher(), "hard", alpha=0.5)
    d.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=True)
    x, y = batch(8)
    cls, dist = d.student.heads_model.predict_on_batch(x)
    t = d.teacher.predict_on_batch(x)
    before = [w.numpy().copy() for w in d.teacher.weights]
    first = d.train_on_batch(x, y, return_dict=True)["loss"]
    hist = d.fit(*batch(24, seed=1), batch_size=8, verbose=0).history
    teacher_same = all(np.array_equal(a, b.numpy()) for a, b in zip(before, d.teacher.weights))
    print("RESULT " + json.dumps(dict(
        first=float(first), losses=hist["loss"], teacher_same=teacher_same,
        cls=cls.tolist(), dist=dist.tolist(), teacher=t.tolist(),
    )))
    """
)


def test_jax_backend_few_steps(tmp_path):
    pytest.importorskip("jax")
    out = _run(JAX_SCRIPT, tmp_path, backend="jax")
    _, y = batch(8)
    expected = reference_loss(
        "hard", y, np.array(out["cls"]), np.array(out["dist"]), np.array(out["teacher"]), 0.5
    )
    assert abs(out["first"] - expected) <= 1e-5
    assert out["teacher_same"] and np.all(np.isfinite(out["losses"]))
