"""DeiT (Touvron et al., "Training data-efficient image transformers & distillation through
attention", ICML 2021).

Plain DeiT is a ViT with DeiT's weights config (ImageNet mean/std). Distilled DeiT adds a
second learned token, the distillation token, which travels through the encoder beside the
class token (`[cls, dist, patches]`), and a second classifier `head_dist` on it. At inference
the two heads are averaged, exactly as timm's `VisionTransformerDistilled` in eval mode; for
training, `heads_model` gives both logits separately (see `keras_vit.DeiTDistiller`).
"""

import keras

from keras_vit.layers import PrependToken
from keras_vit.models.vit import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, VisionTransformer
from keras_vit.registry import register_model


@keras.saving.register_keras_serializable(package="keras_vit")
class DistilledVisionTransformer(VisionTransformer):
    """DeiT with the distillation token, NHWC input.

    Output: `(head(cls) + head_dist(dist)) / 2` logits `(B, num_classes)`; with
    `num_classes=0`, the averaged pre-logits `(cls + dist) / 2` of shape `(B, embed_dim)`
    (timm's `forward_head(pre_logits=True)`). `heads_model` returns `(cls_logits, dist_logits)`.
    Takes every `VisionTransformer` argument; pooling is always the two tokens.
    """

    num_prefix_tokens = 2  # class and distillation tokens

    def __init__(
        self,
        *args,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        global_pool="token",
        fc_norm=None,
        **kwargs,
    ):
        # timm asserts the same: the distilled head reads the two tokens, after `norm`.
        if global_pool != "token":
            raise ValueError(
                f"Distilled DeiT pools the class and distillation tokens; `global_pool` must "
                f"be 'token', got {global_pool!r}."
            )
        if fc_norm:
            raise ValueError(f"Distilled DeiT has no `fc_norm`; got fc_norm={fc_norm!r}.")
        super().__init__(
            *args, mean=mean, std=std, global_pool=global_pool, fc_norm=fc_norm, **kwargs
        )

    def _add_prefix_tokens(self, x, dtype):
        # cls(dist(x)) -> [cls, dist, patches], timm's order; dist_token init std 0.02 as timm.
        x = PrependToken(initializer_stddev=0.02, name="dist_token", dtype=dtype)(x)
        return PrependToken(initializer_stddev=1e-6, name="cls_token", dtype=dtype)(x)

    def _build_head(self, tokens, num_classes, global_pool, use_fc_norm, drop_rate, dtype):
        """tokens `(B, 2 + N, D)` -> averaged output, plus both heads' tensors for the views."""
        drop = keras.layers.Dropout(drop_rate, name="head_drop", dtype=dtype)
        x_cls = drop(tokens[:, 0])  # (B, D)
        x_dist = drop(tokens[:, 1])  # (B, D)
        if num_classes:
            x_cls = keras.layers.Dense(num_classes, name="head", dtype=dtype)(x_cls)
            x_dist = keras.layers.Dense(num_classes, name="head_dist", dtype=dtype)(x_dist)
        # (a + b) / 2 in that order, as timm (Average sums then divides by the count)
        outputs = keras.layers.Average(name="head_average", dtype=dtype)([x_cls, x_dist])
        return outputs, {"cls_logits": x_cls, "dist_logits": x_dist}

    @property
    def head_keys(self):
        return ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")

    @property
    def heads_model(self):
        """A `keras.Model` over the same layers (shared weights) returning
        `(cls_logits, dist_logits)`, each `(B, num_classes)` (pre-logits if `num_classes=0`).

        Built once and kept in the untracked `_views` holder, so it adds nothing to this
        model's variables or its `.keras` file.
        """
        cached = getattr(self._views, "heads_model", None)
        if cached is None:
            cached = keras.Model(
                self.input,  # the one image tensor, so calls take a tensor, not a list
                [self._views.cls_logits, self._views.dist_logits],
                name=f"{self.name}_heads",
            )
            self._views.heads_model = cached
        return cached


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
            num_classes=1000,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
        )
