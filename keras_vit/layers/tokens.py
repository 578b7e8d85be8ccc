"""Learned prefix tokens: the class token, DeiT's distillation token, register tokens."""

import keras

from keras_vit.layers._validation import positive_int


@keras.saving.register_keras_serializable(package="keras_vit")
class PrependToken(keras.layers.Layer):
    """`num_tokens` learned tokens put in front of the sequence: `(B, N, D)` -> `(B, n + N, D)`.

    One layer for every kind of prefix token. A ViT names each instance after timm's parameter
    (`cls_token` (1, 1, D), `dist_token` (1, 1, D), `reg_token` (1, R, D)), so the variable
    `cls_token/token` maps to the timm key `cls_token` by identity. (The class keeps the name
    it had when it made one token only: Keras files name saved weights after the class.) Stacked
    `cls(reg(x))` gives timm's order `[cls, reg..., patches...]` (`[cls, dist, patches]`).
    timm initialises with a small normal: std 1e-6 for cls and reg, 0.02 for dist.
    """

    timm_param_names = {"token": ""}  # the variable *is* the layer's own checkpoint key

    def __init__(self, num_tokens=1, initializer_stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = positive_int("num_tokens", num_tokens)
        self.initializer_stddev = float(initializer_stddev)

    def build(self, input_shape):
        self.token = self.add_weight(
            shape=(1, self.num_tokens, input_shape[-1]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev),
            name="token",
        )

    def call(self, x):
        batch = keras.ops.shape(x)[0]
        tokens = keras.ops.broadcast_to(
            keras.ops.cast(self.token, x.dtype),
            (batch, self.num_tokens, keras.ops.shape(x)[-1]),
        )  # (B, n, D)
        return keras.ops.concatenate([tokens, x], axis=1)

    def compute_output_shape(self, input_shape):
        n = None if input_shape[1] is None else input_shape[1] + self.num_tokens
        return (input_shape[0], n, input_shape[2])

    def get_config(self):
        return {
            **super().get_config(),
            "num_tokens": self.num_tokens,
            "initializer_stddev": self.initializer_stddev,
        }
