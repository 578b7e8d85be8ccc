"""Where the model looks: per-block attention weights, attention rollout, and an overlay image.

Works for any functional model built from `TransformerBlock`s (ViT, DeiT with or without the
distillation token): the model's own graph is walked for its blocks, and each block's input
feeds a probe that asks the same block (same weights) for its softmax attention.

Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
average the heads, add the identity for the residual path, renormalise the rows, and multiply
the layers' matrices, first block rightmost. The class token's row over the patch tokens,
reshaped to the patch grid, is the map.
"""

import keras
import numpy as np

from keras_vit import _keras_compat
from keras_vit.layers import TransformerBlock


class _AttentionProbe(keras.layers.Layer):
    """tokens `(B, N, D)` -> the softmax attention `(B, heads, N, N)` of `block` on them."""

    def __init__(self, block, **kwargs):
        super().__init__(**kwargs)
        self._block = [block]  # in a list: shared with the model, not tracked twice

    def call(self, tokens):
        _, attn = self._block[0](tokens, return_attention_scores=True)
        return attn

    def compute_output_shape(self, input_shape):
        batch, tokens = input_shape[0], input_shape[1]
        return (batch, self._block[0].num_heads, tokens, tokens)


def transformer_blocks(model):
    """The model's `TransformerBlock`s in graph order."""
    blocks = [layer for layer in model.layers if isinstance(layer, TransformerBlock)]
    if not blocks:
        raise ValueError(
            f"Model {model.name!r} has no TransformerBlock: attention maps need a ViT or DeiT."
        )
    return blocks


def attention_model(model):
    """A `keras.Model` over `model`'s layers (shared weights) returning each block's attention
    weights `(B, heads, N, N)`, one per block, float32. Built once per model."""
    views = getattr(model, "_views", None)
    cached = getattr(views, "attention_model", None)
    if cached is not None:
        return cached
    outputs = []
    for block in transformer_blocks(model):
        # the block's first inbound node is its place in the model's own graph
        tokens = _keras_compat.inbound_tensor(block)  # (B, N, D)
        outputs.append(_AttentionProbe(block, name=f"{block.name}_attention")(tokens))
    probe = keras.Model(model.inputs, outputs, name=f"{model.name}_attention")
    if views is not None:  # the untracked holder: the probe adds nothing to the model's state
        views.attention_model = probe
    return probe


def attention_weights(model, images):
    """Every block's attention for `images` (as the model takes them): list of numpy arrays
    `(B, heads, N, N)`, N = prefix tokens + patches."""
    out = attention_model(model).predict_on_batch(images)
    return [np.asarray(a, np.float32) for a in (out if isinstance(out, list) else [out])]


def attention_rollout(attentions, num_prefix_tokens=1, grid_size=None, head_fusion="mean"):
    """Attention rollout -> the class token's map over the patches.

    Args:
        attentions: per-block attention `(B, heads, N, N)` (or `(heads, N, N)`), first block
            first, as `attention_weights` returns.
        num_prefix_tokens: tokens before the patches (1: class; 2: class + distillation).
        grid_size: `(gh, gw)` with `gh * gw = N - num_prefix_tokens`; None: a square grid.
        head_fusion: "mean" (the paper), "max" or "min" over the heads.
    Returns: `(B, gh, gw)` float32 (`(gh, gw)` for unbatched input); rows of the rollout sum
        to 1, so the map holds the share of the class token's attention each patch gets.
    """
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"`head_fusion` must be 'mean', 'max' or 'min', got {head_fusion!r}.")
    if not attentions:
        raise ValueError("`attentions` is empty: need one attention array per block.")
    arrays = [np.asarray(a, np.float64) for a in attentions]
    unbatched = arrays[0].ndim == 3
    if unbatched:
        arrays = [a[None] for a in arrays]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 4 or arrays[0].shape[-1] != arrays[0].shape[-2]:
        raise ValueError(f"Attention arrays must all be (B, heads, N, N), got {sorted(shapes)}.")
    batch, _, tokens, _ = arrays[0].shape
    num_patches = tokens - num_prefix_tokens
    if grid_size is None:
        side = int(round(num_patches**0.5))
        grid_size = (side, side)
    if num_patches <= 0 or grid_size[0] * grid_size[1] != num_patches:
        raise ValueError(
            f"{tokens} tokens with {num_prefix_tokens} prefix tokens do not fill a grid of "
            f"{tuple(grid_size)}."
        )
    eye = np.eye(tokens)
    rollout = np.broadcast_to(eye, (batch, tokens, tokens))
    for attn in arrays:
        fused = getattr(attn, head_fusion)(axis=1)  # (B, N, N)
        fused = fused + eye  # the residual connection carries the token itself
        fused = fused / fused.sum(axis=-1, keepdims=True)
        rollout = fused @ rollout  # later blocks on the left
    cls_map = rollout[:, 0, num_prefix_tokens:]  # (B, gh * gw): class token over the patches
    maps = cls_map.reshape(batch, *grid_size).astype(np.float32)
    return maps[0] if unbatched else maps


def rollout_map(model, images, head_fusion="mean"):
    """`attention_rollout` of `model` on `images`: `(B, gh, gw)`."""
    return attention_rollout(
        attention_weights(model, images),
        num_prefix_tokens=getattr(model, "num_prefix_tokens", 1),
        grid_size=getattr(model, "grid_size", None),
        head_fusion=head_fusion,
    )


def _colormap(values):
    """values in [0, 1] `(h, w)` -> RGB uint8 `(h, w, 3)`, a blue-cyan-yellow-red ramp (jet)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(
        np.concatenate(
            [1.5 - np.abs(4 * v - 3), 1.5 - np.abs(4 * v - 2), 1.5 - np.abs(4 * v - 1)], -1
        ),
        0.0,
        1.0,
    )
    return (rgb * 255).round().astype(np.uint8)


def overlay(image, heatmap, alpha=0.5):
    """Blend `heatmap` `(gh, gw)`, stretched to its min..max and resized (bilinear) to the
    image, over `image` (PIL image or uint8 `(H, W, 3)`). Returns a PIL RGB image of the
    image's size. A constant map shows as the ramp's lowest colour."""
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}.")
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, np.uint8))
    image = image.convert("RGB")
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"`heatmap` must be 2-D (gh, gw), got shape {heatmap.shape}.")
    span = float(heatmap.max() - heatmap.min())
    scaled = (heatmap - heatmap.min()) / span if span > 0 else np.zeros_like(heatmap)
    # resize the [0, 1] map itself (mode "F"), then colour: smooth, no colour fringes
    resized = Image.fromarray(scaled, mode="F").resize(image.size, Image.BILINEAR)
    colours = Image.fromarray(_colormap(np.asarray(resized)))
    return Image.blend(image, colours, alpha)
