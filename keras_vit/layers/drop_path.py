import keras

from keras_vit.layers._validation import rate as check_rate


@keras.saving.register_keras_serializable(package="keras_vit")
class DropPath(keras.layers.Layer):
    """Stochastic depth: in training, drops a residual branch for whole samples.

    Each sample's branch is kept with probability `1 - rate` and divided by it when kept, so
    the expected value is unchanged; at inference it is the identity (timm's `DropPath`).
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_rate("rate", rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None
        # Nothing to build (no weights), as keras.layers.Dropout: built from the start, so that
        # `model.quantize` finds it built even where a block never calls it symbolically
        # (TransformerBlock computes its output shape without running `call`).
        self.built = True

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        # one draw per sample, broadcast over every other axis: (B, 1, ..., 1)
        shape = (keras.ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype) < keep
        return x * keras.ops.cast(mask, x.dtype) / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
