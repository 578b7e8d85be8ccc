"""Layer-level contracts: timm's resampling, drop path statistics, validation, shapes."""

import math

import keras
import numpy as np
import pytest

from keras_vit import layers
from tests.helpers import executed_ops, require_onednn_graph


@pytest.mark.parametrize(
    "old,new,prefix",
    [
        ((14, 14), (24, 24), 1),
        ((24, 24), (12, 12), 1),
        ((14, 14), (10, 17), 2),
        ((7, 7), (9, 9), 0),
    ],
)
@pytest.mark.parametrize("antialias", [True, False])
def test_resample_abs_pos_embed_matches_timm(old, new, prefix, antialias):
    torch = pytest.importorskip("torch")
    timm_layers = pytest.importorskip("timm.layers")
    rng = np.random.default_rng(0)
    posemb = rng.standard_normal((1, prefix + old[0] * old[1], 16)).astype(np.float32)
    expected = timm_layers.resample_abs_pos_embed(
        torch.from_numpy(posemb),
        list(new),
        old_size=list(old),
        num_prefix_tokens=prefix,
        antialias=antialias,
    ).numpy()
    ours = layers.resample_abs_pos_embed(posemb, new, old, prefix, antialias=antialias)
    assert ours.shape == (1, prefix + new[0] * new[1], 16)
    np.testing.assert_array_equal(ours[:, :prefix], posemb[:, :prefix])  # prefix kept out
    assert np.max(np.abs(ours - expected)) < 1e-5


def test_resample_rejects_bad_grids():
    with pytest.raises(ValueError, match="not square"):
        layers.resample_abs_pos_embed(np.zeros((1, 1 + 12, 4)), (4, 4))
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        layers.resample_abs_pos_embed(np.zeros((1, 1 + 16, 4)), (4, 4), old_size=(3, 5))


def test_drop_path_keeps_expectation_and_drops_whole_samples():
    rate, n = 0.3, 4000
    layer = layers.DropPath(rate, seed=1)
    x = np.ones((n, 5, 3), np.float32)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(n, -1)
    # every sample is either dropped entirely or kept and scaled by 1 / (1 - rate)
    kept = np.all(np.isclose(per_sample, 1 / (1 - rate)), axis=1)
    dropped = np.all(per_sample == 0, axis=1)
    assert np.all(kept | dropped)
    # drop fraction within 4 standard deviations of the binomial rate; mean preserved
    sd = np.sqrt(rate * (1 - rate) / n)
    assert abs(dropped.mean() - rate) < 4 * sd
    assert abs(y.mean() - 1.0) < 4 * sd / (1 - rate)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_attention_matches_explicit_softmax():
    attn = layers.MultiHeadSelfAttention(32, 4)
    x = np.random.default_rng(0).standard_normal((2, 9, 32)).astype(np.float32)
    fused = keras.ops.convert_to_numpy(attn(x))
    explicit, weights = attn(x, return_attention_scores=True)
    np.testing.assert_allclose(fused, keras.ops.convert_to_numpy(explicit), atol=1e-5)
    w = keras.ops.convert_to_numpy(weights)
    assert w.shape == (2, 4, 9, 9)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def _attention_reference(attn, x):
    """timm's Attention in float64 numpy from the layer's weights: x (B, N, D) -> (B, N, D)."""
    b, n, d = x.shape
    h, hd = attn.num_heads, attn.head_dim
    w = [np.asarray(keras.ops.cast(v, "float32"), np.float64) for v in attn.weights]
    qkv = (x @ w[0] + w[1]).reshape(b, n, 3, h, hd).transpose(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
    logits = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) * hd**-0.5
    p = np.exp(logits - logits.max(-1, keepdims=True))
    out = (p / p.sum(-1, keepdims=True)) @ qkv[2]  # (B, h, N, hd)
    return out.transpose(0, 2, 1, 3).reshape(b, n, d) @ w[2] + w[3]


