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
    resample_patch_embed,
)
from keras_vit.layers._validation import non_negative_int, pair, rate
from keras_vit.layers.layer_norm import LayerNorm
from keras_vit.layers.precision import classifier_dtype
from keras_vit.models.base import KerasViTModel, Views
from keras_vit.registry import register_variants

IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_vit")
class VisionTransformer(KerasViTModel):
    """ViT classifier or feature extractor, NHWC input; DeiT, DeiT III and register-token
    ViTs are configurations of it, as in timm's `VisionTransformer`.

    With `include_preprocessing=True` the model takes RGB in 0..255 and normalises with
    `mean`/`std` (the checkpoint's); with False it takes the tensor timm would take, NHWC.
    Output: logits `(B, num_classes)`, or pooled features `(B, embed_dim)` if `num_classes=0`.

    The token stage (timm's constructor arguments and `_pos_embed`):
        class_token: a learned class token in front (`cls_token`, (1, 1, D)).
        reg_tokens: number of register tokens after it (`reg_token`, (1, R, D)).
        distilled: DeiT's distillation token after the class token (`dist_token`) and a
            second classifier `head_dist` on it; the output is `(head(cls) +
            head_dist(dist)) / 2` and `heads_model` gives both (see `DistilledVisionTransformer`).
        no_embed_class: the position embedding covers the patch grid only, `(1, N, D)`, and is
            added before the prefix tokens are put in front (DeiT III, FlexiViT, DINOv2);
            otherwise it covers `[prefix, patches]`, `(1, prefix + N, D)`, added after.
        pos_embed: `"learn"` (a learned absolute embedding) or `"none"`.
        global_pool: `"token"` (the class token) or `"avg"` (mean of the patch tokens, prefix
            tokens left out); `fc_norm` (default: on for `"avg"`) normalises after pooling
            instead of before.
    `num_prefix_tokens` (class + distillation + register tokens) is a property of the model.
    `mlp_layer`: `"mlp"` (GELU MLP) or `"swiglu_packed"` (DINOv2 giant's SwiGLU), of hidden
    width `int(embed_dim * mlp_ratio)` as timm computes it.

    dynamic_img_size: take images of any size, `(B, None, None, C)`, as timm's
        `dynamic_img_size=True`: `pos_embed` is stored for the `image_size` grid and
        interpolated in the graph to each batch's grid (bicubic, antialiased, as timm). Height
        and width must be multiples of the patch size (the conv drops a remainder).
    `patch_size` other than a checkpoint's resamples its patch kernel on loading (FlexiViT's
    pseudo-inverse, timm's `resample_patch_embed`), and `pos_embed` to the new grid.
    """

    # timm's `no_weight_decay()`; 1-D parameters are excluded as well (`KerasViTModel`)
    no_weight_decay_layers = ("pos_embed", "cls_token", "reg_token", "dist_token")

    # float32 inference on a CPU: TF's graph (oneDNN: fused LayerNorm, MatMul + bias + GELU,
    # batched-matmul attention). In-process A/B against XLA, AMD EPYC Zen 4, 2 threads,
    # batch 8, img/s: DeiT-S 38.3 vs 35.5, ViT-B 11.9 vs 11.4. Training stays under XLA
    # (fit, DeiT-S: 9.0 img/s against 6.2 on the graph).
    float32_cpu_graph = ("predict",)

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
        mlp_layer="mlp",
        class_token=True,
        reg_tokens=0,
        no_embed_class=False,
        distilled=False,
        pos_embed="learn",
        dynamic_img_size=False,
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
        if pos_embed not in ("learn", "none"):
            raise ValueError(f"`pos_embed` must be 'learn' or 'none', got {pos_embed!r}.")
        non_negative_int("num_classes", num_classes)
        non_negative_int("reg_tokens", reg_tokens)
        class_token, no_embed_class, distilled = (
            bool(class_token),
            bool(no_embed_class),
            bool(distilled),
        )
        if global_pool == "token" and not class_token:
            raise ValueError(
                "global_pool='token' pools the class token; with class_token=False use "
                "global_pool='avg'."
            )
        if distilled:
            # timm asserts the same: the distilled head reads the two tokens, after `norm`.
            if global_pool != "token":
                raise ValueError(
                    f"Distilled DeiT pools the class and distillation tokens; `global_pool` "
                    f"must be 'token', got {global_pool!r}."
                )
            if fc_norm:
                raise ValueError(f"Distilled DeiT has no `fc_norm`; got fc_norm={fc_norm!r}.")
            if reg_tokens:
                raise ValueError(
                    f"A distilled DeiT has no register tokens; got reg_tokens={reg_tokens!r}."
                )
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
        use_fc_norm = global_pool == "avg" if fc_norm is None else bool(fc_norm)
        num_prefix_tokens = int(class_token) + int(distilled) + reg_tokens
        dynamic_img_size = bool(dynamic_img_size)
        grid_size = (image_size[0] // patch_size, image_size[1] // patch_size)

        # === graph ===
        spatial = (None, None) if dynamic_img_size else image_size
        images = keras.Input((*spatial, in_channels), name="images")
        x = images
        if include_preprocessing:
            x = ImageNormalization(mean, std, name="preprocessing", dtype=dtype)(x)
        x, patch_grid = _patch_stage(x, patch_size, embed_dim, dynamic_img_size, dtype)
        x = _token_stage(
            x,
            class_token,
            reg_tokens,
            distilled,
            no_embed_class,
            pos_embed == "learn",
            dtype,
            patch_grid=patch_grid,
            grid_size=grid_size,
        )  # (B, prefix + N, D)
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
                mlp_layer=mlp_layer,
                name=f"blocks_{i}",
                dtype=dtype,
            )(x)
            block_outputs.append(x)
        if not use_fc_norm:
            x = LayerNorm(epsilon=1e-6, name="norm", dtype=dtype)(x)
        tokens = x  # (B, prefix + N, D), final normalised tokens
        if distilled:
            outputs, heads = _distilled_head(tokens, num_classes, drop_rate, dtype)
        else:
            x = tokens[:, 0] if global_pool == "token" else _avg_pool(tokens, num_prefix_tokens)
            if use_fc_norm:
                x = LayerNorm(epsilon=1e-6, name="fc_norm", dtype=dtype)(x)
            x = keras.layers.Dropout(drop_rate, name="head_drop", dtype=dtype)(x)
            if num_classes:
                x = keras.layers.Dense(num_classes, name="head", dtype=classifier_dtype(dtype))(x)
            outputs, heads = x, {}
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
        self.mlp_layer = mlp_layer
        self.class_token = class_token
        self.reg_tokens = reg_tokens
        self.no_embed_class = no_embed_class
        self.distilled = distilled
        self.pos_embed = pos_embed
        self.dynamic_img_size = dynamic_img_size
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
        self._num_prefix_tokens = num_prefix_tokens
        self._views = Views(tokens=tokens, block_outputs=block_outputs, logits=outputs, **heads)

    # --- public API ---
    @property
    def num_prefix_tokens(self):
        """Tokens in front of the patches: class, distillation and register tokens."""
        return self._num_prefix_tokens

    @property
    def grid_size(self):
        """Patch grid `(H / p, W / p)`."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def head_keys(self):
        """Checkpoint keys of the classifier, which a new `num_classes` starts afresh."""
        heads = ("head", "head_dist") if self.distilled else ("head",)
        return tuple(f"{h}.{p}" for h in heads for p in ("weight", "bias"))

    @property
    def heads_model(self):
        """Distilled models: a `keras.Model` over the same layers (shared weights) returning
        `(cls_logits, dist_logits)`, each `(B, num_classes)` (pre-logits if `num_classes=0`).

        Built once and kept in the untracked `_views` holder, so it adds nothing to this
        model's variables or its `.keras` file.
        """
        if not self.distilled:
            raise AttributeError(
                f"{self.name!r} has one classifier head (distilled=False): no `heads_model`."
            )
        cached = getattr(self._views, "heads_model", None)
        if cached is None:
            cached = keras.Model(
                self.input,  # the one image tensor, so calls take a tensor, not a list
                [self._views.cls_logits, self._views.dist_logits],
                name=f"{self.name}_heads",
            )
            self._views.heads_model = cached
        return cached

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

    # --- training contract (see KerasViTModel) ---
    def _block_id_of_layer(self, top_layer_name):
        """timm's `group_matcher` as `param_groups_layer_decay` numbers it: the stem
        (patch_embed, tokens, pos_embed) 0, `blocks.i` i + 1, the final `norm` with the last
        block (depth), `fc_norm` and the heads depth + 1."""
        if top_layer_name.startswith("blocks_"):
            return int(top_layer_name.split("_")[1]) + 1
        if top_layer_name == "norm":
            return self.depth
        if top_layer_name in ("fc_norm", "head", "head_dist"):
            return self.depth + 1
        return 0

    def _num_blocks(self):
        return self.depth

    def _heads_tensors(self):
        heads = {"logits": self._views.logits}
        if self.distilled:
            heads.update(cls_logits=self._views.cls_logits, dist_logits=self._views.dist_logits)
        return heads

    @property
    def pos_embed_prefix_tokens(self):
        """Prefix tokens inside `pos_embed`: all of them, or none with `no_embed_class`."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    def adapt_checkpoint(self, state_dict):
        """timm's `checkpoint_filter_fn` part that depends on this model: resample the patch
        kernel when the checkpoint has another patch size (FlexiViT), and `pos_embed` (the
        prefix tokens it covers kept out) when it was made for another grid."""
        state_dict = dict(state_dict)
        kernel = state_dict.get("patch_embed.proj.weight")  # (out, in, h, w)
        patch = (self.patch_size, self.patch_size)
        if kernel is not None and np.ndim(kernel) == 4 and tuple(np.shape(kernel)[-2:]) != patch:
            state_dict["patch_embed.proj.weight"] = resample_patch_embed(kernel, patch)
        posemb = state_dict.get("pos_embed")
        prefix = self.pos_embed_prefix_tokens
        expected = prefix + self.grid_size[0] * self.grid_size[1]
        if (
            self.pos_embed == "learn"
            and posemb is not None
            and np.ndim(posemb) == 3
            and posemb.shape[1] != expected
        ):
            try:
                resampled = resample_abs_pos_embed(posemb, self.grid_size, num_prefix_tokens=prefix)
            except ValueError as err:
                raise ValueError(
                    f"pos_embed of shape {tuple(posemb.shape)} does not fit {self.name!r}, whose "
                    f"position embedding covers {prefix} prefix token(s) and a "
                    f"{self.grid_size} patch grid: {err}"
                ) from err
            state_dict = {**state_dict, "pos_embed": resampled}
        return state_dict

    def constructor_config(self):
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "init_values": self.init_values,
            "mlp_layer": self.mlp_layer,
            "class_token": self.class_token,
            "reg_tokens": self.reg_tokens,
            "no_embed_class": self.no_embed_class,
            "distilled": self.distilled,
            "pos_embed": self.pos_embed,
            "dynamic_img_size": self.dynamic_img_size,
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


