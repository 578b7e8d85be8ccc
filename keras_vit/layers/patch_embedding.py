import keras

from keras_vit.layers._validation import positive_int


@keras.saving.register_keras_serializable(package="keras_vit")
class PatchEmbedding(keras.layers.Layer):
    """Non-overlapping patches -> tokens: a conv with kernel = stride = patch.

    `(B, H, W, C)` -> `(B, (H // p) * (W // p), embed_dim)`, patches in row-major order as
    timm's `PatchEmbed` flattens them. The conv is named `proj` (timm's `patch_embed.proj`).
    """

    def __init__(self, patch_size, embed_dim, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = positive_int("patch_size", patch_size)
        self.embed_dim = positive_int("embed_dim", embed_dim)
        self.use_bias = use_bias
        self.proj = keras.layers.Conv2D(
            embed_dim,
            patch_size,
            strides=patch_size,
            use_bias=use_bias,
            name="proj",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        for axis, size in (("height", height), ("width", width)):
            if size is not None and size % self.patch_size:
                raise ValueError(
                    f"Image {axis} {size} is not a multiple of the patch size {self.patch_size}."
                )
        self.proj.build(input_shape)

    def call(self, images):
        x = self.proj(images)  # (B, H/p, W/p, D)
        return keras.ops.reshape(x, (keras.ops.shape(x)[0], -1, self.embed_dim))  # (B, N, D)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        n = None if h is None or w is None else (h // self.patch_size) * (w // self.patch_size)
        return (input_shape[0], n, self.embed_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "use_bias": self.use_bias,
        }
