"""Models default to XLA on TF/JAX (Keras's "auto" would turn it off on CPU), same numbers;
on a TF CPU bfloat16 models, MobileViT v1 in float32, and ViT's float32 `predict` take the
oneDNN graph; bf16 models round-trip through `.keras` as bf16."""

import keras
import numpy as np
import pytest

import keras_vit


def test_vit_trains_under_xla_and_predicts_on_the_graph_with_the_same_outputs(tmp_path):
    """ViT: "auto" trains under XLA on TF and JAX; on a TF CPU `predict` takes TensorFlow's
    graph (faster there in float32, `VisionTransformer.float32_cpu_graph`), same numbers. An
    explicit `jit_compile` wins for both; a `.keras` file keeps "auto" or the explicit value."""
    tf_cpu = keras.backend.backend() == "tensorflow"
    model = keras_vit.create_model("vit_tiny_patch16_224", depth=2, image_size=64)
    assert model.jit_compile is True  # uncompiled model: fit would run under XLA
    assert model.predict_jit_compile is (not tf_cpu)
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    default = model.predict_on_batch(images)
    model.compile(jit_compile=True)  # explicit choice wins, predict included
    assert model.jit_compile is True and model.predict_jit_compile is True
    np.testing.assert_allclose(model.predict_on_batch(images), default, atol=1e-5)
    model.compile(jit_compile=False)
    assert model.jit_compile is False and model.predict_jit_compile is False
    np.testing.assert_allclose(model.predict_on_batch(images), default, atol=1e-5)
    for jit, expected in (("auto", (True, not tf_cpu)), (True, (True, True))):
        model.compile(optimizer="sgd", loss="mse", jit_compile=jit)
        assert (model.jit_compile, model.predict_jit_compile) == expected, jit
        path = tmp_path / f"{jit}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert loaded.compiled and (loaded.jit_compile, loaded.predict_jit_compile) == expected


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_mobilevit_float32_takes_the_graph_on_cpu_and_int8_keeps_xla(name):
    """MobileViT v1 and v2 in float32 on a TF CPU: TensorFlow's graph for predict and fit
    (measured faster there than XLA, see `MobileViTBase.float32_cpu_graph`), same outputs as
    XLA; int8 keeps XLA (int8 matmuls have no oneDNN kernel on the graph)."""
    import tensorflow as tf

    assert keras.backend.backend() == "tensorflow" and not tf.config.list_logical_devices("GPU")
    # seeded: with an unseeded init the graph-vs-XLA gap of v2 0.5 varied from run to run
    # around the tolerance (6.7e-6, 1.2e-5, 9.0e-6 for seeds 0, 1, 2 on an AMD EPYC)
    keras.utils.set_random_seed(0)
    model = keras_vit.create_model(name, image_size=64, num_classes=10)
    assert model.jit_compile is False and model.predict_jit_compile is False  # fit too
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    on_graph = model.predict_on_batch(images)
    model.compile(jit_compile=True)
    under_xla = model.predict_on_batch(images)
    assert np.abs(under_xla).max() > 1e-2  # (not a zero head)
    np.testing.assert_allclose(under_xla, on_graph, atol=1e-5)
    model.compile()
    assert model.jit_compile is False
    fresh = keras_vit.create_model(name, image_size=64, num_classes=10)
    fresh.quantize("int8")
    assert fresh.jit_compile is True and fresh.predict_jit_compile is True


def test_auto_keeps_keras_choice_under_a_strategy():
    import tensorflow as tf

    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = keras_vit.create_model("vit_tiny_patch16_224", depth=1, image_size=32)
        model.compile(optimizer="sgd", loss="mse")
    assert model.jit_compile is False  # XLA + MirroredStrategy fails on logical CPU replicas


def test_bfloat16_takes_the_onednn_graph_on_cpu_and_keeps_its_dtype(tmp_path):
    """bf16 on a TF CPU: TensorFlow's graph (oneDNN's bf16 kernels; XLA on CPU runs bf16 below
    its float32 speed), whichever way the dtype is asked; the model records its policy, so a
    `.keras` file reloads bf16 with identical outputs; logits close to float32."""
    import tensorflow as tf

    assert keras.backend.backend() == "tensorflow" and not tf.config.list_logical_devices("GPU")
    kw = dict(depth=2, image_size=64, num_classes=10)
    reference = keras_vit.create_model("vit_tiny_patch16_224", **kw)
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    expected = reference.predict_on_batch(images)
    for dtype in ("bfloat16", "mixed_bfloat16"):
        model = keras_vit.create_model("vit_tiny_patch16_224", dtype=dtype, **kw)
        model.set_weights(reference.get_weights())
        assert model.dtype_policy.name == dtype
        assert model.jit_compile is False, dtype
        out = np.asarray(model.predict_on_batch(images), np.float32)
        corr = np.corrcoef(out.ravel(), expected.ravel())[0, 1]
        assert corr > 0.99 and not np.array_equal(out, expected), (dtype, corr)
        path = tmp_path / f"{dtype}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert loaded.dtype_policy.name == dtype
        assert loaded.get_layer("blocks_0").compute_dtype == "bfloat16"
        np.testing.assert_array_equal(np.asarray(loaded.predict_on_batch(images), np.float32), out)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = keras_vit.create_model("vit_tiny_patch16_224", **kw)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.dtype_policy.name == "mixed_bfloat16" and model.jit_compile is False


def test_bfloat16_models_compute_their_logits_in_float32():
    """The classifier heads of a bf16 model run in float32: its logits are the float32 matmul
    of its (bf16) pre-logit features, not that matmul rounded to bf16's 8 bits (which moves
    logits by ~1e-2 and flips top-1 between close classes)."""
    cases = {
        "deit_tiny_distilled_patch16_224": dict(depth=1, image_size=32),
        "vit_tiny_patch16_224": dict(depth=1, image_size=32),
        "mobilevit_xxs": dict(image_size=64),  # head: global pool of the last map, then `fc`
    }
    for name, kw in cases.items():
        model = keras_vit.create_model(name, dtype="bfloat16", num_classes=50, **kw)
        heads = [layer for layer in model.layers if layer.name in ("head", "head_dist")]
        # the logits and the heads' inputs from one run of one graph (a graph whose output is
        # a head's input may fuse its last ops differently, so bf16 rounds them differently)
        probe = keras.Model(model.input, [model.output] + [h.input for h in heads])
        size = kw["image_size"]
        images = np.random.default_rng(1).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
        assert np.asarray(model.predict_on_batch(images)).dtype == np.float32
        logits, *feats = probe.predict_on_batch(images)
        expected = []
        for head, f in zip(heads, feats):
            f = np.asarray(f, np.float64)
            if f.ndim == 4:  # (B, H, W, C) feature map: MobileViT's head pools it first
                f, head = f.mean(axis=(1, 2)), head.fc
            kernel, bias = (np.asarray(w, np.float64) for w in head.get_weights())
            expected.append(f @ kernel + bias)
        expected = sum(expected) / len(expected)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(logits, expected, atol=1e-5 * scale, err_msg=name)