def _patch_stage(x, patch_size, embed_dim, dynamic_img_size, dtype):
    """Images -> (patch tokens `(B, N, D)`, the patch grid `(B, h, w, D)` or None): a dynamic
    model keeps the grid, whose runtime shape sizes the position embedding."""
    if not dynamic_img_size:
        return PatchEmbedding(patch_size, embed_dim, name="patch_embed", dtype=dtype)(x), None
    grid = PatchEmbedding(patch_size, embed_dim, flatten=False, name="patch_embed", dtype=dtype)(
        x
    )  # (B, h, w, D)
    tokens = keras.layers.Reshape((-1, embed_dim), name="patch_flatten", dtype=dtype)(grid)
    return tokens, grid  # (B, h * w, D), (B, h, w, D)


def _token_stage(
    x,
    class_token,
    reg_tokens,
    distilled,
    no_embed_class,
    learned_pos,
    dtype,
    patch_grid=None,
    grid_size=None,
):
    """Patch tokens `(B, N, D)` -> `(B, prefix + N, D)` with the position embedding, in the
    order of timm's `_pos_embed`: `[cls, dist or reg..., patches]`; the embedding added to
    the patches before the prefix (`no_embed_class`) or to the whole sequence after it.
    With a `patch_grid` (dynamic_img_size), the embedding, stored for `grid_size`, is
    interpolated to the grid's runtime shape."""

    def add_pos_embed(x, num_prefix_tokens):
        if patch_grid is None:
            return PositionEmbedding(name="pos_embed", dtype=dtype)(x)
        layer = PositionEmbedding(
            grid_size=grid_size, num_prefix_tokens=num_prefix_tokens, name="pos_embed", dtype=dtype
        )
        return layer(x, patch_grid)

    if learned_pos and no_embed_class:
        x = add_pos_embed(x, 0)  # (1, N, D)
    # innermost first: cls(dist(x)) / cls(reg(x))
    if reg_tokens:
        x = PrependToken(reg_tokens, initializer_stddev=1e-6, name="reg_token", dtype=dtype)(x)
    if distilled:
        x = PrependToken(1, initializer_stddev=0.02, name="dist_token", dtype=dtype)(x)
    if class_token:
        x = PrependToken(1, initializer_stddev=1e-6, name="cls_token", dtype=dtype)(x)
    if learned_pos and not no_embed_class:
        prefix = int(class_token) + int(distilled) + reg_tokens
        x = add_pos_embed(x, prefix)  # (1, prefix + N, D)
    return x


