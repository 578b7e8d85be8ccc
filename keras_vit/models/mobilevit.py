"""MobileViT (Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and Mobile-friendly
Vision Transformer", ICLR 2022), as timm builds `mobilevit_xxs/xs/s` (a `ByobNet`).

    stem      3x3 conv stride 2 + BN + SiLU                               stride 2
    stages_0  inverted residual                                           stride 2
    stages_1  3 inverted residuals (first stride 2)                       stride 4
    stages_2  inverted residual (stride 2) + MobileViT block (2 layers)   stride 8
    stages_3  inverted residual (stride 2) + MobileViT block (4 layers)   stride 16
    stages_4  inverted residual (stride 2) + MobileViT block (3 layers)   stride 32
    final_conv 1x1 conv + BN + SiLU, head: global average pool + `fc`

Layer names are timm's module paths (`stem/conv`, `stages_2_1/transformer_0/attn/qkv`,
`final_conv/bn`, `head/fc`), so a timm state_dict loads through the generic map.
"""

import functools
import re

import keras
import numpy as np

from keras_vit.layers import ImageNormalization
from keras_vit.layers._validation import non_negative_int, pair, positive_int, rate
from keras_vit.layers.mobilevit_blocks import (
    ClassifierHead,
    ConvNormAct,
    InvertedResidual,
    MobileViTBlock,
)
from keras_vit.models.base import KerasViTModel, Views
from keras_vit.registry import register_variants

# The cvnets checkpoints take RGB in [0, 1]: no mean/std normalisation.
MOBILEVIT_MEAN = (0.0, 0.0, 0.0)
MOBILEVIT_STD = (1.0, 1.0, 1.0)


def _int_tuple(name, values, length=None):
    values = tuple(values)
    for v in values:
        positive_int(f"{name} entries", v)
    if length is not None and len(values) != length:
        raise ValueError(f"`{name}` needs {length} entries (one per stage), got {values}.")
    return values


class MobileViTBase(KerasViTModel):
    """What MobileViT v1 and v2 share beyond their blocks: timm's `ByobNet` stage layout,
    its `features_only` maps and checkpoint keys. Subclasses set `strides`, `features_only`
    and `_views` (with `features`), and list their constructor arguments in `CONFIG_KEYS`."""

    CONFIG_KEYS = ()  # the constructor arguments in `get_config` order (less name, dtype)

    # float32 on a CPU: TF's graph (oneDNN), where BatchNorm folds into fused conv + bias +
    # SiLU, the depthwise convs are one grouped oneDNN call and LayerNorm (v2: GroupNorm) is
    # oneDNN's kernel. In-process A/B against XLA, AMD EPYC Zen 4, 2 threads, batch 8, img/s:
    # v1 S 55.0 vs 48.9, XS 88.7 vs 78.1, XXS 170.5 vs 161.9, fit (XXS at 256) 26.1 vs 23.3;
    # v2 0.5 164.0 vs 160.1, 1.0 71.3 vs 63.5, fit 15.9 vs 7.9 and 6.2 vs 3.7 (XLA's
    # backward of the shifted multiply-adds of v2's depthwise convs is slow).
    float32_cpu_graph = ("predict", "fit")

    def _keep_config(self, args):
        """Keep the constructor arguments named in `CONFIG_KEYS`, taken from the constructor's
        `locals()` after their checks, as attributes (what `constructor_config` returns)."""
        for key in self.CONFIG_KEYS:
            setattr(self, key, tuple(args[key]) if key in ("mean", "std") else args[key])

    def constructor_config(self):
        config = {key: getattr(self, key) for key in self.CONFIG_KEYS}
        return {**config, "name": self.name, "dtype": self.dtype_policy.name}

    @property
    def feature_strides(self):
        """Output stride of each feature map of `feature_model()`: (2, 4, 8, 16, 32)."""
        strides = np.cumprod((2,) + self.strides).tolist()  # stem, then each stage
        return tuple(strides[1:-1] + strides[-1:])

    @property
    def head_keys(self):
        """Checkpoint keys of the classifier, which a new `num_classes` starts afresh."""
        return ("head.fc.weight", "head.fc.bias")

    def feature_model(self):
        """A `keras.Model` over the same layers returning the five feature maps
        `(B, H/s, W/s, C)` at strides 2, 4, 8, 16, 32 (timm's `features_only=True`)."""
        return keras.Model(self.inputs, self._views.features, name=f"{self.name}_features")

    def adapt_checkpoint(self, state_dict):
        """Keys of timm's `features_only` model (`stages_2.1.` for `stages.2.1.`) are renamed;
        a backbone built with `features_only` has no head, so classifier tensors are dropped."""
        state_dict = {
            re.sub(r"^stages_(\d+)\.", r"stages.\1.", k): v for k, v in state_dict.items()
        }
        if self.features_only:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
        return state_dict

    # --- training contract (see KerasViTModel) ---
    def _block_order(self):
        """{'stages_s_j': ordinal} over the stage blocks in (s, j) order: timm's fine
        `group_matcher`, one group per `stages.s.j`."""
        names = [n.name for n in self.layers if re.fullmatch(r"stages_\d+_\d+", n.name)]
        names.sort(key=lambda n: tuple(int(i) for i in n.split("_")[1:]))
        return {name: k for k, name in enumerate(names)}

    def _block_id_of_layer(self, top_layer_name):
        """As timm's `group_matcher` is numbered: the stem 0, each stage block 1..n in order,
        `final_conv` with the last block (n), the head n + 1."""
        order = self._block_order()
        if top_layer_name in order:
            return order[top_layer_name] + 1
        if top_layer_name == "final_conv":
            return len(order)
        if top_layer_name == "head":
            return len(order) + 1
        return 0

    def _num_blocks(self):
        return len(self._block_order())

    def _heads_tensors(self):
        if self.features_only:
            raise ValueError(f"{self.name!r} is a features_only backbone: it has no classifier.")
        return super()._heads_tensors()


