"""ViT with register tokens and DINOv2: registrations of `VisionTransformer`, no new class.

Register tokens (Darcet et al., "Vision Transformers Need Registers", ICLR 2024) are learned
prefix tokens without a position embedding (`reg_tokens`, `no_embed_class=True`): they sit
between the class token and the patches, `[cls, reg_0..reg_3, patches]`, and absorb the
high-norm "artifact" tokens that otherwise appear in the patch grid. A checkpoint's register
tokens load from timm's key `reg_token`, shape `(1, 4, D)`.

- `vit_*_patch16_reg4_gap_256/384`: timm's own register ViTs ("searching for better
  baselines", sbb): no class token, 4 registers, global average pooling over the patches
  (registers left out) with `fc_norm`, layer scale 1e-5 (none for base).
- DINOv2 (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023):
  patch 14 at 518x518 (a 37x37 grid), layer scale 1e-5, class-token pooling, no classifier
  (the checkpoints are feature extractors: `num_classes=0`). The `..._reg4_dinov2` variants
  add 4 registers; there the position embedding covers the patches only (timm folds the
  original class position into `cls_token` on conversion), in the plain ones it covers
  `[cls, patches]`. Giant uses a SwiGLU MLP (`mlp_layer="swiglu_packed"`, hidden 8192).

`create_model(name, image_size=...)` resamples the position embedding of a checkpoint made
for another grid with the prefix tokens kept out, as timm's `checkpoint_filter_fn`.
"""

from keras_vit.models.vit import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
    VIT_SIZES,
    VisionTransformer,
)
from keras_vit.registry import register_variants

# timm's vit_*_reg4_gap_* entry points (vision_transformer.py): width / depth / heads.
_REG4_GAP_SIZES = {
    "little": dict(embed_dim=320, depth=14, num_heads=5, mlp_ratio=5.6, init_values=1e-5),
    "medium": dict(embed_dim=512, depth=12, num_heads=8, init_values=1e-5),
    "mediumd": dict(embed_dim=512, depth=20, num_heads=8, init_values=1e-5),
    "betwixt": dict(embed_dim=640, depth=12, num_heads=10, init_values=1e-5),
    "base": dict(embed_dim=768, depth=12, num_heads=12),  # no layer scale (timm: untrained)
}
_REG4_GAP_VARIANTS = [
    ("little", 256),
    ("medium", 256),
    ("mediumd", 256),
    ("mediumd", 384),
    ("betwixt", 256),
    ("betwixt", 384),
    ("base", 256),
]
# no class token, 4 registers outside the position embedding, average pooling with fc_norm
_REG4_GAP = dict(class_token=False, reg_tokens=4, no_embed_class=True, global_pool="avg")
register_variants(
    "vit_reg",
    VisionTransformer,
    [
        (
            f"vit_{s}_patch16_reg4_gap_{r}",
            dict(_REG4_GAP_SIZES[s], patch_size=16, image_size=r, **_REG4_GAP),
        )
        for s, r in _REG4_GAP_VARIANTS
    ],
    num_classes=1000,
    mean=IMAGENET_INCEPTION_MEAN,
    std=IMAGENET_INCEPTION_STD,
)

# DINOv2 paper, Table 17 (ViT-S/B/L/g with patch 14); timm's vit_*_patch14_dinov2.
_DINOV2_SIZES = {
    "small": VIT_SIZES["small"],
    "base": VIT_SIZES["base"],
    "large": VIT_SIZES["large"],
    # SwiGLU hidden (int(1536 * 2 * 2/3) + 7) // 8 * 8 = 4096 per half: fc1 packs both, 8192
    "giant": dict(
        embed_dim=1536, depth=40, num_heads=24, mlp_ratio=2.66667 * 2, mlp_layer="swiglu_packed"
    ),
}
_DINOV2 = dict(patch_size=14, image_size=518, init_values=1e-5)
register_variants(
    "dinov2",
    VisionTransformer,
    [
        (
            f"vit_{s}_patch14_{'reg4_' if reg else ''}dinov2",
            dict(arch, **_DINOV2, reg_tokens=4 if reg else 0, no_embed_class=reg),
        )
        for s, arch in _DINOV2_SIZES.items()
        for reg in (False, True)
    ],
    num_classes=0,  # published as feature extractors
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
)
