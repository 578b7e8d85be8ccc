import keras


@keras.saving.register_keras_serializable(package="keras_vit")
class PrependToken(keras.layers.Layer):
    """A learned token put in front of the sequence: `(B, N, D)` -> `(B, 1 + N, D)`.

    The class token and DeiT's distillation token are each one of these (named `cls_token`,
    `dist_token`); stacking `cls(dist(x))` gives timm's order `[cls, dist, patches...]`.
    timm initialises these with a small normal (std 1e-6 for cls, 0.02 for dist).
    """

    timm_param_names = {"token": ""}  # the variable *is* the layer's own checkpoint key

    def __init__(self, initializer_stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_stddev = float(initializer_stddev)

    def build(self, input_shape):
        self.token = self.add_weight(
            shape=(1, 1, input_shape[-1]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev),
            name="token",
        )

    def call(self, x):
        batch = keras.ops.shape(x)[0]
        token = keras.ops.broadcast_to(
            keras.ops.cast(self.token, x.dtype), (batch, 1, keras.ops.shape(x)[-1])
        )
        return keras.ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape):
        n = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], n, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "initializer_stddev": self.initializer_stddev}
