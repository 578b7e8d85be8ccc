"""`LayerNorm` and `GroupNorm1` on TensorFlow's graph at inference are remapper's
`_MklLayerNorm` (oneDNN's fused kernel, written in Keras 2's FusedBatchNormV3 form);
everywhere else they are Keras's `LayerNormalization` / `GroupNormalization(groups=1)`. Every
path must equal the norm computed in float64, and the fused kernel must really run where it
is meant to (the executed ops, from TF's profiler)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vit.layers.layer_norm import GroupNorm1, LayerNorm
from keras_vit.layers.trace_context import standard_ops
from tests.helpers import executed_ops

C = 48


def _layer(dtype="float32", epsilon=1e-6, seed=0, kind=LayerNorm, shape=(None, C)):
    layer = kind(epsilon=epsilon, dtype=dtype)
    layer.build((None,) + tuple(shape[1:]))
    rng = np.random.default_rng(seed)
    # gamma and beta far from (1, 0), so a dropped or swapped term shows
    layer.gamma.assign(rng.uniform(0.5, 2.0, C).astype(layer.gamma.dtype))
    layer.beta.assign(rng.normal(0, 1.0, C).astype(layer.beta.dtype))
    return layer


def _inputs(shape, seed=1):
    rng = np.random.default_rng(seed)
    # rows of different mean and scale: the statistics are per row
    rows = rng.normal(0, 1, shape) * rng.uniform(0.1, 5.0, shape[:-1] + (1,))
    return (rows + rng.normal(0, 3, shape[:-1] + (1,))).astype("float32")


def _reference(layer, x):
    """Layer norm over the last axis; GroupNorm1 over every axis but the batch."""
    x = np.asarray(x, np.float64)
    axes = -1 if isinstance(layer, LayerNorm) else tuple(range(1, x.ndim))
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)
    gamma = np.asarray(keras.ops.cast(layer.gamma, "float32"), np.float64)
    beta = np.asarray(keras.ops.cast(layer.beta, "float32"), np.float64)
    return (x - mean) / np.sqrt(var + layer.epsilon) * gamma + beta


def _run(layer, x, mode, training=False):
    call = lambda t: tf.cast(layer(t, training=training), tf.float32)  # noqa: E731
    if mode == "eager":
        return np.asarray(call(x))
    fn = tf.function(call, jit_compile=mode == "xla")
    return np.asarray(fn(x))


@pytest.mark.parametrize("mode", ["graph", "xla", "eager", "standard"])
@pytest.mark.parametrize(
    "kind, shape",
    [(LayerNorm, (4, 7, C)), (LayerNorm, (5, C)), (GroupNorm1, (3, 4, 5, C)), (GroupNorm1, (3, C))],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "mixed_bfloat16"])
def test_every_path_equals_the_norm(dtype, kind, shape, mode):
    layer = _layer(dtype, kind=kind, shape=shape)
    x = tf.cast(tf.constant(_inputs(shape)), layer.compute_dtype)
    with standard_ops() if mode == "standard" else _no_context():
        out = _run(layer, x, "graph" if mode == "standard" else mode)
    ref = _reference(layer, tf.cast(x, tf.float32))  # of the input as the layer sees it
    if dtype == "float32":
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
    else:  # statistics in float32, one rounding of the output to bfloat16 (2^-8 relative)
        np.testing.assert_allclose(out, ref, atol=1e-2, rtol=2**-7)


def test_dynamic_batch_and_training_path():
    layer = _layer()
    x = _inputs((3, 5, C))
    fn = tf.function(
        lambda t: layer(t, training=False), input_signature=[tf.TensorSpec((None, 5, C))]
    )
    np.testing.assert_allclose(np.asarray(fn(x)), _reference(layer, x), atol=2e-5, rtol=1e-5)

    @tf.function
    def grads(t):  # training: Keras's LayerNormalization, which has a gradient
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(t, training=True) ** 2)
        return tape.gradient(loss, layer.trainable_variables)

    g_gamma, g_beta = grads(tf.constant(x))
    normed = (_reference(layer, x) - np.asarray(layer.beta)) / np.asarray(layer.gamma)
    out = _reference(layer, x)
    np.testing.assert_allclose(g_beta, (2 * out).sum((0, 1)), rtol=1e-4)
    np.testing.assert_allclose(g_gamma, (2 * out * normed).sum((0, 1)), rtol=1e-4)


class _no_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _onednn_enabled():
    from tensorflow.python.util import _pywrap_util_port

    return _pywrap_util_port.IsMklEnabled()


@pytest.mark.parametrize(
    "kind, shape, dtype",
    [
        (LayerNorm, (8, 197, C), "float32"),
        (LayerNorm, (8, 197, C), "bfloat16"),
        (GroupNorm1, (8, 4, 64, C), "bfloat16"),
    ],
)
def test_graph_inference_runs_the_onednn_kernel(dtype, kind, shape, tmp_path):
    if not _onednn_enabled():
        pytest.skip("this TensorFlow build has no oneDNN: there is no fused kernel to run")
    layer = _layer(dtype, kind=kind, shape=shape)
    x = tf.cast(tf.constant(_inputs(shape)), dtype)  # static shape, as predict traces
    fused = executed_ops(tf.function(lambda t: layer(t, training=False)), x, tmp_path / "a")
    assert "_MklLayerNorm" in fused and "Mean" not in fused, sorted(fused)
    with standard_ops():  # converters' form: Keras's ops, no training-mode batch norm
        plain = executed_ops(tf.function(lambda t: layer(t, training=False)), x, tmp_path / "b")
    assert "_MklLayerNorm" not in plain and "Mean" in plain, sorted(plain)


def test_float32_group_norm_keeps_the_keras_form_on_the_graph(tmp_path):
    """Float32 GroupNorm1 at graph inference is Keras's reductions, not oneDNN's kernel over
    the long flattened rows nor the tiled gamma and beta (measured slower; GroupNorm1 doc)."""
    shape = (8, 4, 64, C)
    layer = _layer("float32", kind=GroupNorm1, shape=shape)
    x = tf.constant(_inputs(shape))
    ops = executed_ops(tf.function(lambda t: layer(t, training=False)), x, tmp_path / "a")
    assert "Mean" in ops and not {"_MklLayerNorm", "Tile"} & set(ops), sorted(ops)


@pytest.mark.parametrize(
    "kind, base, shape",
    [
        (LayerNorm, keras.layers.LayerNormalization, (7, C)),
        (GroupNorm1, keras.layers.GroupNormalization, (3, 5, C)),
    ],
)
def test_keeps_the_keras_layer_config_and_weights(kind, base, shape, tmp_path):
    layer = _layer(epsilon=1e-5, kind=kind, shape=(None,) + shape)
    model = keras.Sequential([keras.Input(shape), layer])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[0], kind) and isinstance(loaded.layers[0], base)
    assert loaded.layers[0].epsilon == 1e-5
    x = _inputs((2,) + shape)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