def check_stage_args(channels, depths, strides, transformer_dims, transformer_depths):
    """Per-stage tuples, checked: one entry of `depths`/`strides` per stage, one transformer
    depth per transformer stage, at most as many transformer stages as stages."""
    channels = _int_tuple("channels", channels)
    n = len(channels)
    depths = _int_tuple("depths", depths, n)  # n: the stages, one per entry of `channels`
    strides = _int_tuple("strides", strides, n)
    transformer_dims = _int_tuple("transformer_dims", transformer_dims)
    transformer_depths = _int_tuple("transformer_depths", transformer_depths, len(transformer_dims))
    if len(transformer_dims) > n:
        raise ValueError(
            f"{len(transformer_dims)} transformer stages but only {n} stages ({channels})."
        )
    return channels, depths, strides, transformer_dims, transformer_depths


def mobilevit_stem(image_size, in_channels, include_preprocessing, mean, std, stem_channels, dtype):
    """The input and stem of v1 and v2: (images `(B, H, W, in)`, `(B, H/2, W/2, stem)`)."""
    images = keras.Input((image_size[0], image_size[1], in_channels), name="images")
    x = images
    if include_preprocessing:
        x = ImageNormalization(mean, std, name="preprocessing", dtype=dtype)(x)
    return images, ConvNormAct(stem_channels, 3, 2, name="stem", dtype=dtype)(x)


def mobilevit_outputs(x, features, features_only, num_classes, drop_rate, dtype):
    """The model's outputs: the feature maps with `features_only`, else the classifier head
    on the last map (logits `(B, num_classes)`, pooled features with `num_classes=0`)."""
    if features_only:
        return features
    return ClassifierHead(num_classes, drop_rate, name="head", dtype=dtype)(x)


def check_head_args(global_pool, num_classes, drop_rate, attn_drop_rate, drop_path_rate):
    if global_pool != "avg":
        raise ValueError(f"`global_pool` must be 'avg' for MobileViT, got {global_pool!r}.")
    non_negative_int("num_classes", num_classes)
    for arg, value in dict(
        drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate
    ).items():
        rate(arg, value)


def mobilevit_stages(
    x, channels, depths, strides, expansion, se_ratio, drop_path_rate, global_blocks, dtype
):
    """The stages of timm's MobileViT `ByobNet` on the stem's output `x`: stage s is
    `depths[s]` inverted residuals `stages_{s}_{j}` (the first with `strides[s]`), and each of
    the last `len(global_blocks)` stages ends with one more block, `global_blocks[t](filters=,
    drop_path=, name=, dtype=)` (a MobileViT v1 or v2 block). Returns `(x, stage_outputs)`."""
    n = len(channels)
    first_global_stage = n - len(global_blocks)
    # stochastic depth linear over all blocks, one rate per block (timm's `dpr`)
    num_blocks = sum(depths) + len(global_blocks)
    drop_paths = iter(np.linspace(0.0, drop_path_rate, num_blocks).tolist())
    stage_outputs = []
    for s in range(n):
        for j in range(depths[s]):
            x = InvertedResidual(
                channels[s],
                strides=strides[s] if j == 0 else 1,
                expansion=expansion,
                se_ratio=se_ratio,
                drop_path=next(drop_paths),
                name=f"stages_{s}_{j}",
                dtype=dtype,
            )(x)
        if s >= first_global_stage:
            x = global_blocks[s - first_global_stage](
                filters=channels[s],
                drop_path=next(drop_paths),
                name=f"stages_{s}_{depths[s]}",
                dtype=dtype,
            )(x)
        stage_outputs.append(x)
    return x, stage_outputs


