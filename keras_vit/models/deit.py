"""DeiT (Touvron et al., "Training data-efficient image transformers & distillation through
attention", ICML 2021).

Plain DeiT is a ViT with DeiT's weights config (ImageNet mean/std). Distilled DeiT adds a
second learned token, the distillation token, which travels through the encoder beside the
class token (`[cls, dist, patches]`), and a second classifier `head_dist` on it. At inference
the two heads are averaged, exactly as timm's `VisionTransformerDistilled` in eval mode; for
training, `heads_model` gives both logits separately (see `keras_vit.DeiTDistiller`).
"""

import keras

from keras_vit.models.vit import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, VisionTransformer
from keras_vit.registry import register_model


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


_SIZES = {  # DeiT paper, Table 1 (Ti / S / B)
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
_VARIANTS = [("tiny", 224), ("small", 224), ("base", 224), ("base", 384)]
for _distilled, _cls in ((False, VisionTransformer), (True, DistilledVisionTransformer)):
    for _size, _res in _VARIANTS:
        register_model(
            f"deit_{_size}{'_distilled' if _distilled else ''}_patch16_{_res}",
            _cls,
            family="deit",
            arch=dict(_SIZES[_size], patch_size=16, image_size=_res),
            size=_size,
            num_classes=1000,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
        )
