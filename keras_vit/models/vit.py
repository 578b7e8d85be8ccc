"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

A functional graph inside a `keras.Model` subclass. Weight names follow timm's keys
(`patch_embed/proj`, `cls_token`, `pos_embed`, `blocks_3/attn/qkv`, `norm`, `fc_norm`, `head`)
so that a timm checkpoint converts by an almost-identity map.
"""

import keras
import numpy as np

from keras_vit.layers import (
    ImageNormalization,
    PatchEmbedding,
    PositionEmbedding,
    PrependToken,
    TransformerBlock,
    resample_abs_pos_embed,
)
from keras_vit.layers._validation import non_negative_int, pair, rate
from keras_vit.models.base import Views, XLAByDefault
from keras_vit.registry import register_model

IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_vit")
class VisionTransformer(XLAByDefault, keras.Model):
    """ViT classifier or feature extractor, NHWC input.

    With `include_preprocessing=True` the model takes RGB in 0..255 and normalises with
    `mean`/`std` (the checkpoint's); with False it takes the tensor timm would take, NHWC.
    Output: logits `(B, num_classes)`, or pooled features `(B, embed_dim)` if `num_classes=0`.
    """

    num_prefix_tokens = 1  # the class token; distilled DeiT has two

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=True,
        init_values=None,
        num_classes=1000,
        global_pool="token",
        fc_norm=None,
        drop_rate=0.0,
        pos_drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        include_preprocessing=True,
        mean=IMAGENET_INCEPTION_MEAN,
        std=IMAGENET_INCEPTION_STD,
        in_channels=3,
        name=None,
        dtype=None,
        **kwargs,
    ):
        image_size = pair("image_size", image_size)
        if global_pool not in ("token", "avg"):
            raise ValueError(f"`global_pool` must be 'token' or 'avg', got {global_pool!r}.")
        non_negative_int("num_classes", num_classes)
        for size in image_size:
            if size % patch_size:
                raise ValueError(
                    f"`image_size` {image_size} must be a multiple of the patch size {patch_size}."
                )
        rates = dict(
            drop_rate=drop_rate,
            pos_drop_rate=pos_drop_rate,
            proj_drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
        )
        for arg, value in rates.items():
            rate(arg, value)
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm

        # === graph ===
        images = keras.Input((image_size[0], image_size[1], in_channels), name="images")
        x = images
        if include_preprocessing:
            x = ImageNormalization(mean, std, name="preprocessing", dtype=dtype)(x)
        x = PatchEmbedding(patch_size, embed_dim, name="patch_embed", dtype=dtype)(x)  # (B, N, D)
        x = self._add_prefix_tokens(x, dtype)  # (B, prefix + N, D)
        x = PositionEmbedding(name="pos_embed", dtype=dtype)(x)
        x = keras.layers.Dropout(pos_drop_rate, name="pos_drop", dtype=dtype)(x)
        # stochastic depth grows linearly over the blocks (timm's `dpr`)
        drop_paths = np.linspace(0.0, drop_path_rate, depth).tolist() if depth else []
        block_outputs = []
        for i in range(depth):
            x = TransformerBlock(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=drop_paths[i],
                init_values=init_values,
                name=f"blocks_{i}",
                dtype=dtype,
            )(x)
            block_outputs.append(x)
        if not use_fc_norm:
            x = keras.layers.LayerNormalization(epsilon=1e-6, name="norm", dtype=dtype)(x)
        tokens = x  # (B, prefix + N, D), final normalised tokens
        outputs, heads = self._build_head(
            tokens, num_classes, global_pool, use_fc_norm, drop_rate, dtype
        )
        super().__init__(inputs=images, outputs=outputs, name=name, dtype=dtype, **kwargs)

        # === config (constructor arguments only) ===
        self.image_size = image_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.init_values = init_values
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.fc_norm = fc_norm
        self.drop_rate = drop_rate
        self.pos_drop_rate = pos_drop_rate
        self.proj_drop_rate = proj_drop_rate
        self.attn_drop_rate = attn_drop_rate
        self.drop_path_rate = drop_path_rate
        self.include_preprocessing = include_preprocessing
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.in_channels = in_channels
        self._views = Views(tokens=tokens, block_outputs=block_outputs, **heads)

    # --- hooks a family may override (distilled DeiT adds a token and a head) ---
    def _add_prefix_tokens(self, x, dtype):
        return PrependToken(initializer_stddev=1e-6, name="cls_token", dtype=dtype)(x)

    def _build_head(self, tokens, num_classes, global_pool, use_fc_norm, drop_rate, dtype):
        """tokens `(B, T, D)` -> (outputs, extra named tensors for views)."""
        x = self._pool(tokens, global_pool)
        if use_fc_norm:
            x = keras.layers.LayerNormalization(epsilon=1e-6, name="fc_norm", dtype=dtype)(x)
        x = keras.layers.Dropout(drop_rate, name="head_drop", dtype=dtype)(x)
        if num_classes:
            x = keras.layers.Dense(num_classes, name="head", dtype=dtype)(x)
        return x, {}

    def _pool(self, tokens, global_pool):
        if global_pool == "avg":  # mean over patch tokens, prefix tokens left out
            return keras.ops.mean(tokens[:, self.num_prefix_tokens :], axis=1)
        return tokens[:, 0]  # (B, D) the class token

    # --- public API ---
    @property
    def grid_size(self):
        """Patch grid `(H / p, W / p)`."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def head_keys(self):
        """Checkpoint keys of the classifier, which a new `num_classes` starts afresh."""
        return ("head.weight", "head.bias")

    def intermediate_model(self, indices=None):
        """A `keras.Model` over the same layers returning the token sequences `(B, T, D)` after
        each block in `indices` (default: all), before the final norm (timm's
        `forward_intermediates` without the norm)."""
        outputs = self._views.block_outputs
        if indices is not None:
            bad = [i for i in indices if not -self.depth <= i < self.depth]
            if bad:
                raise ValueError(f"Block indices {bad} out of range for depth {self.depth}.")
            outputs = [outputs[i] for i in indices]
        return keras.Model(self.inputs, outputs, name=f"{self.name}_intermediates")

    def forward_intermediates(self, images, indices=None):
        """Every (or the chosen) block's token sequence for `images`, as a list of arrays."""
        out = self.intermediate_model(indices).predict_on_batch(images)
        return out if isinstance(out, list) else [out]

    def adapt_checkpoint(self, state_dict):
        """timm's `checkpoint_filter_fn` part that depends on this model: resample `pos_embed`
        (prefix tokens kept out) when the checkpoint was made for another grid."""
        posemb = state_dict.get("pos_embed")
        expected = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        if posemb is not None and posemb.ndim == 3 and posemb.shape[1] != expected:
            state_dict = dict(state_dict)
            state_dict["pos_embed"] = resample_abs_pos_embed(
                posemb, self.grid_size, num_prefix_tokens=self.num_prefix_tokens
            )
        return state_dict

    def get_config(self):
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "init_values": self.init_values,
            "num_classes": self.num_classes,
            "global_pool": self.global_pool,
            "fc_norm": self.fc_norm,
            "drop_rate": self.drop_rate,
            "pos_drop_rate": self.pos_drop_rate,
            "proj_drop_rate": self.proj_drop_rate,
            "attn_drop_rate": self.attn_drop_rate,
            "drop_path_rate": self.drop_path_rate,
            "include_preprocessing": self.include_preprocessing,
            "mean": self.mean,
            "std": self.std,
            "in_channels": self.in_channels,
            "name": self.name,
            "dtype": self.dtype_policy.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# Sizes from the ViT paper (Table 1) and DeiT (Ti, S); timm registers these exact variants.
_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
_VARIANTS = [
    ("tiny", 16, 224),
    ("tiny", 16, 384),
    ("small", 32, 224),
    ("small", 32, 384),
    ("small", 16, 224),
    ("small", 16, 384),
    ("small", 8, 224),
    ("base", 32, 224),
    ("base", 32, 384),
    ("base", 16, 224),
    ("base", 16, 384),
    ("base", 8, 224),
    ("large", 32, 224),
    ("large", 32, 384),
    ("large", 16, 224),
    ("large", 16, 384),
    ("large", 14, 224),
    ("huge", 14, 224),
]
for _size, _patch, _res in _VARIANTS:
    _name = f"vit_{_size}_patch{_patch}_{_res}"
    register_model(
        _name,
        VisionTransformer,
        family="vit",
        arch=dict(_SIZES[_size], patch_size=_patch, image_size=_res),
        # weight-free defaults; a variant's default checkpoint tag (keras_vit/pretrained/
        # checkpoints.json) overrides them, e.g. the headless .dino / .orig_in21k variants
        num_classes=1000,
        mean=IMAGENET_INCEPTION_MEAN,
        std=IMAGENET_INCEPTION_STD,
    )
