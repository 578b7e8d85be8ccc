"""DeiT (Touvron et al., "Training data-efficient image transformers & distillation through
attention", ICML 2021).

Plain DeiT is a ViT with DeiT's weights config (ImageNet mean/std). Distilled DeiT adds a
second learned token, the distillation token, which travels through the encoder beside the
class token (`[cls, dist, patches]`), and a second classifier `head_dist` on it. At inference
the two heads are averaged, exactly as timm's `VisionTransformerDistilled` in eval mode; for
training, `heads_model` gives both logits separately (see `keras_vit.DeiTDistiller`).

DeiT III (Touvron et al., "DeiT III: Revenge of the ViT", ECCV 2022) is a configuration of
the same `VisionTransformer`: layer scale (`init_values=1e-6`) and a position embedding over
the patch grid only (`no_embed_class=True`), added before the class token is put in front.
"""

import keras

from keras_vit.models.vit import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    VIT_SIZES,
    VisionTransformer,
)
from keras_vit.registry import register_variants


@keras.saving.register_keras_serializable(package="keras_vit")
class DistilledVisionTransformer(VisionTransformer):
    """DeiT with the distillation token, NHWC input: `VisionTransformer(distilled=True)` with
    DeiT's ImageNet mean/std. Only defaults differ; the class keeps its name so that `.keras`
    files saved with it load.

    Output: `(head(cls) + head_dist(dist)) / 2` logits `(B, num_classes)`; with
    `num_classes=0`, the averaged pre-logits `(cls + dist) / 2` of shape `(B, embed_dim)`
    (timm's `forward_head(pre_logits=True)`). `heads_model` returns `(cls_logits, dist_logits)`.
    Takes every `VisionTransformer` argument; pooling is always the two tokens.
    """

    def __init__(
        self, *args, distilled=True, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, **kwargs
    ):
        super().__init__(*args, distilled=distilled, mean=mean, std=std, **kwargs)


# DeiT paper, Table 1 (Ti / S / B): `VIT_SIZES`
_VARIANTS = [("tiny", 224), ("small", 224), ("base", 224), ("base", 384)]
for _infix, _cls in (("", VisionTransformer), ("_distilled", DistilledVisionTransformer)):
    register_variants(
        "deit",
        _cls,
        [
            (f"deit_{s}{_infix}_patch16_{r}", dict(VIT_SIZES[s], patch_size=16, image_size=r), s)
            for s, r in _VARIANTS
        ],
        num_classes=1000,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )


# DeiT III, Table 1 of the paper (S / M / B / L / H: `VIT_SIZES`); timm's `deit3_*` entry
# points.
_DEIT3_VARIANTS = [
    ("small", 16, 224),
    ("small", 16, 384),
    ("medium", 16, 224),
    ("base", 16, 224),
    ("base", 16, 384),
    ("large", 16, 224),
    ("large", 16, 384),
    ("huge", 14, 224),
]
register_variants(
    "deit3",
    VisionTransformer,
    [
        (
            f"deit3_{s}_patch{p}_{r}",
            dict(VIT_SIZES[s], patch_size=p, image_size=r, no_embed_class=True, init_values=1e-6),
        )
        for s, p, r in _DEIT3_VARIANTS
    ],
    num_classes=1000,
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
)
