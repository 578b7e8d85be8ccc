"""SwiGLU feed-forward with one packed input projection (timm's `SwiGLUPacked`, DINOv2 giant)."""

import keras

from keras_vit.layers._validation import positive_int, rate


@keras.saving.register_keras_serializable(package="keras_vit")
class SwiGLUPacked(keras.layers.Layer):
    """`fc1` (D -> H) -> split in halves `(a, b)` -> `silu(a) * b` -> dropout -> `fc2` (H/2 -> D)
    -> dropout: timm's `GluMlp(act_layer=SiLU, gate_last=False)`.

    The value and gate projections are one `fc1` of width `hidden_dim` (both halves, gate
    first), so DINOv2's `w12` / timm's `mlp.fc1` load as they are. `hidden_dim` must be even.
    """

    def __init__(self, hidden_dim, out_dim=None, drop=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        if hidden_dim % 2:
            raise ValueError(f"SwiGLU splits `hidden_dim` in two halves; got odd {hidden_dim}.")
        self.out_dim = None if out_dim is None else positive_int("out_dim", out_dim)
        self.drop = rate("drop", drop)
        self.fc1 = keras.layers.Dense(hidden_dim, name="fc1", dtype=self.dtype_policy)
        self.fc2 = None  # width known at build
        self.dropout = keras.layers.Dropout(self.drop, dtype=self.dtype_policy)

    def build(self, input_shape):
        out_dim = self.out_dim or input_shape[-1]
        self.fc2 = keras.layers.Dense(out_dim, name="fc2", dtype=self.dtype_policy)
        self.fc1.build(input_shape)
        self.fc2.build(input_shape[:-1] + (self.hidden_dim // 2,))

    def call(self, x, training=None, residual=None):
        x = self.fc1(x)  # (..., H)
        gate, value = keras.ops.split(x, 2, axis=-1)  # each (..., H/2); timm's x1, x2
        x = self.dropout(keras.activations.silu(gate) * value, training=training)
        x = self.dropout(self.fc2(x), training=training)
        return x if residual is None else residual + x

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (self.out_dim or input_shape[-1],)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "out_dim": self.out_dim,
            "drop": self.drop,
        }
