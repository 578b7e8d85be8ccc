"""The building blocks of MobileViT (Mehta & Rastegari, ICLR 2022), channels last.

Layer names are timm's module names (`conv`, `bn`, `conv1_1x1`, `conv2_kxk`, `conv3_1x1`,
`conv_kxk`, `conv_1x1`, `transformer_0`, `norm`, `conv_proj`, `conv_fusion`, `fc`), so a timm
`ByobNet` state_dict maps onto them through the generic name map.
"""

import math

import keras

from keras_vit.layers._validation import pair, positive_int, rate
from keras_vit.layers.depthwise_conv import (
    ShiftAddDepthwiseConv2D,
    grouped_depthwise_conv,
    grouped_form_here,
)
from keras_vit.layers.drop_path import DropPath
from keras_vit.layers.layer_norm import LayerNorm
from keras_vit.layers.mlp import _activation
from keras_vit.layers.precision import classifier_dtype
from keras_vit.layers.squeeze_excite import SqueezeExcite, make_divisible
from keras_vit.layers.trace_context import compiling_with_xla
from keras_vit.layers.transformer_block import TransformerBlock

# timm's BatchNorm2d / LayerNorm defaults: eps 1e-5 (torch momentum 0.1 is Keras's 0.9)
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def _spatial(input_shape, layer):
    if len(input_shape) != 4 or input_shape[-1] is None:
        raise ValueError(f"{layer} takes (B, H, W, C) with a known C, got shape {input_shape}.")
    return input_shape


def _bias_act(y, bias, activation, act):
    """`act(y + bias)`, bias per channel (last axis). On TensorFlow outside XLA (the bf16 CPU
    path, SavedModel, TFLite) written as grappler's remapper fuses into the convolution
    before it (oneDNN's conv with bias and activation as post-ops, `_FusedConv2D`,
    `_FusedDepthwiseConv2dNative`): `BiasAdd`, and SiLU as `x * sigmoid(x)` (`tf.nn.silu`'s
    custom gradient hides that pattern)."""
    if keras.backend.backend() == "tensorflow" and not compiling_with_xla():
        import tensorflow as tf

        y = tf.nn.bias_add(y, bias)
        if activation in ("silu", "swish"):
            return y * tf.math.sigmoid(y)
        return y if act is None else act(y)
    y = y + bias
    return y if act is None else act(y)


def _conv_out(size, kernel_size, strides):
    """Output length of a conv with timm's symmetric padding `((s - 1) + (k - 1)) // 2`."""
    if size is None:
        return None
    pad = ((strides - 1) + (kernel_size - 1)) // 2
    return (size + 2 * pad - kernel_size) // strides + 1


