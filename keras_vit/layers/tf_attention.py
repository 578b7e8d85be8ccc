"""Softmax attention as two batched matmuls, for TensorFlow's CPU graph (oneDNN).

Why: `keras.ops.dot_product_attention` on TensorFlow is two `tf.einsum`s in the
(B, N, heads, head_dim) layout; on TensorFlow's graph they run as `_MklEinsum`, which
transposes its operands on every call (about 8% of DeiT-S in bfloat16, profiled). Here the
fused qkv projection is laid out (3, B, heads, N, head_dim) by one transpose and the logits
are a `BatchMatMulV2` with `adj_y`, which oneDNN runs directly; the scale is applied to q
first, as timm's `Attention` does. Softmax is computed in float32 whatever the compute dtype,
as in Keras's implementation. Imported only on the TensorFlow backend
(keras_vit/layers/attention.py).
"""

import tensorflow as tf

from keras_vit.layers.trace_context import onednn_graph


def qkv_attention(qkv, scale):
    """qkv `(B, N, 3, heads, head_dim)` (the fused projection) -> `(B, N, heads, head_dim)`.

    One transpose to `(3, B, heads, N, hd)`; q, k and v are then slices along the leading
    axis, which TensorFlow takes without copying (three strided slices and three transposes
    before)."""
    qkv = tf.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, heads, N, hd)
    return _attend_heads(qkv[0], qkv[1], qkv[2], scale)


def _attend_heads(q, k, v, scale):
    """q, k, v `(B, heads, N, hd)` -> `(B, N, heads, hd)`."""
    if scale != 1.0:  # 1.0: already folded into the qkv projection (attention.py)
        q = q * tf.cast(scale, q.dtype)
    logits = tf.matmul(q, k, transpose_b=True)  # (B, heads, N, N)
    probs = tf.cast(_softmax(logits), v.dtype)
    return tf.transpose(tf.matmul(probs, v), (0, 2, 1, 3))  # (B, N, heads, hd)


def _softmax(logits):
    """Softmax over the last axis, computed in float32. bf16 logits go straight to oneDNN's
    kernel on its graph (it reads bf16, computes in float32 and rounds the probabilities to
    bf16 once, as the cast after a float32 softmax does: same errors, measured): two casts of
    `(B, heads, N, N)` fewer. Eigen's bf16 softmax (no oneDNN) sums in bf16: float32 there."""
    if logits.dtype == tf.bfloat16 and onednn_graph():
        return tf.nn.softmax(logits, axis=-1)
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
