"""Patch embedding, and the pure function that resamples its kernel to another patch size."""

import keras
import numpy as np

from keras_vit.layers._validation import pair, positive_int
from keras_vit.layers.position_embedding import _resize_matrix


@keras.saving.register_keras_serializable(package="keras_vit")
class PatchEmbedding(keras.layers.Layer):
    """Non-overlapping patches -> tokens: a conv with kernel = stride = patch.

    `(B, H, W, C)` -> `(B, (H // p) * (W // p), embed_dim)`, patches in row-major order as
    timm's `PatchEmbed` flattens them. The conv is named `proj` (timm's `patch_embed.proj`).
    With `flatten=False` the grid is kept: `(B, H // p, W // p, embed_dim)`.
    """

    def __init__(self, patch_size, embed_dim, use_bias=True, flatten=True, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = positive_int("patch_size", patch_size)
        self.embed_dim = positive_int("embed_dim", embed_dim)
        self.use_bias = use_bias
        self.flatten = bool(flatten)
        self.proj = keras.layers.Conv2D(
            embed_dim,
            patch_size,
            strides=patch_size,
            use_bias=use_bias,
            name="proj",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self._check_size(input_shape)
        self.proj.build(input_shape)

    def _check_size(self, shape):
        for axis, size in (("height", shape[1]), ("width", shape[2])):
            if isinstance(size, int) and size % self.patch_size:
                raise ValueError(
                    f"Image {axis} {size} is not a multiple of the patch size {self.patch_size}."
                )

    def call(self, images):
        # an input of any size (dynamic_img_size) is checked wherever its size is known when
        # the call is traced; the conv would otherwise drop the remainder silently
        self._check_size(tuple(images.shape))
        x = self.proj(images)  # (B, H/p, W/p, D)
        if not self.flatten:
            return x
        return keras.ops.reshape(x, (keras.ops.shape(x)[0], -1, self.embed_dim))  # (B, N, D)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if not self.flatten:
            h, w = (None if s is None else s // self.patch_size for s in (h, w))
            return (input_shape[0], h, w, self.embed_dim)
        n = None if h is None or w is None else (h // self.patch_size) * (w // self.patch_size)
        return (input_shape[0], n, self.embed_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "use_bias": self.use_bias,
            "flatten": self.flatten,
        }


def resample_patch_embed(patch_embed, new_size, interpolation="bicubic", antialias=True):
    """Resample a `(out, in, h, w)` patch-embedding kernel (timm/torch layout) to `new_size`.

    A pure numpy function, numerically timm's `resample_patch_embed` (FlexiViT, Beyer et al.
    2023, from big_vision): with `R` the `(h'w', hw)` matrix of resizing an `h x w` patch to
    `h' x w'` (torch's `F.interpolate`, here its two axes' weights `kron`-ed), the new kernel is
    `pinv(R)^T` applied to each old one, so that `<resize(patch), new> ~= <patch, old>`: a
    model loaded at another patch size sees resized patches as the old one saw the originals.
    The pseudo-inverse is taken in float64 (timm: float32); the result keeps the input dtype.
    """
    patch_embed = np.asarray(patch_embed)
    if patch_embed.ndim != 4:
        raise ValueError(
            f"`patch_embed` must have shape (out, in, height, width), got {patch_embed.shape}."
        )
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"`interpolation` must be 'bicubic' or 'bilinear', got {interpolation!r}.")
    new_size = pair("new_size", new_size)
    old_size = tuple(patch_embed.shape[-2:])
    if old_size == new_size:
        return patch_embed
    rows = _resize_matrix(old_size[0], new_size[0], interpolation, antialias)  # (h', h)
    cols = _resize_matrix(old_size[1], new_size[1], interpolation, antialias)  # (w', w)
    resize = np.kron(rows, cols)  # (h'w', hw): row-major flattened patches, as torch's reshape
    # timm's cutoff (torch.linalg.pinv in float32: singular values below float32 eps * max
    # dim * the largest are zero). A resize that shrinks one side and grows the other
    # (16 -> (12, 20)) is rank-deficient; numpy's float64 default (1e-15) keeps its
    # round-off singular values, and their inverses (~1e13) swamp the kernel on some CPUs.
    rcond = np.finfo(np.float32).eps * max(resize.shape)
    pinv = np.linalg.pinv(resize, rcond=rcond)  # (hw, h'w')
    c_out, c_in = patch_embed.shape[:2]
    flat = patch_embed.reshape(c_out, c_in, -1).astype(np.float64)  # (out, in, hw)
    out = (flat @ pinv).reshape(c_out, c_in, *new_size)  # (out, in, h', w')
    return out.astype(patch_embed.dtype)
