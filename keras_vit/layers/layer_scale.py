import keras


@keras.saving.register_keras_serializable(package="keras_vit")
class LayerScale(keras.layers.Layer):
    """Per-channel learned scale `x * gamma`, gamma initialised to `init_values` (CaiT/timm)."""

    timm_param_names = {"gamma": "gamma"}

    def __init__(self, init_values=1e-5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(init_values, (int, float)) or isinstance(init_values, bool):
            raise ValueError(f"`init_values` must be a number, got {init_values!r}.")
        self.init_values = float(init_values)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_values),
            name="gamma",
        )

    def call(self, x):
        return x * keras.ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_values": self.init_values}
