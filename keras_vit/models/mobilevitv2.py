"""MobileViT v2 (Mehta & Rastegari, "Separable Self-attention for Mobile Vision Transformers",
2022), as timm builds `mobilevitv2_050` ... `mobilevitv2_200` (a `ByobNet`, `_mobilevitv2_cfg`).

Widths scale by the multiplier m of the name (0.5 ... 2.0):

    stem      3x3 conv stride 2 + BN + SiLU, 32m channels                  stride 2
    stages_0  inverted residual, 64m                                        stride 2
    stages_1  2 inverted residuals (first stride 2), 128m                   stride 4
    stages_2  inverted residual (stride 2) + MobileViT v2 block (2 layers)  stride 8
    stages_3  inverted residual (stride 2) + MobileViT v2 block (4 layers)  stride 16
    stages_4  inverted residual (stride 2) + MobileViT v2 block (3 layers)  stride 32
    head      global average pool + `fc` (no final conv: 512m features)

The MobileViT v2 blocks (separable linear self-attention, GroupNorm-1 norms, transformer
width half the stage's) are in `keras_vit.layers.mobilevitv2_blocks`; everything else is
MobileViT v1's (stem, inverted residuals, head, stage layout, checkpoint keys).
"""

import functools

import keras

from keras_vit.layers._validation import pair
from keras_vit.layers.mobilevitv2_blocks import MobileViTV2Block
from keras_vit.layers.squeeze_excite import make_divisible
from keras_vit.models.base import Views
from keras_vit.models.mobilevit import (
    MOBILEVIT_MEAN,
    MOBILEVIT_STD,
    MobileViTBase,
    check_head_args,
    check_stage_args,
    mobilevit_outputs,
    mobilevit_stages,
    mobilevit_stem,
)
from keras_vit.registry import register_variants


@keras.saving.register_keras_serializable(package="keras_vit")
class MobileViTV2(MobileViTBase):
    """MobileViT v2 classifier or backbone, NHWC input.

    Any `image_size` works: where a stage's map is not a multiple of the patch, its MobileViT
    v2 block resizes its input up to the next multiple (and the network goes on at that size),
    as timm does (see `MobileViTV2Block`). Output: logits `(B, num_classes)`; pooled features
    `(B, channels[-1])` with `num_classes=0`; with `features_only=True` the list of five
    feature maps at strides 2, 4, 8, 16, 32 (timm's `features_only=True`: the outputs of
    `stages_0` .. `stages_4`), also available from any model through `feature_model()`.

    Args:
        stem_channels, channels: widths of the stem and of the five stages.
        depths: inverted residuals per stage; strides: stride of each stage's first block.
        transformer_dims, transformer_depths: width and depth of the MobileViT v2 block that
            ends each of the last `len(transformer_dims)` stages.
        expansion: inverted-residual expansion ratio.
        mlp_ratio: hidden width of the transformer MLPs, relative to their width.
    """

    # Float32 inference on TF's graph runs the first MobileViT v2 block (stride 8) on as
    # one XLA program (`xla_tail_from`, models/base.py): its GroupNorms, separable linear
    # attention and 1x1 convs are many small ops on the graph, which XLA fuses, while the
    # stride-2/4 inverted residuals (large maps, grouped depthwise convs that XLA runs
    # slowly) stay on oneDNN's graph. In-process A/B, AMD EPYC (avx512_bf16, no AMX, 2
    # cores), batch 8, float32, halves, img/s, graph vs this tail (vs a tail from
    # `stages_3_1`): v2 0.5 80.4 vs 99.8 (86.0), v2 1.0 35.0 vs 37.8 (35.4); logits within
    # 3e-6.
    xla_tail_from = "stages_2_1"

    CONFIG_KEYS = (
        "image_size", "stem_channels", "channels", "depths", "strides", "transformer_dims",
        "transformer_depths", "expansion", "patch_size", "mlp_ratio", "num_classes",
        "global_pool", "features_only", "drop_rate", "attn_drop_rate", "drop_path_rate",
        "include_preprocessing", "mean", "std", "in_channels",
    )  # fmt: skip

    def __init__(
        self,
        image_size=256,
        stem_channels=32,
        channels=(64, 128, 256, 384, 512),
        depths=(1, 2, 1, 1, 1),
        strides=(1, 2, 2, 2, 2),
        transformer_dims=(128, 192, 256),
        transformer_depths=(2, 4, 3),
        expansion=2.0,
        patch_size=2,
        mlp_ratio=2.0,
        num_classes=1000,
        global_pool="avg",
        features_only=False,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        include_preprocessing=True,
        mean=MOBILEVIT_MEAN,
        std=MOBILEVIT_STD,
        in_channels=3,
        name=None,
        dtype=None,
        **kwargs,
    ):
        image_size = pair("image_size", image_size)
        channels, depths, strides, transformer_dims, transformer_depths = check_stage_args(
            channels, depths, strides, transformer_dims, transformer_depths
        )
        check_head_args(global_pool, num_classes, drop_rate, attn_drop_rate, drop_path_rate)

        # === graph ===
        images, x = mobilevit_stem(
            image_size, in_channels, include_preprocessing, mean, std, stem_channels, dtype
        )  # x: (B, H/2, W/2, C)
        v2_blocks = [
            functools.partial(
                MobileViTV2Block,
                dim,
                depth,
                patch_size=patch_size,
                mlp_ratio=mlp_ratio,
                attn_drop=attn_drop_rate,
            )
            for dim, depth in zip(transformer_dims, transformer_depths)
        ]
        x, stage_outputs = mobilevit_stages(
            x, channels, depths, strides, expansion, None, drop_path_rate, v2_blocks, dtype
        )
        # timm's feature_info: every stage output (its `final_conv` is an identity)
        features = stage_outputs
        outputs = mobilevit_outputs(x, features, features_only, num_classes, drop_rate, dtype)
        super().__init__(inputs=images, outputs=outputs, name=name, dtype=dtype, **kwargs)
        self._keep_config(locals())
        self._views = Views(features=features)


def mobilevitv2_arch(multiplier):
    """timm's `_mobilevitv2_cfg(multiplier)`: widths (64, 128, 256, 384, 512) and stem 32, each
    times the multiplier (truncated, as `int()`), transformer width `make_divisible(0.5 c)`."""
    channels = (64, 128, 256, 384, 512)
    if multiplier != 1.0:
        channels = tuple(int(c * multiplier) for c in channels)
    return dict(
        stem_channels=int(32 * multiplier),
        channels=channels,
        transformer_dims=tuple(make_divisible(0.5 * c) for c in channels[2:]),
    )


_MULTIPLIERS = {
    "050": 0.5,
    "075": 0.75,
    "100": 1.0,
    "125": 1.25,
    "150": 1.5,
    "175": 1.75,
    "200": 2.0,
}

register_variants(
    "mobilevitv2",
    MobileViTV2,
    [
        (f"mobilevitv2_{s}", dict(mobilevitv2_arch(m), image_size=256))
        for s, m in _MULTIPLIERS.items()
    ],
    num_classes=1000,
    mean=MOBILEVIT_MEAN,
    std=MOBILEVIT_STD,
)