@keras.saving.register_keras_serializable(package="keras_vit")
class ConvNormAct(keras.layers.Layer):
    """Conv (no bias) -> BatchNorm -> activation (timm's `ConvNormAct`), `(B, H, W, C)`.

    Padding is timm's static symmetric `((s - 1) + (k - 1)) // 2` on each side. For stride 1
    that is Keras's 'same'; for stride 2 on an even size 'same' would pad only the bottom and
    right, so strided convs pad explicitly and run 'valid'.

    Args:
        filters: output channels (must equal the input channels when `depthwise`).
        kernel_size: square kernel size (odd).
        strides: 1 or more.
        depthwise: a depthwise conv (timm's `groups == channels`).
        activation: 'silu', 'relu', ... or None for conv + norm only.
    """

    def __init__(
        self,
        filters,
        kernel_size=1,
        strides=1,
        depthwise=False,
        activation="silu",
        norm_epsilon=BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = positive_int("filters", filters)
        self.kernel_size = positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd, got {kernel_size}.")
        self.strides = positive_int("strides", strides)
        self.depthwise = bool(depthwise)
        self.activation = activation
        self._act = None if activation is None else _activation(activation)
        self.norm_epsilon = float(norm_epsilon)
        self._pad = ((strides - 1) + (kernel_size - 1)) // 2
        explicit = strides > 1 and self._pad > 0
        self._explicit_pad = self._pad if explicit else 0
        padding = "valid" if explicit else "same"
        policy = self.dtype_policy
        if self.depthwise:
            self.conv = ShiftAddDepthwiseConv2D(
                kernel_size, strides, padding=padding, use_bias=False, name="conv", dtype=policy
            )
        else:
            self.conv = keras.layers.Conv2D(
                filters,
                kernel_size,
                strides,
                padding=padding,
                use_bias=False,
                name="conv",
                dtype=policy,
            )
        self.bn = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=norm_epsilon, name="bn", dtype=policy
        )

    def build(self, input_shape):
        input_shape = _spatial(input_shape, "ConvNormAct")
        if self.depthwise and input_shape[-1] != self.filters:
            raise ValueError(
                f"A depthwise ConvNormAct keeps the channels: input has {input_shape[-1]}, "
                f"`filters` is {self.filters}."
            )
        b, h, w, c = input_shape
        p = self._explicit_pad
        self.conv.build((b, None if h is None else h + 2 * p, None if w is None else w + 2 * p, c))
        self.bn.build(self.compute_output_shape(input_shape))

    def call(self, x, training=None):
        unfolded = self._unfolded(training)
        # on oneDNN's graph the depthwise conv takes its padding inside (depthwise_conv.py)
        grouped = self.depthwise and not unfolded and grouped_form_here(x)
        if self._explicit_pad and not grouped:
            p = self._explicit_pad
            x = keras.ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))  # (B, H + 2p, W + 2p, C)
        if unfolded:
            x = self.bn(self.conv(x), training=training)
            return x if self._act is None else self._act(x)
        # Inference: BatchNorm folded into the conv (as ONNX Runtime and TFLite do), so one
        # conv + bias + activation instead of conv, then BN's multiply-add (in float32 for a
        # bf16 model, with two casts) and the activation as separate passes over the map.
        kernel, bias = self.folded_kernel_and_bias()
        kernel = keras.ops.cast(kernel, x.dtype)
        if grouped:
            y = grouped_depthwise_conv(x, kernel, self.strides, self._pad)
        elif self.depthwise:
            y = self.conv.convolve(x, kernel)
        else:
            y = self.conv.convolution_op(x, kernel)
        return _bias_act(y, keras.ops.cast(bias, y.dtype), self.activation, self._act)

    def _unfolded(self, training):
        """Conv -> BN -> activation as written, BatchNorm not folded."""
        # Unfolded: training with batch statistics (moving averages updated); under XLA, which
        # fuses BN's multiply-add into the activation's loop anyway (folding measured 1.005x /
        # 1.015x there, MobileViT-XXS / v2 0.5 f32: not worth a program other than the one
        # parity was measured on); a conv whose kernel is not a float tensor to fold into
        # (quantized: Keras 3.15 quantizes no conv, a later one may).
        return bool(
            (training and self.bn.trainable)
            or compiling_with_xla()
            or self.conv.quantization_mode is not None
        )

    def folded_kernel_and_bias(self):
        """The conv kernel and bias (float32) equal to conv -> BN with BN's moving statistics:
        `kernel * s` and `beta - mean * s`, `s = gamma / sqrt(moving_variance + eps)` per
        output channel. Kernel: (k, k, C_in, filters), or (k, k, C, 1) depthwise."""
        bn, f32 = self.bn, "float32"
        scale = keras.ops.rsqrt(keras.ops.cast(bn.moving_variance, f32) + bn.epsilon)
        if bn.scale:
            scale = scale * keras.ops.cast(bn.gamma, f32)
        bias = -keras.ops.cast(bn.moving_mean, f32) * scale
        if bn.center:
            bias = bias + keras.ops.cast(bn.beta, f32)
        kernel = keras.ops.cast(self.conv.kernel, f32)
        if self.depthwise:  # output channel c is input channel c: (C,) -> (C, 1)
            scale = keras.ops.expand_dims(scale, -1)
        return kernel * scale, bias

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        k, s = self.kernel_size, self.strides
        return (b, _conv_out(h, k, s), _conv_out(w, k, s), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "depthwise": self.depthwise,
            "activation": self.activation,
            "norm_epsilon": self.norm_epsilon,
        }