def _avg_pool(tokens, num_prefix_tokens):
    """`(B, prefix + N, D)` -> `(B, D)`: mean over the patch tokens, prefix tokens left out."""
    return keras.ops.mean(tokens[:, num_prefix_tokens:], axis=1)


def _distilled_head(tokens, num_classes, drop_rate, dtype):
    """tokens `(B, 2 + N, D)` -> averaged output, plus both heads' tensors for the views."""
    drop = keras.layers.Dropout(drop_rate, name="head_drop", dtype=dtype)
    x_cls = drop(tokens[:, 0])  # (B, D)
    x_dist = drop(tokens[:, 1])  # (B, D)
    head_dtype = classifier_dtype(dtype)
    if num_classes:
        x_cls = keras.layers.Dense(num_classes, name="head", dtype=head_dtype)(x_cls)
        x_dist = keras.layers.Dense(num_classes, name="head_dist", dtype=head_dtype)(x_dist)
    # (a + b) / 2 in that order, as timm (Average sums then divides by the count)
    outputs = keras.layers.Average(name="head_average", dtype=head_dtype)([x_cls, x_dist])
    return outputs, {"cls_logits": x_cls, "dist_logits": x_dist}


# Width / depth / heads by size word: the ViT paper (Table 1: B, L, H), DeiT (Ti, S) and
# DeiT III (M); every ViT-shaped family here (ViT, FlexiViT, DeiT, DeiT III, DINOv2) uses them.
VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "medium": dict(embed_dim=512, depth=12, num_heads=8),
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
register_variants(
    "vit",
    VisionTransformer,
    [
        (f"vit_{s}_patch{p}_{r}", dict(VIT_SIZES[s], patch_size=p, image_size=r), s)
        for s, p, r in _VARIANTS
    ],
    # weight-free defaults; a variant's default checkpoint tag (keras_vit/pretrained/
    # checkpoints.json) overrides them, e.g. the headless .dino / .orig_in21k variants
    num_classes=1000,
    mean=IMAGENET_INCEPTION_MEAN,
    std=IMAGENET_INCEPTION_STD,
)

# FlexiViT (Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023): a ViT trained
# with randomised patch sizes, position embedding without the class token, 240 px at patch 16
# (a 15 x 15 grid). Any other patch size dividing the image comes from the same checkpoint:
# `create_model("flexivit_base", weights=..., patch_size=8)` resamples the patch kernel.
register_variants(
    "flexivit",
    VisionTransformer,
    [
        (f"flexivit_{s}", dict(VIT_SIZES[s], patch_size=16, image_size=240, no_embed_class=True))
        for s in ("small", "base", "large")
    ],
    num_classes=1000,
    mean=IMAGENET_INCEPTION_MEAN,
    std=IMAGENET_INCEPTION_STD,
)
