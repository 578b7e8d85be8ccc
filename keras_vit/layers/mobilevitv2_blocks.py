"""The blocks of MobileViT v2 (Mehta & Rastegari, "Separable Self-attention for Mobile Vision
Transformers", 2022), channels last, named as timm's `LinearTransformerBlock` and
`MobileVitV2Block` (`conv_kxk`, `conv_1x1`, `transformer_0/norm1`, `attn/qkv_proj`,
`mlp/fc1`, `norm`, `conv_proj`), so a timm state_dict maps onto them through the generic map.
"""

import math

import keras
import numpy as np

from keras_vit.layers._validation import non_negative_int, pair, positive_int, rate
from keras_vit.layers.drop_path import DropPath
from keras_vit.layers.layer_norm import GroupNorm1
from keras_vit.layers.linear_attention import LinearSelfAttention
from keras_vit.layers.mlp import Mlp, _activation
from keras_vit.layers.mobilevit_blocks import (
    BN_EPSILON,
    ConvNormAct,
    _spatial,
    fold_patches,
    unfold_patches,
)


def _group_norm_1(epsilon, name, dtype):
    """timm's `GroupNorm1`: one group, so statistics over all of (P, N, C) per sample."""
    return GroupNorm1(epsilon=epsilon, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_vit")
class LinearTransformerBlock(keras.layers.Layer):
    """Pre-norm block with separable self-attention (timm's `LinearTransformerBlock`),
    `(B, P, N, C)` -> `(B, P, N, C)`:

        x = x + drop_path(attn(norm1(x)))       # norms: GroupNorm with one group
        x = x + drop_path(mlp(norm2(x)))        # 1x1-conv MLP, C -> mlp_ratio * C -> C
    """

    def __init__(
        self,
        mlp_ratio=2.0,
        activation="silu",
        attn_drop=0.0,
        drop_path=0.0,
        norm_epsilon=BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
            raise ValueError(f"`mlp_ratio` must be positive, got {mlp_ratio!r}.")
        self.mlp_ratio = float(mlp_ratio)
        self.activation = activation
        _activation(activation)  # validates the name
        self.attn_drop = rate("attn_drop", attn_drop)
        self.drop_path = rate("drop_path", drop_path)
        self.norm_epsilon = float(norm_epsilon)
        policy = self.dtype_policy
        self.norm1 = _group_norm_1(norm_epsilon, "norm1", policy)
        self.attn = LinearSelfAttention(attn_drop=attn_drop, name="attn", dtype=policy)
        self.norm2 = _group_norm_1(norm_epsilon, "norm2", policy)
        self.drop_path_layer = DropPath(drop_path, name="drop_path", dtype=policy)
        self.mlp = None  # width at build

    def build(self, input_shape):
        dim = input_shape[-1]
        self.mlp = Mlp(
            int(dim * self.mlp_ratio),
            activation=self.activation,
            use_conv=True,
            name="mlp",
            dtype=self.dtype_policy,
        )
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build(input_shape)

    def call(self, x, training=None):
        x = x + self.drop_path_layer(self.attn(self.norm1(x), training=training), training=training)
        return x + self.drop_path_layer(
            self.mlp(self.norm2(x), training=training), training=training
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "mlp_ratio": self.mlp_ratio,
            "activation": self.activation,
            "attn_drop": self.attn_drop,
            "drop_path": self.drop_path,
            "norm_epsilon": self.norm_epsilon,
        }


@keras.saving.register_keras_serializable(package="keras_vit")
class MobileViTV2Block(keras.layers.Layer):
    """MobileViT v2 block (timm's `MobileVitV2Block`), `(B, H, W, C)` -> `(B, H', W', filters)`:

        x = resize up to (H', W'), the next multiples of the patch (only where H or W is not)
        y = conv_kxk (depthwise k x k, BN, act) -> conv_1x1 (C -> transformer_dim, no bias)
        y = unfold into (B, P, N, D): P pixel positions inside a patch, N patches
        y = transformer_0 .. transformer_{depth - 1} (`LinearTransformerBlock`) -> norm
        y = fold back to (B, H', W', D) -> conv_proj (1x1 D -> filters, BN, no act)

    Unlike v1 there is no shortcut and no fusion conv, and the resize (bilinear with
    `align_corners=True`, as the reference) is of the block's input and is kept: the output is
    (H', W'), as in timm.
    """

    def __init__(
        self,
        transformer_dim,
        transformer_depth=2,
        filters=None,
        patch_size=2,
        mlp_ratio=2.0,
        kernel_size=3,
        activation="silu",
        attn_drop=0.0,
        drop_path=0.0,
        norm_epsilon=BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.transformer_dim = positive_int("transformer_dim", transformer_dim)
        self.transformer_depth = non_negative_int("transformer_depth", transformer_depth)
        self.filters = None if filters is None else positive_int("filters", filters)
        self.patch_size = pair("patch_size", patch_size)
        self.kernel_size = positive_int("kernel_size", kernel_size)
        self.activation = activation
        _activation(activation)  # validates the name
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
            raise ValueError(f"`mlp_ratio` must be positive, got {mlp_ratio!r}.")
        self.mlp_ratio = float(mlp_ratio)
        self.attn_drop = rate("attn_drop", attn_drop)
        self.drop_path = rate("drop_path", drop_path)
        self.norm_epsilon = float(norm_epsilon)
        policy = self.dtype_policy
        self.conv_1x1 = keras.layers.Conv2D(
            transformer_dim, 1, use_bias=False, name="conv_1x1", dtype=policy
        )
        self.transformer = [
            LinearTransformerBlock(
                mlp_ratio,
                activation=activation,
                attn_drop=attn_drop,
                drop_path=drop_path,
                norm_epsilon=norm_epsilon,
                name=f"transformer_{i}",
                dtype=policy,
            )
            for i in range(transformer_depth)
        ]
        self.norm = _group_norm_1(norm_epsilon, "norm", policy)
        self.conv_kxk = self.conv_proj = None  # widths at build

    def _padded_size(self, h, w):
        ph, pw = self.patch_size
        return math.ceil(h / ph) * ph, math.ceil(w / pw) * pw

    def build(self, input_shape):
        b, h, w, c = _spatial(input_shape, "MobileViTV2Block")
        policy, act = self.dtype_policy, self.activation
        self.conv_kxk = ConvNormAct(
            c, self.kernel_size, depthwise=True, activation=act, name="conv_kxk", dtype=policy
        )
        self.conv_proj = ConvNormAct(
            self.filters or c, 1, activation=None, name="conv_proj", dtype=policy
        )
        grid = (b, None, None, c)
        self.conv_kxk.build(grid)
        self.conv_1x1.build(grid)
        tokens = (b, None, None, self.transformer_dim)
        for block in self.transformer:
            block.build(tokens)
        self.norm.build(tokens)
        self.conv_proj.build(tokens)

    def call(self, x, training=None):
        _, h, w, _ = x.shape
        if h is None or w is None:
            raise ValueError("MobileViTV2Block needs a static spatial size (H, W); got None.")
        new_h, new_w = self._padded_size(h, w)
        if (new_h, new_w) != (h, w):
            x = resize_bilinear_align_corners(x, (new_h, new_w))  # (B, H', W', C)
        x = self.conv_1x1(self.conv_kxk(x, training=training))  # (B, H', W', D)
        x = unfold_patches(x, self.patch_size)  # (B * P, N, D)
        p, n = self.patch_size[0] * self.patch_size[1], x.shape[1]
        x = keras.ops.reshape(x, (-1, p, n, self.transformer_dim))  # (B, P, N, D)
        for block in self.transformer:
            x = block(x, training=training)
        x = self.norm(x)
        x = keras.ops.reshape(x, (-1, n, self.transformer_dim))  # (B * P, N, D)
        x = fold_patches(x, self.patch_size, new_h, new_w)  # (B, H', W', D)
        return self.conv_proj(x, training=training)  # (B, H', W', filters)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        if h is not None and w is not None:
            h, w = self._padded_size(h, w)
        return (b, h, w, self.filters or c)

    def get_config(self):
        return {
            **super().get_config(),
            "transformer_dim": self.transformer_dim,
            "transformer_depth": self.transformer_depth,
            "filters": self.filters,
            "patch_size": self.patch_size,
            "mlp_ratio": self.mlp_ratio,
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "attn_drop": self.attn_drop,
            "drop_path": self.drop_path,
            "norm_epsilon": self.norm_epsilon,
        }


def _align_corners_taps(size_in, size_out):
    """torch's bilinear source taps with `align_corners=True`, in float32 as torch computes
    them: output i reads inputs i0 and i1 with weights (1 - t, t), src = i (in - 1) / (out - 1).
    """
    scale = np.float32((size_in - 1) / (size_out - 1)) if size_out > 1 else np.float32(0)
    src = scale * np.arange(size_out, dtype=np.float32)
    i0 = np.floor(src).astype(np.int32)
    i1 = np.minimum(i0 + 1, size_in - 1)
    t = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return i0, i1, t


def resize_bilinear_align_corners(x, size):
    """`F.interpolate(x, size, mode='bilinear', align_corners=True)` on `(B, H, W, C)`, as two
    gathers and blends (width, then height, in torch's order of operations). Keras's resize
    has no `align_corners`; gathers are builtin TFLite ops and fuse under XLA."""
    _, h, w, _ = x.shape
    new_h, new_w = size
    w0, w1, tw = _align_corners_taps(w, new_w)
    h0, h1, th = _align_corners_taps(h, new_h)
    dtype = x.dtype
    tw = keras.ops.cast(tw[None, None, :, None], dtype)  # (1, 1, new_w, 1)
    th = keras.ops.cast(th[None, :, None, None], dtype)  # (1, new_h, 1, 1)
    x = keras.ops.take(x, w0, axis=2) * (1 - tw) + keras.ops.take(x, w1, axis=2) * tw
    # x: (B, H, new_w, C)
    return keras.ops.take(x, h0, axis=1) * (1 - th) + keras.ops.take(x, h1, axis=1) * th
