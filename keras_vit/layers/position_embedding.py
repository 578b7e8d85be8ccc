"""Learned absolute position embedding, and the pure function that resamples it to a new grid."""

import math

import keras
import numpy as np

from keras_vit.layers._validation import non_negative_int, pair


@keras.saving.register_keras_serializable(package="keras_vit")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned `(1, N, D)` embedding to a `(B, N, D)` sequence (timm's `pos_embed`).

    N counts the prefix tokens (class, distillation) as well as the patches, as in timm's
    ViT/DeiT (`no_embed_class=False`), or the patches only (`no_embed_class=True`).

    With `grid_size=(gh, gw)` the embedding is stored for that patch grid and interpolated in
    the graph to the grid of each call, as timm's `dynamic_img_size=True`: `call(x, grid)`
    takes the sequence `(B, prefix + h*w, D)` and the patch grid `(B, h, w, D)` it came from
    (only its shape is read). The first `num_prefix_tokens` entries are kept out of the
    interpolation. The weights are torch's `F.interpolate(mode="bicubic", antialias=True,
    align_corners=False)`, as timm's `resample_abs_pos_embed`, built from the runtime size
    (`interpolation_matrix`), so the same model takes any input size on every backend.
    """

    timm_param_names = {"embedding": ""}

    def __init__(self, initializer_stddev=0.02, grid_size=None, num_prefix_tokens=0, **kwargs):
        super().__init__(**kwargs)
        self.initializer_stddev = float(initializer_stddev)
        self.grid_size = None if grid_size is None else pair("grid_size", grid_size)
        self.num_prefix_tokens = non_negative_int("num_prefix_tokens", num_prefix_tokens)

    def build(self, x_shape, grid_shape=None):
        if self.grid_size is not None:
            length = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        elif x_shape[1] is None:
            raise ValueError(
                "PositionEmbedding needs a known sequence length; build the model for one "
                "image size (create_model(..., image_size=...)), or give `grid_size` to "
                "interpolate it to each input (dynamic_img_size=True)."
            )
        else:
            length = x_shape[1]
        self.embedding = self.add_weight(
            shape=(1, length, x_shape[2]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev),
            name="embedding",
        )

    def call(self, x, grid=None):
        embedding = self.embedding
        if self.grid_size is not None:
            if grid is None:
                raise ValueError(
                    "A PositionEmbedding with `grid_size` takes `(sequence, patch_grid)`; "
                    "the patch grid `(B, h, w, D)` gives the size to interpolate to."
                )
            shape = keras.ops.shape(grid)
            embedding = self._resampled(shape[1], shape[2])
        return x + keras.ops.cast(embedding, x.dtype)

    def _resampled(self, height, width):
        """The embedding at a `height x width` patch grid: `(1, prefix + height * width, D)`."""
        prefix = self.num_prefix_tokens
        gh, gw = self.grid_size
        embedding = keras.ops.cast(self.embedding, "float32")
        dim = embedding.shape[-1]
        grid = keras.ops.reshape(embedding[0, prefix:], (gh, gw, dim))  # (gh, gw, D)
        rows = interpolation_matrix(gh, height)  # (height, gh)
        cols = interpolation_matrix(gw, width)  # (width, gw)
        grid = keras.ops.einsum("Ww,hwd->hWd", cols, grid)  # (gh, width, D)
        grid = keras.ops.einsum("Hh,hWd->HWd", rows, grid)  # (height, width, D)
        grid = keras.ops.reshape(grid, (1, -1, dim))  # (1, height * width, D)
        return keras.ops.concatenate([embedding[:, :prefix], grid], axis=1)

    def compute_output_shape(self, x_shape, grid_shape=None):
        return x_shape

    def get_config(self):
        return {
            **super().get_config(),
            "initializer_stddev": self.initializer_stddev,
            "grid_size": self.grid_size,
            "num_prefix_tokens": self.num_prefix_tokens,
        }


def interpolation_matrix(in_size, out_size):
    """`(out_size, in_size)` float32 weights of torch's `F.interpolate(mode="bicubic",
    antialias=True, align_corners=False)` on one axis, in `keras.ops` (any backend, inside a
    compiled graph): `in_size` a Python int, `out_size` an int or a scalar tensor (the runtime
    grid). The same weights as `_resize_matrix(in_size, out_size, "bicubic", True)`.

    Output `i` centres at `scale * (i + 0.5)` (`scale = in / out`); tap `j` weighs
    `cubic((j + 0.5 - centre) / max(scale, 1))` with PIL's a = -0.5 (the kernel widens by the
    scale when shrinking: the antialias), taps outside the input are dropped and each row is
    renormalised. The cubic is zero beyond |x| = 2, which is exactly torch's tap window.
    """
    out_f = keras.ops.cast(out_size, "float32")
    scale = float(in_size) / out_f
    stretch = keras.ops.maximum(scale, 1.0)  # 1 / invscale
    centres = scale * (keras.ops.arange(out_size, dtype="float32") + 0.5)  # (out,)
    taps = keras.ops.arange(in_size, dtype="float32") + 0.5  # (in,)
    x = keras.ops.abs(taps[None, :] - centres[:, None]) / stretch  # (out, in)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    weights = keras.ops.where(x < 1.0, near, keras.ops.where(x < 2.0, far, 0.0))
    return weights / keras.ops.sum(weights, axis=1, keepdims=True)


def _cubic(x, a):
    """Keys' cubic convolution kernel (PyTorch's `cubic_convolution1/2`)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _triangle(x):
    return np.maximum(0.0, 1.0 - np.abs(x))


def _resize_matrix(in_size, out_size, interpolation, antialias):
    """(out_size, in_size) weights reproducing `torch.nn.functional.interpolate` on one axis.

    align_corners=False. With antialias, PyTorch follows PIL: the filter widens by the scale
    when shrinking, taps outside the input are dropped and the rest renormalised, and bicubic
    uses a = -0.5. Without it, bicubic uses a = -0.75 and replicates the border.
    """
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), np.float64)
    if antialias:
        filt, half_taps = (
            ((lambda x: _cubic(x, -0.5)), 2.0) if interpolation == "bicubic" else (_triangle, 1.0)
        )
        support = half_taps * scale if scale >= 1.0 else half_taps
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(out_size):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)  # C++ truncation, as PyTorch does
            hi = min(int(center + support + 0.5), in_size)
            taps = np.arange(lo, hi)
            w = filt((taps - center + 0.5) * invscale)
            total = w.sum()
            weights[i, lo:hi] = w / total if total != 0 else w
        return weights
    for i in range(out_size):
        if interpolation == "bicubic":
            real = scale * (i + 0.5) - 0.5
            base = math.floor(real)
            t = real - base
            w = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for offset, wk in zip(range(-1, 3), w):
                weights[i, min(max(base + offset, 0), in_size - 1)] += wk
        else:  # bilinear
            real = max(scale * (i + 0.5) - 0.5, 0.0)
            i0 = min(int(real), in_size - 1)
            i1 = min(i0 + 1, in_size - 1)
            lam = real - i0
            weights[i, i0] += 1 - lam
            weights[i, i1] += lam
    return weights


def resample_abs_pos_embed(
    posemb,
    new_size,
    old_size=None,
    num_prefix_tokens=1,
    interpolation="bicubic",
    antialias=True,
):
    """Resample a `(1, prefix + H*W, D)` position embedding to a `new_size` grid.

    A pure numpy function, numerically the same as timm's `resample_abs_pos_embed` (defaults
    included: bicubic, antialias). Prefix tokens (class, distillation) are kept out of the
    interpolation and put back in front. `old_size` defaults to a square grid.
    """
    posemb = np.asarray(posemb)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"`posemb` must have shape (1, tokens, dim), got {posemb.shape}.")
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"`interpolation` must be 'bicubic' or 'bilinear', got {interpolation!r}.")
    new_size = pair("new_size", new_size)
    num_grid = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(num_grid)
        if side * side != num_grid:
            raise ValueError(
                f"A position embedding of {num_grid} grid tokens is not square; pass `old_size`."
            )
        old_size = (side, side)
    old_size = pair("old_size", old_size)
    if old_size[0] * old_size[1] != num_grid:
        raise ValueError(
            f"`old_size` {old_size} does not match the {num_grid} grid tokens of `posemb`."
        )
    if tuple(old_size) == tuple(new_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    grid = grid.reshape(old_size[0], old_size[1], -1).astype(np.float64)  # (h, w, D)
    rows = _resize_matrix(old_size[0], new_size[0], interpolation, antialias)  # (H', h)
    cols = _resize_matrix(old_size[1], new_size[1], interpolation, antialias)  # (W', w)
    grid = np.einsum("Hh,hwd,Ww->HWd", rows, grid, cols)  # (H', W', D)
    grid = grid.reshape(1, new_size[0] * new_size[1], -1).astype(posemb.dtype)
    return np.concatenate([prefix, grid], axis=1)
