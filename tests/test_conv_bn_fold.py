"""`ConvNormAct` at inference on TensorFlow's graph (and eager) folds BatchNorm into its conv
(kernel * s, bias beta - mean * s, s = gamma / sqrt(var + eps)); under XLA (and so on JAX) it
keeps conv -> BN, which XLA fuses. Every path must equal conv -> BN -> activation to float32
rounding, and training must still normalise with the batch statistics and update BN's moving
averages."""

import contextlib
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import executed_ops, require_onednn_graph, subprocess_env

from keras_vit.layers.mobilevit_blocks import ConvNormAct

# (filters, kernel_size, strides, depthwise, activation): MobileViT's kinds of ConvNormAct
CASES = [
    (12, 3, 2, False, "silu"),  # stem: strided 3x3, explicit symmetric padding
    (12, 3, 1, False, "silu"),  # conv_kxk / conv_fusion: 'same'
    (16, 1, 1, False, "silu"),  # conv1_1x1 expansion
    (8, 1, 1, False, None),  # conv3_1x1 / conv_proj: linear
    (8, 3, 1, True, "silu"),  # depthwise, 'same'
    (8, 3, 2, True, "silu"),  # strided depthwise, explicit padding
    (8, 3, 1, True, "relu"),
]


def _layer(filters, kernel_size, strides, depthwise, activation, channels, seed=0):
    layer = ConvNormAct(filters, kernel_size, strides, depthwise=depthwise, activation=activation)
    layer.build((None, 9, 10, channels))
    rng = np.random.default_rng(seed)
    bn = layer.bn
    # BN statistics far from the (0, 1) init, so a missing term of the fold shows
    bn.gamma.assign(rng.uniform(0.5, 2.0, filters).astype("float32"))
    bn.beta.assign(rng.normal(0, 1.0, filters).astype("float32"))
    bn.moving_mean.assign(rng.normal(0, 2.0, filters).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.1, 4.0, filters).astype("float32"))
    layer.conv.kernel.assign(rng.normal(0, 0.5, layer.conv.kernel.shape).astype("float32"))
    return layer


def _reference(layer, x, mean, var):
    """conv (the layer's own conv, eager) -> BN with the given statistics -> activation."""
    if layer._explicit_pad:
        p = layer._explicit_pad
        x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    y = np.asarray(layer.conv(x), np.float64)
    bn = layer.bn
    y = (y - mean) / np.sqrt(var + bn.epsilon) * np.asarray(bn.gamma) + np.asarray(bn.beta)
    if layer.activation == "silu":
        return y / (1 + np.exp(-y))
    if layer.activation == "relu":
        return np.maximum(y, 0)
    return y


def _run(layer, x, mode, training=None):
    if mode == "eager":
        return np.asarray(layer(x, training=training))
    fn = tf.function(lambda t: layer(t, training=training), jit_compile=mode == "xla")
    return np.asarray(fn(tf.constant(x)))


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}x{c[1]}s{c[2]}dw{int(c[3])}{c[4]}")
def test_folded_inference_equals_conv_bn_act(case, mode):
    filters, _, _, depthwise, _ = case
    channels = filters if depthwise else 5
    layer = _layer(*case, channels)
    x = np.random.default_rng(1).normal(0, 1, (2, 9, 10, channels)).astype("float32")
    bn = layer.bn
    ref = _reference(layer, x, np.asarray(bn.moving_mean), np.asarray(bn.moving_variance))
    for training in (None, False):
        out = _run(layer, x, mode, training)
        assert out.shape == ref.shape
        err = np.abs(out - ref).max()
        print(f"max |ConvNormAct - conv/BN/act| {err:.2e} ({mode}, training={training})")
        assert err < 2e-5 * max(1.0, np.abs(ref).max()), err


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("depthwise", [False, True])
def test_training_uses_batch_statistics_and_updates_them(depthwise, mode):
    filters = 8
    layer = _layer(filters, 3, 1, depthwise, "silu", filters if depthwise else 5, seed=2)
    channels = layer.conv.kernel.shape[-2]
    x = np.random.default_rng(3).normal(0.5, 2, (4, 9, 10, channels)).astype("float32")
    old_mean = np.asarray(layer.bn.moving_mean).copy()
    old_var = np.asarray(layer.bn.moving_variance).copy()
    conv_out = np.asarray(layer.conv(x), np.float64)  # 'same', stride 1: no explicit padding
    batch_mean, batch_var = conv_out.mean((0, 1, 2)), conv_out.var((0, 1, 2))
    ref = _reference(layer, x, batch_mean, batch_var)
    out = _run(layer, x, mode, training=True)
    err = np.abs(out - ref).max()
    print(f"max |training - conv/batch-BN/act| {err:.2e}")
    assert err < 2e-5 * max(1.0, np.abs(ref).max()), err
    m = layer.bn.momentum
    np.testing.assert_allclose(
        layer.bn.moving_mean, m * old_mean + (1 - m) * batch_mean, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        layer.bn.moving_variance, m * old_var + (1 - m) * batch_var, rtol=1e-4, atol=1e-5
    )


