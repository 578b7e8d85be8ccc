import keras
import numpy as np

from keras_vit.layers._validation import positive_int, rate
from keras_vit.layers.flat_tokens import apply_flat
from keras_vit.layers.trace_context import onednn_graph


@keras.saving.register_keras_serializable(package="keras_vit")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention with one fused qkv projection (timm's `Attention`).

    `qkv` (D -> 3D) lays its output out as `(3, heads, head_dim)`, the order of timm's
    checkpoints, so its weights load without reordering. Inference goes through
    `keras.ops.dot_product_attention` (fused where the backend has a kernel; on TensorFlow
    two batched matmuls, see tf_attention.py); the explicit softmax path runs only when
    attention dropout is active or the weights are asked for.
    """

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = positive_int("dim", dim)
        self.num_heads = positive_int("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"`dim` ({dim}) must be divisible by `num_heads` ({num_heads}).")
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv_bias = qkv_bias
        self.attn_drop = rate("attn_drop", attn_drop)
        self.proj_drop = rate("proj_drop", proj_drop)
        self.qkv = keras.layers.Dense(
            3 * dim, use_bias=qkv_bias, name="qkv", dtype=self.dtype_policy
        )
        self.proj = keras.layers.Dense(dim, name="proj", dtype=self.dtype_policy)
        self.attn_dropout = keras.layers.Dropout(self.attn_drop, dtype=self.dtype_policy)
        self.proj_dropout = keras.layers.Dropout(self.proj_drop, dtype=self.dtype_policy)

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(
                f"Input feature size {input_shape[-1]} does not match `dim` {self.dim}."
            )
        self.qkv.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.dim,))

    def attention_weights(self, q, k):
        """Softmax attention `(B, heads, N, N)`, in float32 whatever the compute dtype."""
        logits = keras.ops.einsum("bqhd,bkhd->bhqk", q, k)
        return keras.ops.softmax(keras.ops.cast(logits, "float32") * self.scale, axis=-1)

    def call(self, x, training=None, return_attention_scores=False, residual=None):
        """`(B, N, D)` -> `(B, N, D)`; plus `residual` (the block's input) when given, fused
        into the output projection on TensorFlow's graph (flat_tokens.py)."""
        batch, tokens = keras.ops.shape(x)[0], keras.ops.shape(x)[1]
        use_dropout = training and self.attn_drop > 0
        explicit = return_attention_scores or use_dropout
        scale = self.scale
        if not explicit and onednn_graph() and self.qkv.quantization_mode is None:
            qkv, scale = apply_flat(self._qkv_q_scaled, x), 1.0  # (B, N, 3D)
        else:
            qkv = apply_flat(self.qkv, x)  # (B, N, 3D), one 2-D matmul + bias (flat_tokens)
        qkv = keras.ops.reshape(qkv, (batch, tokens, 3, self.num_heads, self.head_dim))
        if explicit:
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each (B, N, heads, head_dim)
            attn = self.attention_weights(q, k)  # (B, heads, N, N)
            dropped = self.attn_dropout(attn, training=training)
            out = keras.ops.einsum("bhqk,bkhd->bqhd", keras.ops.cast(dropped, v.dtype), v)
        else:
            attn = None
            out = _attend(qkv, scale)  # (B, N, heads, hd)
        out = keras.ops.reshape(out, (batch, tokens, self.dim))  # (B, N, D)
        out = apply_flat(self._project, out, residual=residual, training=training)
        return (out, attn) if return_attention_scores else out

    def _qkv_q_scaled(self, x):
        """`qkv(x)` `(M, D) -> (M, 3D)` with the q columns times the attention scale, folded
        into the kernel and bias. Why: on TF's oneDNN graph with the kernels as constants
        (models/frozen_kernels.py) grappler folds the product once, which removes the
        multiply of q, a pass over `(B, heads, N, hd)` per block (4% of DeiT-S bf16). The
        scale is applied in the variables' dtype; with head_dim 64 (0.125) it is exact."""
        import tensorflow as tf

        dense = self.qkv
        columns = np.ones(3 * self.dim, np.float32)
        columns[: self.dim] = self.scale  # (3D,): [q (D) | k (D) | v (D)]
        kernel = dense.kernel
        col = tf.constant(columns, kernel.dtype)
        y = tf.matmul(x, tf.cast(kernel * col, x.dtype))
        if dense.use_bias:
            y = tf.nn.bias_add(y, tf.cast(dense.bias * col, y.dtype))
        return y

    def _project(self, out, training=None):  # (M, D) -> (M, D)
        return self.proj_dropout(self.proj(out), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "qkv_bias": self.qkv_bias,
            "attn_drop": self.attn_drop,
            "proj_drop": self.proj_drop,
        }


def _attend(qkv, scale):
    """Softmax attention of qkv `(B, N, 3, heads, head_dim)` -> `(B, N, heads, head_dim)`,
    the backend's fastest way."""
    if keras.backend.backend() == "tensorflow":
        from keras_vit.layers.tf_attention import qkv_attention

        return qkv_attention(qkv, scale)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each (B, N, heads, head_dim)
    return keras.ops.dot_product_attention(q, k, v, scale=scale)
