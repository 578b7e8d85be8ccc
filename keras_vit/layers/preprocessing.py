import keras


def normalize(images, mean, std, scale=255.0):
    """`(images / scale - mean) / std`, per channel (last axis): the checkpoint's
    normalisation. The one copy of this arithmetic: the model's `ImageNormalization`, the
    SavedModel (for a model built with `include_preprocessing=False`), the tf.data pipeline and
    numpy callers all call it, each passing `mean`/`std` as its own tensor type."""
    return (images / scale - mean) / std


@keras.saving.register_keras_serializable(package="keras_vit")
class ImageNormalization(keras.layers.Layer):
    """RGB pixels in 0..`scale` -> `(x / scale - mean) / std`, per channel (NHWC).

    This is the checkpoint's own normalisation, so a model built with
    `include_preprocessing=True` takes raw 0..255 images.
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=255.0, **kwargs):
        super().__init__(**kwargs)
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if not mean or len(mean) != len(std):
            raise ValueError(f"`mean` and `std` need one value per channel, got {mean} and {std}.")
        if any(s <= 0 for s in std):
            raise ValueError(f"`std` must be positive, got {std}.")
        if scale <= 0:
            raise ValueError(f"`scale` must be positive, got {scale!r}.")
        self.mean, self.std, self.scale = mean, std, float(scale)

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        mean = keras.ops.convert_to_tensor(self.mean, self.compute_dtype)
        std = keras.ops.convert_to_tensor(self.std, self.compute_dtype)
        return normalize(x, mean, std, self.scale)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "scale": self.scale}