def test_frozen_batchnorm_folds_even_when_training():
    """`bn.trainable = False` (fine-tuning with frozen BN): Keras's BN then uses the moving
    statistics in training too, so the folded path must be taken and match them."""
    layer = _layer(8, 1, 1, False, "silu", 5)
    layer.bn.trainable = False
    x = np.random.default_rng(4).normal(0, 1, (2, 9, 10, 5)).astype("float32")
    bn = layer.bn
    ref = _reference(layer, x, np.asarray(bn.moving_mean), np.asarray(bn.moving_variance))
    before = np.asarray(bn.moving_mean).copy()
    out = np.asarray(layer(x, training=True))
    assert np.abs(out - ref).max() < 2e-5 * max(1.0, np.abs(ref).max())
    np.testing.assert_array_equal(bn.moving_mean, before)


def test_bfloat16_fold_close_to_float32():
    """A bf16 layer folds in float32 and rounds the folded kernel once: within bf16 rounding
    (a few 2^-8 relative) of the float32 layer with the same weights."""
    f32 = _layer(12, 3, 1, False, "silu", 5)
    bf16 = ConvNormAct(12, 3, 1, activation="silu", dtype="bfloat16")
    bf16.build((None, 9, 10, 5))
    for src, dst in zip(f32.weights, bf16.weights):
        dst.assign(keras.ops.cast(src, dst.dtype))
    x = np.random.default_rng(5).normal(0, 1, (2, 9, 10, 5)).astype("float32")
    ref = np.asarray(f32(x))
    for mode in ("eager", "graph"):
        out = np.asarray(keras.ops.cast(_run(bf16, x, mode), "float32"))
        err = np.abs(out - ref).max() / np.abs(ref).max()
        print(f"bf16 {mode}: max relative |bf16 - f32| {err:.2e}")
        assert err < 3e-2, err


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("strides", [1, 2])
def test_depthwise_is_one_fused_call_on_tf_graph(strides, dtype, tmp_path):
    """On TF's oneDNN graph a depthwise ConvNormAct at inference is one fused oneDNN call:
    padding, folded BatchNorm, bias and SiLU inside it (no Pad, no separate Swish pass), as
    a grouped Conv2D; traced for a converter (`standard_ops`) it keeps the depthwise op.
    Both give the eager layer's answer."""
    from keras_vit.layers.trace_context import standard_ops

    require_onednn_graph()
    layer = _layer(8, 3, strides, True, "silu", 8)
    if dtype != "float32":
        cast = ConvNormAct(8, 3, strides, depthwise=True, dtype=dtype)
        cast.build((None, 9, 10, 8))
        for src, dst in zip(layer.weights, cast.weights):
            dst.assign(keras.ops.cast(src, dst.dtype))
        layer = cast
    x = keras.ops.cast(np.random.default_rng(6).normal(0, 1, (2, 9, 10, 8)), dtype)
    eager = np.asarray(keras.ops.cast(layer(x, training=False), "float32"))
    tol = 1e-5 if dtype == "float32" else 0.02 * np.abs(eager).max()
    for standard in (False, True):
        with standard_ops() if standard else contextlib.nullcontext():
            fn = tf.function(lambda t: layer(t, training=False))
            out = np.asarray(tf.cast(fn(x), tf.float32))
        ops = executed_ops(fn, x, tmp_path / str(standard))
        # (the Muls left are the fold's, on the (3, 3, 8, 1) kernel, not on the map)
        ops = [op for op in ops if op.startswith("_Mkl") or op in ("Pad", "Sigmoid")]
        if standard:
            assert any("DepthwiseConv2dNative" in op for op in ops), ops
        else:
            assert ops == ["_MklNativeFusedConv2D"], ops
        np.testing.assert_allclose(out, eager, rtol=0, atol=tol)


JAX_SCRIPT = """
import json, sys
import numpy as np, keras
from keras_vit.layers.mobilevit_blocks import ConvNormAct
assert keras.backend.backend() == "jax"
out = {}
rng = np.random.default_rng(0)
for depthwise in (False, True):
    layer = ConvNormAct(8, 3, 2, depthwise=depthwise)
    channels = 8 if depthwise else 5
    layer.build((None, 9, 10, channels))
    bn = layer.bn
    bn.moving_mean.assign(rng.normal(0, 2, 8).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.1, 4, 8).astype("float32"))
    bn.beta.assign(rng.normal(0, 1, 8).astype("float32"))
    x = rng.normal(0, 1, (2, 9, 10, channels)).astype("float32")
    y = np.asarray(layer.conv(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))), np.float64)
    y = (y - np.asarray(bn.moving_mean)) / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
    y = y * np.asarray(bn.gamma) + np.asarray(bn.beta)
    ref = y / (1 + np.exp(-y))
    out[str(depthwise)] = float(np.abs(np.asarray(layer(x)) - ref).max())
print(json.dumps(out))
"""


def test_inference_on_jax():
    pytest.importorskip("jax")
    env = subprocess_env()
    env["KERAS_BACKEND"] = "jax"
    proc = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errs = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"jax: max |ConvNormAct - conv/BN/act| {errs}")
    assert max(errs.values()) < 2e-5, errs