# (dim, heads, tokens): short sequences, and long ones of narrow heads, which TF's oneDNN
# graph runs head by head (tf_attention.heads_one_at_a_time)
ATTENTION_SHAPES = [(48, 4, 11), (32, 4, 128)]


@pytest.mark.parametrize("dim, heads, tokens", ATTENTION_SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_paths_match_timm_formula(dtype, dim, heads, tokens):
    """Eager, TF's graph (one qkv transpose; bf16 softmax read directly by oneDNN; long
    sequences head by head) and XLA all compute timm's attention; bf16 within its rounding
    (8 bits)."""
    attn = layers.MultiHeadSelfAttention(dim, heads, dtype=dtype)
    attn.build((None, tokens, dim))
    rng = np.random.default_rng(3)
    for v in attn.weights:  # every weight random: a swapped q/k/v or head order shows
        v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    x = rng.normal(0, 1, (2, tokens, dim)).astype(np.float32)
    x_in = keras.ops.cast(x, dtype)
    ref = _attention_reference(attn, np.asarray(keras.ops.cast(x_in, "float32"), np.float64))
    residual = keras.ops.cast(rng.normal(0, 1, (2, tokens, dim)).astype(np.float32), dtype)
    runs = {"eager": lambda: attn(x_in)}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        runs["graph"] = lambda: tf.function(attn)(x_in)
        runs["xla"] = lambda: tf.function(attn, jit_compile=True)(x_in)
        # the residual added after the projection (fused into it on the graph)
        runs["graph_residual"] = lambda: tf.function(attn)(x_in, residual=residual) - residual
    for name, run in runs.items():
        out = np.asarray(keras.ops.cast(run(), "float32"))
        if dtype == "float32":
            np.testing.assert_allclose(out, ref, atol=2e-5, err_msg=name)
        else:
            err = np.abs(out - ref).max() / np.abs(ref).max()
            corr = np.corrcoef(out.ravel(), ref.ravel())[0, 1]
            assert err < 0.03 and corr > 0.9995, (name, err, corr)


def test_heads_one_at_a_time_rule():
    """Head by head where the logits dwarf q, k and v: MobileViT's 256-token stage with
    head_dim 16 (XXS) or 24 (XS); not MobileViT-S (36), ViT/DeiT (197 tokens, 64), short
    or unknown sequences."""
    from keras_vit.layers.tf_attention import heads_one_at_a_time

    taken = [(256, 16), (256, 24), (128, 16), (1024, 64)]
    not_taken = [(256, 36), (197, 64), (577, 96), (64, 4), (127, 8), (None, 16)]
    assert all(heads_one_at_a_time(n, hd) for n, hd in taken)
    assert not any(heads_one_at_a_time(n, hd) for n, hd in not_taken)


@pytest.mark.parametrize("dim, heads, tokens", ATTENTION_SHAPES)
def test_long_sequences_attend_head_by_head_on_tf_graph(dim, heads, tokens, tmp_path):
    """On TF's oneDNN graph a long sequence of narrow heads runs two matmuls per head over
    `(B, N, N)` logits; a short one two batched over all heads."""
    require_onednn_graph()
    import tensorflow as tf

    attn = layers.MultiHeadSelfAttention(dim, heads)
    x = np.random.default_rng(5).normal(0, 1, (2, tokens, dim)).astype(np.float32)
    ops = executed_ops(tf.function(lambda t: attn(t)), x, tmp_path)
    per_head = tokens >= 128
    assert ops.count("_MklBatchMatMulV2") == (2 * heads if per_head else 2), sorted(ops)
    assert ops.count("_MklSoftmax") == (heads if per_head else 1), sorted(ops)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_block_residuals_fuse_into_the_matmuls_on_tf_graph(dtype, tmp_path):
    """On TF's oneDNN graph a block without layer scale adds each residual inside the
    matmul before it (no separate AddV2 over the tokens), with the eager block's answer."""
    require_onednn_graph()
    import tensorflow as tf

    block = layers.TransformerBlock(48, 4, dtype=dtype)
    block.build((None, 11, 48))
    rng = np.random.default_rng(4)
    for v in block.weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    x = keras.ops.cast(rng.normal(0, 1, (2, 11, 48)).astype(np.float32), dtype)
    ops = executed_ops(tf.function(lambda t: block(t, training=False)), x, tmp_path)
    assert "AddV2" not in ops and ops.count("_MklNativeFusedMatMul") == 4, sorted(ops)
    graph = np.asarray(tf.cast(tf.function(lambda t: block(t, training=False))(x), tf.float32))
    eager = np.asarray(keras.ops.cast(block(x, training=False), "float32"))
    assert np.abs(eager).max() > 1.0  # the branches matter, not just the residual
    tol = 1e-5 if dtype == "float32" else 0.05 * np.abs(eager).max()
    np.testing.assert_allclose(graph, eager, rtol=0, atol=tol)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: layers.MultiHeadSelfAttention(30, 4), "divisible"),
        (lambda: layers.MultiHeadSelfAttention(32, 0), "num_heads"),
        (lambda: layers.DropPath(1.5), "1.5"),
        (lambda: layers.PatchEmbedding(-2, 8), "-2"),
        (lambda: layers.Mlp(8, activation="nope"), "nope"),
        (lambda: layers.ImageNormalization((0.5,), (0.5, 0.5)), "mean"),
        (lambda: layers.LayerScale("x"), "init_values"),
    ],
)
def test_bad_arguments_name_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_patch_embedding_rejects_non_multiple():
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        layers.PatchEmbedding(16, 8).build((None, 30, 32, 3))


