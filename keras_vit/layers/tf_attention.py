"""Softmax attention as two batched matmuls, for TensorFlow's CPU graph (oneDNN).

Why: `keras.ops.dot_product_attention` on TensorFlow is two `tf.einsum`s in the
(B, N, heads, head_dim) layout; on TensorFlow's graph they run as `_MklEinsum`, which
transposes its operands on every call (about 8% of DeiT-S in bfloat16, profiled). Here q, k
and v are laid out (B, heads, N, head_dim) once and the logits are a `BatchMatMulV2` with
`adj_y`, which oneDNN runs directly; the scale is applied to q first, as timm's `Attention`
does. Softmax runs in float32 whatever the compute dtype, as in Keras's implementation.
Imported only on the TensorFlow backend (keras_vit/layers/attention.py).
"""

import tensorflow as tf


def matmul_attention(q, k, v, scale):
    """q, k, v `(B, N, heads, head_dim)` -> softmax(q k^T * scale) v, `(B, N, heads, head_dim)`."""
    q = tf.transpose(q * tf.cast(scale, q.dtype), (0, 2, 1, 3))  # (B, heads, N, hd)
    k = tf.transpose(k, (0, 2, 1, 3))
    v = tf.transpose(v, (0, 2, 1, 3))
    logits = tf.matmul(q, k, transpose_b=True)  # (B, heads, N, N)
    probs = tf.cast(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), v.dtype)
    return tf.transpose(tf.matmul(probs, v), (0, 2, 1, 3))  # (B, N, heads, hd)