@keras.saving.register_keras_serializable(package="keras_vit")
class MobileViT(MobileViTBase):
    """MobileViT classifier or backbone, NHWC input.

    Fully convolutional apart from the transformers on unfolded patches, so any `image_size`
    works; where a stage's map is not a multiple of the patch, the MobileViT block resizes it
    as timm does (see `MobileViTBlock`). Output: logits `(B, num_classes)`; pooled features
    `(B, num_features)` with `num_classes=0`; with `features_only=True` the list of five
    feature maps at strides 2, 4, 8, 16, 32 (timm's `features_only=True`: the outputs of
    `stages_0` .. `stages_3` and of `final_conv`), also available from any model through
    `feature_model()`.

    Args:
        channels: output channels of the five stages.
        depths: inverted residuals per stage.
        strides: stride of each stage's first block.
        transformer_dims, transformer_depths: width and depth of the MobileViT block that ends
            each of the last `len(transformer_dims)` stages.
        expansion: inverted-residual expansion ratio.
        num_features: width of `final_conv` (0: none).
        se_ratio: Squeeze-and-Excitation in every inverted residual (None: off, as MobileViT).
    """

    # Float32 inference on TF's graph runs the stride-16 MobileViT block on as one XLA
    # program (`xla_tail_from`, models/base.py): there the maps are small (16x16, 8x8) and
    # the graph's time goes to its many small ops, which XLA fuses, while the stride-8 block
    # (256-token attention, head by head on the graph) and the convolutions before it run
    # faster on oneDNN's graph. In-process A/B, AMD EPYC (avx512_bf16, no AMX, 2 cores),
    # batch 8, float32, halves, img/s, graph vs this tail (vs a tail from `stages_3_0`):
    # XXS 108.1 vs 117.6 (117.8), S 32.0 vs 33.8 (33.2); logits within 3e-7.
    xla_tail_from = "stages_3_1"

    CONFIG_KEYS = (
        "image_size", "stem_channels", "channels", "depths", "strides", "transformer_dims",
        "transformer_depths", "expansion", "num_features", "patch_size", "num_heads",
        "mlp_ratio", "se_ratio", "num_classes", "global_pool", "features_only", "drop_rate",
        "attn_drop_rate", "drop_path_rate", "include_preprocessing", "mean", "std", "in_channels",
    )  # fmt: skip

    def __init__(
        self,
        image_size=256,
        stem_channels=16,
        channels=(16, 24, 48, 64, 80),
        depths=(1, 3, 1, 1, 1),
        strides=(1, 2, 2, 2, 2),
        transformer_dims=(64, 80, 96),
        transformer_depths=(2, 4, 3),
        expansion=2.0,
        num_features=320,
        patch_size=2,
        num_heads=4,
        mlp_ratio=2.0,
        se_ratio=None,
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
        non_negative_int("num_features", num_features)

        # === graph ===
        images, x = mobilevit_stem(
            image_size, in_channels, include_preprocessing, mean, std, stem_channels, dtype
        )  # x: (B, H/2, W/2, 16)
        mobilevit_blocks = [
            functools.partial(
                MobileViTBlock,
                dim,
                depth,
                patch_size=patch_size,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                attn_drop=attn_drop_rate,
            )
            for dim, depth in zip(transformer_dims, transformer_depths)
        ]
        x, stage_outputs = mobilevit_stages(
            x,
            channels,
            depths,
            strides,
            expansion,
            se_ratio,
            drop_path_rate,
            mobilevit_blocks,
            dtype,
        )
        if num_features:
            x = ConvNormAct(num_features, 1, name="final_conv", dtype=dtype)(x)
        # timm's feature_info: every stage output before a stride, then final_conv
        features = stage_outputs[:-1] + [x]
        outputs = mobilevit_outputs(x, features, features_only, num_classes, drop_rate, dtype)
        super().__init__(inputs=images, outputs=outputs, name=name, dtype=dtype, **kwargs)
        self._keep_config(locals())
        self._views = Views(features=features)


# The paper's Table 4 / timm's `model_cfgs`: stage channels, transformer widths
# (depths 2 / 4 / 3, 2x2 patches), MobileNetV2 expansion and final_conv width.
_VARIANTS = {
    "mobilevit_xxs": dict(
        channels=(16, 24, 48, 64, 80), transformer_dims=(64, 80, 96), expansion=2.0,
        num_features=320,
    ),
    "mobilevit_xs": dict(
        channels=(32, 48, 64, 80, 96), transformer_dims=(96, 120, 144), expansion=4.0,
        num_features=384,
    ),
    "mobilevit_s": dict(
        channels=(32, 64, 96, 128, 160), transformer_dims=(144, 192, 240), expansion=4.0,
        num_features=640,
    ),
}  # fmt: skip
register_variants(
    "mobilevit",
    MobileViT,
    [
        (name, dict(arch, image_size=256, stem_channels=16, depths=(1, 3, 1, 1, 1)))
        for name, arch in _VARIANTS.items()
    ],
    num_classes=1000,
    mean=MOBILEVIT_MEAN,
    std=MOBILEVIT_STD,
)
