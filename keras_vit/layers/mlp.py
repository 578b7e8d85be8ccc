import keras

from keras_vit.layers._validation import positive_int, rate
from keras_vit.layers.flat_tokens import apply_flat
from keras_vit.layers.trace_context import onednn_graph, tracing_standard_ops


@keras.saving.register_keras_serializable(package="keras_vit")
class Mlp(keras.layers.Layer):
    """`fc1` -> activation -> dropout -> `fc2` -> dropout (timm's `Mlp`).

    The default activation is the exact (erf) GELU, as `torch.nn.GELU()`. With `use_conv`
    (timm's `Mlp(use_conv=True)`, and `ConvMlp` without its norm when `drop=0`) `fc1`/`fc2` are
    1x1 convolutions on `(B, H, W, C)`, whose kernels keep the conv layout of the checkpoint.
    """

    def __init__(
        self, hidden_dim, out_dim=None, activation="gelu", drop=0.0, use_conv=False, **kwargs
    ):
        super().__init__(**kwargs)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.out_dim = None if out_dim is None else positive_int("out_dim", out_dim)
        self.activation = activation
        self.drop = rate("drop", drop)
        self.use_conv = bool(use_conv)
        self._act = _activation(activation)
        self.fc1 = self._linear(hidden_dim, "fc1")
        self.fc2 = None  # width known at build
        self.dropout = keras.layers.Dropout(self.drop, dtype=self.dtype_policy)

    def build(self, input_shape):
        out_dim = self.out_dim or input_shape[-1]
        self.fc2 = self._linear(out_dim, "fc2")
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (self.hidden_dim,))

    def _linear(self, units, name):
        if self.use_conv:
            return keras.layers.Conv2D(units, 1, name=name, dtype=self.dtype_policy)
        return keras.layers.Dense(units, name=name, dtype=self.dtype_policy)

    def call(self, x, training=None, residual=None):
        """`(..., C)` -> `(..., out)`; plus `residual` (the block's input) when given, fused
        into `fc2` on TensorFlow's graph (flat_tokens.py)."""
        if self.use_conv:
            x = self.dropout(self._conv_act(self.fc1(x)), training=training)
            x = self.dropout(self.fc2(x), training=training)
            return x if residual is None else residual + x
        return apply_flat(self._forward, x, residual=residual, training=training)

    def _conv_act(self, y):
        """The activation after the 1x1 conv `fc1`. SiLU on TensorFlow's graph (not XLA) as
        `y * sigmoid(y)`, the form grappler fuses into oneDNN's conv (`tf.nn.silu`'s custom
        gradient hides it; a separate `_MklSwish` pass costs ~9% of the MLP)."""
        if self.activation in ("silu", "swish") and onednn_graph():
            return y * keras.ops.sigmoid(y)
        return self._act(y)

    def _forward(self, x, training=None):  # (M, C) -> (M, out)
        x = self.dropout(self._fc1_act(x), training=training)
        return self.dropout(self.fc2(x), training=training)

    def _fc1_act(self, x):  # (M, C) -> (M, hidden)
        """`fc1` then the activation. SiLU on TF's oneDNN graph: `fc1` as a 1x1 conv on
        `(1, 1, M, C)`, because grappler fuses bias + `y * sigmoid(y)` into a conv but not
        into a matmul (its matmul fusions know no SiLU), where the separate `_MklSwish` pass
        over the hidden tokens was ~2.5% of MobileViT's time. Same kernel; in float32 the
        same logits (in-process A/B, AMD EPYC Zen 4, batch 8: XXS 164.8 -> 168.4 and 187.6 ->
        192.0 img/s, S 67.4 -> 68.6); in bf16 the SiLU now runs before the rounding to bf16."""
        dense = self.fc1
        silu = self.activation in ("silu", "swish") and dense.quantization_mode is None
        if not (silu and onednn_graph() and not tracing_standard_ops()):
            return self._act(dense(x))
        import tensorflow as tf

        kernel = tf.cast(dense.kernel, x.dtype)[None, None]  # (1, 1, C, hidden)
        y = tf.nn.conv2d(x[None, None], kernel, strides=1, padding="VALID")
        y = tf.nn.bias_add(y, tf.cast(dense.bias, x.dtype))  # (1, 1, M, hidden)
        return tf.reshape(self._conv_act(y), (-1, kernel.shape[-1]))  # the fusable SiLU

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (self.out_dim or input_shape[-1],)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "out_dim": self.out_dim,
            "activation": self.activation,
            "drop": self.drop,
            "use_conv": self.use_conv,
        }


def _activation(name):
    """timm's activations by name; GELU is exact (erf), as PyTorch's default."""
    if name == "gelu":
        return lambda x: keras.activations.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return lambda x: keras.activations.gelu(x, approximate=True)
    if name in ("silu", "swish"):
        return keras.activations.silu
    if name == "relu":
        return keras.activations.relu
    raise ValueError(f"Unknown activation {name!r}; use 'gelu', 'gelu_tanh', 'silu' or 'relu'.")
