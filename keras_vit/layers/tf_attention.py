"""Softmax attention as two batched matmuls, for TensorFlow's CPU graph (oneDNN).

Why: `keras.ops.dot_product_attention` on TensorFlow is two `tf.einsum`s in the
(B, N, heads, head_dim) layout; on TensorFlow's graph they run as `_MklEinsum`, which
transposes its operands on every call (about 8% of DeiT-S in bfloat16, profiled). Here the
fused qkv projection is laid out (3, B, heads, N, head_dim) by one transpose and the logits
are a `BatchMatMulV2` with `adj_y`, which oneDNN runs directly; the scale is applied to q
first, as timm's `Attention` does. Softmax is computed in float32 whatever the compute dtype,
as in Keras's implementation. Imported only on the TensorFlow backend
(keras_vit/layers/attention.py).

Long sequences of narrow heads (MobileViT's stride-8 stage: 256 tokens, head_dim 16) run one
head at a time on oneDNN's graph, so that one head's logits stay in cache between the three
passes over them (`heads_one_at_a_time`).
"""

import tensorflow as tf

from keras_vit.layers.trace_context import onednn_graph


def qkv_attention(qkv, scale):
    """qkv `(B, N, 3, heads, head_dim)` (the fused projection) -> `(B, N, heads, head_dim)`.

    One transpose to `(3, B, heads, N, hd)`; q, k and v are then slices along the leading
    axis, which TensorFlow takes without copying (three strided slices and three transposes
    before)."""
    _, tokens, _, heads, head_dim = qkv.shape
    if heads_one_at_a_time(tokens, head_dim) and onednn_graph():
        return _attend_head_by_head(qkv, scale)
    qkv = tf.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, heads, N, hd)
    return _attend_heads(qkv[0], qkv[1], qkv[2], scale)


def heads_one_at_a_time(tokens, head_dim):
    """Whether attention over `tokens` with heads of `head_dim` runs head by head on oneDNN's
    graph: sequences of at least 128 tokens at least 8x longer than a head is wide.

    Why: the logits of one head, `(B, N, N)`, are then N / (3 hd) >= 2.7x the size of its q,
    k and v, so attention is three passes over memory (the matmul that writes the logits,
    the softmax, the matmul that reads them). All heads at once, MobileViT-XXS's stride-8
    stage (256 tokens, head_dim 16, 4 heads) writes 16.8 MB of logits per half of a batch of
    8 (4 images x 4 patch positions x 4 heads x 256 x 256 x 4 bytes), 33.5 MB for the two
    halves side by side, more than the 32 MB L3 of the EPYC measured, so each pass goes to
    memory; one head's 4.2 MB per half stays in cache. In-process A/B (AMD EPYC, 2 cores,
    float32, batch 8, `predict_on_batch`, medians of 11 rounds): MobileViT-XXS 112.2 -> 121.3
    img/s, an untouched copy 111.9 (another run: 110.8 -> 116.4, two groups of two heads
    114.7); forced where the rule says no: MobileViT-S (256 tokens, head_dim 36) 35.3 vs
    35.7, DeiT-S (197 tokens, head_dim 64) 20.8 vs 20.0."""
    return tokens is not None and tokens >= 128 and tokens >= 8 * head_dim


def _attend_head_by_head(qkv, scale):
    """qkv `(B, N, 3, heads, hd)` -> `(B, N, heads, hd)`, each head's two matmuls and softmax
    its own ops (`heads_one_at_a_time`). One transpose to `(3, heads, B, N, hd)` makes every
    head's q, k and v a slice along the leading axes (no copy); the heads' outputs
    `(B, N, hd)` are stacked on axis 2, which lays them out as the output (no transpose)."""
    qkv = tf.transpose(qkv, (2, 3, 0, 1, 4))  # (3, heads, B, N, hd)
    q, k, v = qkv[0], qkv[1], qkv[2]  # each (heads, B, N, hd)
    outputs = [_attend(q[h], k[h], v[h], scale) for h in range(qkv.shape[1])]  # (B, N, hd)
    return tf.stack(outputs, axis=2)  # (B, N, heads, hd)


def _attend_heads(q, k, v, scale):
    """q, k, v `(B, heads, N, hd)` -> `(B, N, heads, hd)`."""
    return tf.transpose(_attend(q, k, v, scale), (0, 2, 1, 3))


def _attend(q, k, v, scale):
    """softmax(q k^T) v over the last two axes: q, k, v `(..., N, hd)` -> `(..., N, hd)`."""
    if scale != 1.0:  # 1.0: already folded into the qkv projection (attention.py)
        q = q * tf.cast(scale, q.dtype)
    logits = tf.matmul(q, k, transpose_b=True)  # (..., N, N)
    return tf.matmul(tf.cast(_softmax(logits), v.dtype), v)


def _softmax(logits):
    """Softmax over the last axis, computed in float32. bf16 logits go straight to oneDNN's
    kernel on its graph (it reads bf16, computes in float32 and rounds the probabilities to
    bf16 once, as the cast after a float32 softmax does: same errors, measured): two casts of
    `(B, heads, N, N)` fewer. Eigen's bf16 softmax (no oneDNN) sums in bf16: float32 there."""
    if logits.dtype == tf.bfloat16 and onednn_graph():
        return tf.nn.softmax(logits, axis=-1)
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
