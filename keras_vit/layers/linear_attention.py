"""Separable self-attention of linear cost (Mehta & Rastegari, "Separable Self-attention for
Mobile Vision Transformers", 2022), timm's `LinearSelfAttention`, channels last."""

import keras

from keras_vit.layers._validation import rate


@keras.saving.register_keras_serializable(package="keras_vit")
class LinearSelfAttention(keras.layers.Layer):
    """`(B, P, N, C)` -> `(B, P, N, C)`: P pixel positions inside a patch, N patches.

    For each pixel position, one score per patch from a single query channel, softmax over the
    N patches; the scores pool the keys into one context vector, which gates ReLU(values):

        q, k, v = qkv_proj(x)                      # (B, P, N, 1), (B, P, N, C), (B, P, N, C)
        context = sum_N softmax_N(q) * k           # (B, P, 1, C)
        out = out_proj(relu(v) * context)

    `qkv_proj` and `out_proj` are 1x1 convolutions as in timm (the checkpoint's conv kernels
    map unchanged); channel order of `qkv_proj` is [query (1), key (C), value (C)].
    """

    def __init__(self, attn_drop=0.0, proj_drop=0.0, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.attn_drop = rate("attn_drop", attn_drop)
        self.proj_drop = rate("proj_drop", proj_drop)
        self.use_bias = bool(use_bias)
        self.attn_dropout = keras.layers.Dropout(self.attn_drop, dtype=self.dtype_policy)
        self.out_dropout = keras.layers.Dropout(self.proj_drop, dtype=self.dtype_policy)
        self.qkv_proj = self.out_proj = None  # widths at build

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"LinearSelfAttention takes (B, P, N, C) with a known C, got {input_shape}."
            )
        dim, policy = input_shape[-1], self.dtype_policy
        self.qkv_proj = keras.layers.Conv2D(
            1 + 2 * dim, 1, use_bias=self.use_bias, name="qkv_proj", dtype=policy
        )
        self.out_proj = keras.layers.Conv2D(
            dim, 1, use_bias=self.use_bias, name="out_proj", dtype=policy
        )
        self.qkv_proj.build(input_shape)
        self.out_proj.build(input_shape)

    def call(self, x, training=None):
        _, p, n, dim = x.shape
        if p is None or n is None:
            raise ValueError(f"LinearSelfAttention needs static P and N, got shape {x.shape}.")
        qkv = self.qkv_proj(x)  # (B, P, N, 1 + 2C)
        query, key, value = keras.ops.split(qkv, [1, 1 + dim], axis=-1)
        query = keras.ops.reshape(query, (-1, p, 1, n))  # (B, P, 1, N)
        if n == 1:  # one patch (a small image's last stage): softmax is exactly 1, as in timm
            scores = keras.ops.ones_like(query)
        else:  # softmax over the N patches, on the last axis (what every backend and TFLite fuse)
            scores = keras.ops.softmax(query, axis=-1)
        scores = self.attn_dropout(scores, training=training)
        context = keras.ops.matmul(scores, key)  # (B, P, 1, N) @ (B, P, N, C) -> (B, P, 1, C)
        out = keras.ops.relu(value) * context  # (B, P, N, C)
        return self.out_dropout(self.out_proj(out), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "attn_drop": self.attn_drop,
            "proj_drop": self.proj_drop,
            "use_bias": self.use_bias,
        }