@pytest.mark.parametrize(
    "layer,shape",
    [
        (layers.PatchEmbedding(4, 8), (2, 16, 12, 3)),
        (layers.PrependToken(), (2, 5, 8)),
        (layers.PositionEmbedding(), (2, 5, 8)),
        (layers.MultiHeadSelfAttention(8, 2), (2, 5, 8)),
        (layers.Mlp(16, out_dim=4), (2, 5, 8)),
        (layers.LayerScale(0.1), (2, 5, 8)),
        (layers.TransformerBlock(8, 2, init_values=0.1, drop_path=0.1), (2, 5, 8)),
        (layers.ImageNormalization((0.5,) * 3, (0.25,) * 3), (2, 4, 4, 3)),
    ],
)
def test_compute_output_shape_and_config_round_trip(layer, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = keras.ops.convert_to_numpy(layer(x))
    assert tuple(layer.compute_output_shape(shape)) == y.shape
    clone = layer.__class__.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)), y)


@pytest.mark.parametrize(
    "kernel,strides,padding,use_bias",
    [(3, 1, "same", False), (3, 2, "valid", True), (5, 1, "same", True), (2, 1, "same", False)],
)
def test_shift_add_depthwise_equals_keras_depthwise(
    kernel, strides, padding, use_bias, monkeypatch
):
    x = np.random.default_rng(0).standard_normal((2, 13, 12, 6)).astype(np.float32)
    ours = layers.ShiftAddDepthwiseConv2D(kernel, strides, padding=padding, use_bias=use_bias)
    ref = keras.layers.DepthwiseConv2D(kernel, strides, padding=padding, use_bias=use_bias)
    ref(x), ours(x)  # build both
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in ref.get_weights()]
    ref.set_weights(weights)
    ours.set_weights(weights)
    expected = keras.ops.convert_to_numpy(ref(x))
    y = keras.ops.convert_to_numpy(ours(x))  # eager: the ordinary convolution
    np.testing.assert_allclose(y, expected, atol=1e-5)
    if keras.backend.backend() == "tensorflow":  # under XLA: the shifted products
        import tensorflow as tf

        def no_convolution(*args, **kwargs):
            raise AssertionError("the XLA trace fell back to the convolution")

        with monkeypatch.context() as patch:
            patch.setattr(keras.layers.DepthwiseConv2D, "call", no_convolution)
            y = tf.function(ours, jit_compile=True)(x).numpy()
    assert y.shape == tuple(ref.compute_output_shape(x.shape))
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_shift_add_depthwise_without_static_size_falls_back_to_the_convolution():
    # traced for XLA with an unknown H, W the taps cannot be sliced: the layer must run the
    # Keras convolution on the unpadded input (padding it first would pad twice)
    import tensorflow as tf

    x = np.random.default_rng(0).standard_normal((2, 9, 7, 4)).astype(np.float32)
    ours = layers.ShiftAddDepthwiseConv2D(3, padding="same")
    ref = keras.layers.DepthwiseConv2D(3, padding="same")
    ref(x), ours(x)
    ours.set_weights(ref.get_weights())
    spec = tf.TensorSpec((None, None, None, 4), tf.float32)
    y = tf.function(ours, jit_compile=True, input_signature=[spec])(x).numpy()
    np.testing.assert_allclose(y, keras.ops.convert_to_numpy(ref(x)), atol=1e-5)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_conv_mlp_graph_form_equals_eager(activation):
    """`Mlp(use_conv=True)` writes SiLU as `y * sigmoid(y)` on TF's graph (so grappler fuses it
    into the conv): graph and XLA must equal eager and a numpy reference."""
    mlp = layers.Mlp(12, activation=activation, use_conv=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 8)).astype(np.float32)
    eager = keras.ops.convert_to_numpy(mlp(x))
    (k1, b1), (k2, b2) = mlp.fc1.get_weights(), mlp.fc2.get_weights()
    h = x @ k1[0, 0] + b1
    if activation == "silu":
        h = h / (1 + np.exp(-h))
    else:
        erf = np.vectorize(math.erf)
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    np.testing.assert_allclose(eager, h @ k2[0, 0] + b2, atol=1e-5)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        for jit in (False, True):
            out = tf.function(lambda t: mlp(t), jit_compile=jit)(x).numpy()
            np.testing.assert_allclose(out, eager, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_token_mlp_silu_fuses_into_fc1_on_tf_graph(dtype, tmp_path):
    """On TF's oneDNN graph the token `Mlp` with SiLU (MobileViT's) runs `fc1` + bias + SiLU
    as one fused oneDNN conv (no separate Swish pass), with the answer of numpy's formula and
    of Keras's own ops (what the converters trace)."""
    require_onednn_graph()
    import tensorflow as tf

    from keras_vit.layers.trace_context import standard_ops

    mlp = layers.Mlp(24, activation="silu", dtype=dtype)
    mlp.build((None, 7, 16))
    rng = np.random.default_rng(5)
    for v in mlp.weights:
        v.assign(rng.normal(0, 0.4, v.shape).astype("float32"))
    x32 = rng.normal(0, 1, (3, 7, 16)).astype(np.float32)
    x = keras.ops.cast(x32, dtype)
    (k1, b1), (k2, b2) = [
        [np.asarray(w, np.float64) for w in dense.get_weights()] for dense in (mlp.fc1, mlp.fc2)
    ]
    h = x32 @ k1 + b1
    expected = (h / (1 + np.exp(-h))) @ k2 + b2
    fn = tf.function(lambda t: mlp(t, training=False))
    ops = executed_ops(fn, x, tmp_path / "graph")
    fused = [op for op in ops if op.startswith("_Mkl") or op in ("Sigmoid", "Mul")]
    assert fused == ["_MklNativeFusedConv2D", "_MklNativeFusedMatMul"], ops
    tol = 1e-5 if dtype == "float32" else 0.03 * np.abs(expected).max()
    graph = np.asarray(tf.cast(fn(x), tf.float32))
    with standard_ops():
        standard = np.asarray(tf.cast(tf.function(lambda t: mlp(t, training=False))(x), tf.float32))
    assert np.abs(expected).max() > 1.0
    for out in (graph, standard):
        np.testing.assert_allclose(out, expected, rtol=0, atol=tol)