@keras.saving.register_keras_serializable(package="keras_vit")
class InvertedResidual(keras.layers.Layer):
    """MobileNetV2 inverted residual (timm's `BottleneckBlock` with `bottle_in=True`,
    `linear_out=True`, depthwise middle conv), `(B, H, W, C_in)` -> `(B, H', W', filters)`:

        y = conv1_1x1 (C_in -> mid, BN, act)
        y = conv2_kxk (depthwise k x k, stride, BN, act)
        y = attn (Squeeze-and-Excitation on mid channels, only with `se_ratio`)
        y = conv3_1x1 (mid -> filters, BN, linear)
        out = x + drop_path(y)  if C_in == filters and stride 1, else y

    `mid = make_divisible(C_in * expansion)`. MobileViT uses no SE (`se_ratio=None`).
    """

    def __init__(
        self,
        filters,
        strides=1,
        expansion=4.0,
        kernel_size=3,
        se_ratio=None,
        activation="silu",
        drop_path=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = positive_int("filters", filters)
        self.strides = positive_int("strides", strides)
        if not (isinstance(expansion, (int, float)) and expansion > 0):
            raise ValueError(f"`expansion` must be a positive number, got {expansion!r}.")
        self.expansion = float(expansion)
        self.kernel_size = positive_int("kernel_size", kernel_size)
        if se_ratio is not None and not (isinstance(se_ratio, (int, float)) and 0 < se_ratio):
            raise ValueError(f"`se_ratio` must be None or a positive number, got {se_ratio!r}.")
        self.se_ratio = None if se_ratio is None else float(se_ratio)
        self.activation = activation
        self._act = _activation(activation)  # validates the name
        self.drop_path = rate("drop_path", drop_path)
        self.conv1_1x1 = self.conv2_kxk = self.attn = self.conv3_1x1 = None  # widths at build
        self.drop_path_layer = DropPath(drop_path, name="drop_path", dtype=self.dtype_policy)
        self.has_residual = None

    def build(self, input_shape):
        input_shape = _spatial(input_shape, "InvertedResidual")
        in_channels = input_shape[-1]
        mid = make_divisible(in_channels * self.expansion)
        policy, act = self.dtype_policy, self.activation
        self.conv1_1x1 = ConvNormAct(mid, 1, activation=act, name="conv1_1x1", dtype=policy)
        self.conv2_kxk = ConvNormAct(
            mid,
            self.kernel_size,
            self.strides,
            depthwise=True,
            activation=act,
            name="conv2_kxk",
            dtype=policy,
        )
        if self.se_ratio is not None:
            self.attn = SqueezeExcite(rd_ratio=self.se_ratio, name="attn", dtype=policy)
        self.conv3_1x1 = ConvNormAct(
            self.filters, 1, activation=None, name="conv3_1x1", dtype=policy
        )
        # timm's `downsample=''`: no projection shortcut, so a residual only where shapes match
        self.has_residual = in_channels == self.filters and self.strides == 1
        shape = input_shape[:-1] + (mid,)
        self.conv1_1x1.build(input_shape)
        self.conv2_kxk.build(shape)
        shape = self.conv2_kxk.compute_output_shape(shape)
        if self.attn is not None:
            self.attn.build(shape)
        self.conv3_1x1.build(shape)

    def call(self, x, training=None):
        y = self.conv2_kxk(self.conv1_1x1(x, training=training), training=training)
        if self.attn is not None:
            y = self.attn(y)
        y = self.conv3_1x1(y, training=training)
        if self.has_residual:
            return x + self.drop_path_layer(y, training=training)
        return y

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        k, s = self.kernel_size, self.strides
        return (b, _conv_out(h, k, s), _conv_out(w, k, s), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "expansion": self.expansion,
            "kernel_size": self.kernel_size,
            "se_ratio": self.se_ratio,
            "activation": self.activation,
            "drop_path": self.drop_path,
        }


def unfold_patches(x, patch_size):
    """Feature map -> one token sequence per pixel position inside a patch (MobileViT's unfold).

    `(B, H, W, C)` -> `(B * ph * pw, (H / ph) * (W / pw), C)`: sequence `(i, j)` (in row-major
    order of the position inside the patch) holds pixel `(i, j)` of every patch, patches in
    row-major order, as timm's `MobileVitBlock`. H and W must be static multiples of the patch.
    """
    ph, pw = pair("patch_size", patch_size)
    _, h, w, c = x.shape
    if h is None or w is None or h % ph or w % pw:
        raise ValueError(f"unfold_patches needs static H, W divisible by {(ph, pw)}, got {(h, w)}.")
    nh, nw = h // ph, w // pw
    x = keras.ops.reshape(x, (-1, nh, ph, nw, pw, c))  # (B, nh, ph, nw, pw, C)
    x = keras.ops.transpose(x, (0, 2, 4, 1, 3, 5))  # (B, ph, pw, nh, nw, C)
    return keras.ops.reshape(x, (-1, nh * nw, c))  # (B * P, N, C), P = ph * pw, N = nh * nw


def fold_patches(x, patch_size, height, width):
    """The inverse of `unfold_patches`: `(B * ph * pw, N, C)` -> `(B, height, width, C)`."""
    ph, pw = pair("patch_size", patch_size)
    if height % ph or width % pw:
        raise ValueError(
            f"fold_patches needs sizes divisible by {(ph, pw)}, got {(height, width)}."
        )
    nh, nw, c = height // ph, width // pw, x.shape[-1]
    x = keras.ops.reshape(x, (-1, ph, pw, nh, nw, c))  # (B, ph, pw, nh, nw, C)
    x = keras.ops.transpose(x, (0, 3, 1, 4, 2, 5))  # (B, nh, ph, nw, pw, C)
    return keras.ops.reshape(x, (-1, height, width, c))  # (B, H, W, C)


@keras.saving.register_keras_serializable(package="keras_vit")
class MobileViTBlock(keras.layers.Layer):
    """MobileViT block (timm's `MobileVitBlock`), `(B, H, W, C)` -> `(B, H, W, filters)`:

        y = conv_kxk (k x k, BN, act) -> conv_1x1 (C -> transformer_dim, no bias, no norm)
        y = unfold into patch-position sequences (B * P, N, D)
        y = transformer_0 .. transformer_{depth - 1} (pre-norm ViT blocks, SiLU MLP) -> norm
        y = fold back to (B, H, W, D) -> conv_proj (1x1 D -> filters, BN, act)
        out = conv_fusion (k x k on concat(x, y), BN, act)

    When H or W is not a multiple of the patch, the map is resized (bilinear, half-pixel
    centres, no antialias) up to the next multiple before unfolding and back after folding,
    exactly as the reference implementation.
    """

    def __init__(
        self,
        transformer_dim,
        transformer_depth=2,
        filters=None,
        patch_size=2,
        num_heads=4,
        mlp_ratio=2.0,
        kernel_size=3,
        activation="silu",
        attn_drop=0.0,
        proj_drop=0.0,
        drop_path=0.0,
        norm_epsilon=BN_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.transformer_dim = positive_int("transformer_dim", transformer_dim)
        if isinstance(transformer_depth, bool) or not isinstance(transformer_depth, int):
            raise ValueError(f"`transformer_depth` must be an int, got {transformer_depth!r}.")
        if transformer_depth < 0:
            raise ValueError(f"`transformer_depth` must be >= 0, got {transformer_depth}.")
        self.transformer_depth = transformer_depth
        self.filters = None if filters is None else positive_int("filters", filters)
        self.patch_size = pair("patch_size", patch_size)
        self.num_heads = positive_int("num_heads", num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.kernel_size = positive_int("kernel_size", kernel_size)
        self.activation = activation
        _activation(activation)  # validates the name
        self.attn_drop = rate("attn_drop", attn_drop)
        self.proj_drop = rate("proj_drop", proj_drop)
        self.drop_path = rate("drop_path", drop_path)
        self.norm_epsilon = float(norm_epsilon)
        policy = self.dtype_policy
        self.conv_1x1 = keras.layers.Conv2D(
            transformer_dim, 1, use_bias=False, name="conv_1x1", dtype=policy
        )
        self.transformer = [
            TransformerBlock(
                transformer_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                proj_drop=proj_drop,
                attn_drop=attn_drop,
                drop_path=drop_path,
                norm_epsilon=norm_epsilon,
                activation=activation,
                name=f"transformer_{i}",
                dtype=policy,
            )
            for i in range(transformer_depth)
        ]
        self.norm = LayerNorm(epsilon=norm_epsilon, name="norm", dtype=policy)
        self.conv_kxk = self.conv_proj = self.conv_fusion = None  # widths at build

    def build(self, input_shape):
        input_shape = _spatial(input_shape, "MobileViTBlock")
        b, h, w, c = input_shape
        out = self.filters or c
        policy, act, k = self.dtype_policy, self.activation, self.kernel_size
        self.conv_kxk = ConvNormAct(c, k, activation=act, name="conv_kxk", dtype=policy)
        self.conv_proj = ConvNormAct(out, 1, activation=act, name="conv_proj", dtype=policy)
        self.conv_fusion = ConvNormAct(out, k, activation=act, name="conv_fusion", dtype=policy)
        self.conv_kxk.build(input_shape)
        self.conv_1x1.build(input_shape)
        tokens = (None, None, self.transformer_dim)
        for block in self.transformer:
            block.build(tokens)
        self.norm.build(tokens)
        self.conv_proj.build((b, h, w, self.transformer_dim))
        self.conv_fusion.build((b, h, w, c + out))

    def call(self, x, training=None):
        shortcut = x
        _, h, w, _ = x.shape
        if h is None or w is None:
            raise ValueError("MobileViTBlock needs a static spatial size (H, W); got None.")
        ph, pw = self.patch_size
        x = self.conv_1x1(self.conv_kxk(x, training=training))  # (B, H, W, D)
        new_h, new_w = math.ceil(h / ph) * ph, math.ceil(w / pw) * pw
        resized = (new_h, new_w) != (h, w)
        if resized:  # (B, new_h, new_w, D)
            x = _resize_bilinear(x, (new_h, new_w))
        x = unfold_patches(x, self.patch_size)  # (B * P, N, D)
        for block in self.transformer:
            x = block(x, training=training)
        x = self.norm(x)
        x = fold_patches(x, self.patch_size, new_h, new_w)  # (B, new_h, new_w, D)
        if resized:  # (B, H, W, D)
            x = _resize_bilinear(x, (h, w))
        x = self.conv_proj(x, training=training)  # (B, H, W, filters)
        x = keras.ops.concatenate([shortcut, x], axis=-1)  # (B, H, W, C + filters)
        return self.conv_fusion(x, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (self.filters or input_shape[-1],)

    def get_config(self):
        return {
            **super().get_config(),
            "transformer_dim": self.transformer_dim,
            "transformer_depth": self.transformer_depth,
            "filters": self.filters,
            "patch_size": self.patch_size,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "attn_drop": self.attn_drop,
            "proj_drop": self.proj_drop,
            "drop_path": self.drop_path,
            "norm_epsilon": self.norm_epsilon,
        }


def _resize_bilinear(x, size):
    """torch's `F.interpolate(mode='bilinear', align_corners=False)`, channels last."""
    return keras.ops.image.resize(
        x, size, interpolation="bilinear", antialias=False, data_format="channels_last"
    )


@keras.saving.register_keras_serializable(package="keras_vit")
class ClassifierHead(keras.layers.Layer):
    """Global average pool -> dropout -> `fc` (timm's `ClassifierHead`), `(B, H, W, C)` ->
    `(B, num_classes)`, or the pooled `(B, C)` when `num_classes=0`."""

    def __init__(self, num_classes, drop_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"`num_classes` must be an int >= 0, got {num_classes!r}.")
        self.num_classes = num_classes
        self.drop_rate = rate("drop_rate", drop_rate)
        # pool, dropout and `fc` in float32 in a bf16 model (layers/precision.py)
        policy = classifier_dtype(self.dtype_policy) if num_classes else self.dtype_policy
        self.dropout = keras.layers.Dropout(self.drop_rate, dtype=policy)
        self.fc = keras.layers.Dense(num_classes, name="fc", dtype=policy) if num_classes else None

    def build(self, input_shape):
        if self.fc is not None:
            self.fc.build((None, input_shape[-1]))

    def call(self, x, training=None):
        x = keras.ops.cast(x, self.dropout.compute_dtype)  # the head's own dtype
        x = keras.ops.mean(x, axis=(1, 2))  # (B, C)
        x = self.dropout(x, training=training)
        return x if self.fc is None else self.fc(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes or input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "drop_rate": self.drop_rate,
        }
