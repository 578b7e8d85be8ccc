"""The DeiT training recipe (Touvron et al. 2021, Table 9) from Keras core layers.

Augmentation (RandAugment, random erasing, MixUp or CutMix per batch, horizontal flip) runs in
the tf.data pipeline on the host: Keras's RandAugment needs `ImageProjectiveTransformV3` and
MixUp/CutMix a Gamma sampler, which XLA cannot compile, and on a TPU the input pipeline runs on
the host anyway. The train step (student, teacher, distiller loss, AdamW update) is what
compiles with `jit_compile=True`.

Every batch draws its randomness from a stateless `(2,)` seed (`augment(images, labels,
seed)`), so augmentation is reproducible under parallel `map` and after a resume.
"""

import dataclasses
from dataclasses import dataclass

import keras

from keras_vit._keras_compat import random_seed_dtype
from keras_vit.models.base import KerasViTModel
from keras_vit.registry import find_spec

# DeiT: lr = 5e-4 * global_batch / 512
REFERENCE_BATCH = 512


@dataclass(frozen=True)
class Recipe:
    """Every knob of a training run; `recipe_for` fills per-size defaults, `replace` overrides.

    Fields mirror DeiT's `main.py` flags: `rand_augment_ops`/`rand_augment_magnitude`
    (`rand-m9-mstd0.5`: 2 ops, magnitude 9/10), `erasing_prob` (`--reprob`), `mixup_alpha`,
    `cutmix_alpha`, `mix_prob`, `switch_prob`, `label_smoothing` (`--smoothing`), `lr` (per
    512 images), `min_lr`, `warmup_lr`, `weight_decay`, `warmup_epochs`, `drop_path_rate`,
    `ema`/`ema_momentum` (`--model-ema`), `clip_norm`, the distillation weights, and
    `layer_decay` (timm's and BEiT's `--layer-decay`: block i of n learns at
    `lr * layer_decay ** (n - i)`, the head at `lr`, the stem at `lr * layer_decay ** (n + 1)`;
    None: off).
    """

    rand_augment_ops: int = 2  # 0 turns RandAugment off
    rand_augment_magnitude: float = 0.9
    hflip: bool = True
    erasing_prob: float = 0.25
    mixup_alpha: float = 0.8  # 0 turns MixUp off
    cutmix_alpha: float = 1.0  # 0 turns CutMix off
    mix_prob: float = 1.0  # probability a batch is mixed at all
    switch_prob: float = 0.5  # probability a mixed batch uses CutMix rather than MixUp
    label_smoothing: float = 0.1
    lr: float = 5e-4
    scale_lr_with_batch: bool = True  # lr * global_batch / 512
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    drop_path_rate: float = 0.1
    ema: bool = False
    ema_momentum: float = 0.99996
    clip_norm: float = None
    distillation_alpha: float = 0.5
    distillation_temperature: float = 1.0
    layer_decay: float = None

    def replace(self, **overrides):
        """A copy with `overrides`; an unknown knob is a ValueError naming it."""
        known = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"Unknown recipe knob(s) {bad}; known: {sorted(known)}.")
        return dataclasses.replace(self, **overrides)

    def __post_init__(self):
        for name in ("erasing_prob", "mix_prob", "switch_prob", "distillation_alpha"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Recipe `{name}` must be in [0, 1], got {value!r}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"Recipe `label_smoothing` must be in [0, 1), got {self.label_smoothing!r}."
            )
        for name in ("lr", "weight_decay", "warmup_epochs", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"Recipe `{name}` must be >= 0, got {getattr(self, name)!r}.")
        if self.rand_augment_ops < 0 or not 0 <= self.rand_augment_magnitude <= 1:
            raise ValueError(
                f"RandAugment needs ops >= 0 and magnitude in [0, 1], got "
                f"{self.rand_augment_ops!r}, {self.rand_augment_magnitude!r}."
            )
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"Recipe `layer_decay` must be in (0, 1], got {self.layer_decay!r}.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(
                f"Recipe `drop_path_rate` must be in [0, 1), got {self.drop_path_rate!r}."
            )

    @property
    def mixes(self):
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def learning_rate(self, global_batch):
        return self.lr * global_batch / REFERENCE_BATCH if self.scale_lr_with_batch else self.lr


# Stochastic depth grows with capacity (DeiT: 0.1 for Ti/S/B; DeiT III: 0.2-0.5 for L/H);
# the tiny model underfits ImageNet, so it trains with less regularisation.
_SIZE_OVERRIDES = {
    "tiny": dict(drop_path_rate=0.0),
    "small": dict(drop_path_rate=0.1),
    "base": dict(drop_path_rate=0.1),
    "large": dict(drop_path_rate=0.3),
    "huge": dict(drop_path_rate=0.5),
}
# What the three light presets below share: no random erasing, no MixUp/CutMix, one warmup
# epoch; each then sets its own lr, weight decay and image-level augmentation.
_LIGHT = dict(erasing_prob=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=0.0, warmup_epochs=1.0)
# Small data, small models, few epochs (the offline `digits` demo): no image-level
# augmentation (digits are not flip-invariant, 8x8 sources leave little to RandAugment), a
# fixed lr.
SMALL_DATA = dict(
    _LIGHT,
    rand_augment_ops=0,
    hflip=False,
    lr=1e-3,
    scale_lr_with_batch=False,
    min_lr=1e-5,
    weight_decay=0.05,
    drop_path_rate=0.0,
)
# Fine-tuning a published checkpoint (DeiT's fine-tuning runs: a lower learning rate scaled by
# the batch, a short warmup, lighter augmentation, no MixUp/CutMix). DeiT fine-tunes at 384 on
# ImageNet with `--lr 5e-6 --weight-decay 1e-8 --epochs 30 --min-lr 5e-6` (the same label set,
# the head kept); a new data set starts a fresh head, which needs more than that, so the peak
# here is 1e-4 per 512 images, 5x below DeiT's from-scratch 5e-4 (the range of timm's and
# BEiT's transfer runs). Drop path stays at the size's default.
FINETUNE = dict(
    _LIGHT,
    rand_augment_ops=2,
    rand_augment_magnitude=0.5,  # rand-m5 instead of m9
    lr=1e-4,
    scale_lr_with_batch=True,
    min_lr=1e-6,
    warmup_lr=1e-6,
    weight_decay=0.05,
)
# A linear probe (`freeze_backbone`): only the classifier learns, on the frozen features, so no
# stochastic depth or image-level augmentation (they would only perturb the fixed features),
# and a larger learning rate without weight decay. Applied on top of FINETUNE.
LINEAR_PROBE = dict(_LIGHT, rand_augment_ops=0, drop_path_rate=0.0, lr=1e-3, weight_decay=0.0)
# preset -> the override blocks it applies, in order, after the size / data set defaults
_PRESET_BLOCKS = {
    "scratch": (),
    "finetune": (FINETUNE,),
    "linear_probe": (FINETUNE, LINEAR_PROBE),
}
PRESETS = tuple(_PRESET_BLOCKS)


def recipe_for(model_name=None, dataset=None, preset="scratch", **overrides):
    """DeiT's recipe with the defaults for `model_name`'s size (the registry's `size` of the
    variant: `tiny`/`small`/`base`/...), the small-data preset for `dataset="digits"`, then the
    `preset` (`"scratch"`: nothing more; `"finetune"`: `FINETUNE`, a published checkpoint's
    fine-tuning; `"linear_probe"`: `FINETUNE` then `LINEAR_PROBE`), then `overrides`."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown recipe preset {preset!r}; known: {list(PRESETS)}.")
    recipe = Recipe()
    spec = find_spec(model_name)
    if dataset == "digits":
        recipe = recipe.replace(**SMALL_DATA)
    elif spec is not None and spec.size in _SIZE_OVERRIDES:
        recipe = recipe.replace(**_SIZE_OVERRIDES[spec.size])
    for block in _PRESET_BLOCKS[preset]:
        recipe = recipe.replace(**block)
    return recipe.replace(**overrides)


def no_weight_decay_variables(model):
    """What the model says to leave undecayed (`no_weight_decay()`); for a model that is not
    a keras_vit family (a user's convnet), its 1-D parameters (biases, norms)."""
    if isinstance(model, KerasViTModel):
        return model.no_weight_decay()
    return [v for v in model.trainable_variables if len(v.shape) <= 1]


def make_schedule(recipe, global_batch, steps_per_epoch, epochs):
    """Per-step lr: linear warmup from `warmup_lr` to the peak (`lr`, scaled by the global
    batch / 512 as DeiT), then cosine decay to `min_lr` at the last step."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(round(recipe.warmup_epochs * steps_per_epoch)), total - 1)
    peak = recipe.learning_rate(global_batch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=min(recipe.warmup_lr, peak) if warmup else peak,
        decay_steps=total - warmup,
        alpha=min(recipe.min_lr / peak, 1.0) if peak else 0.0,
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(recipe, global_batch, steps_per_epoch, epochs, model=None):
    """AdamW on `make_schedule`, optional EMA of the weights, optional global-norm clipping,
    optional layer-wise lr decay (`recipe.layer_decay`, needs `model`).

    When `model` is given, the variables it names in `no_weight_decay()` (biases, norms,
    position embeddings, class/distillation/register tokens) get no weight decay.
    """
    schedule = make_schedule(recipe, global_batch, steps_per_epoch, epochs)
    adamw, extra = keras.optimizers.AdamW, {}
    if recipe.layer_decay is not None and recipe.layer_decay != 1.0:
        from keras_vit.training.layer_decay import LayerDecayAdamW, layer_lr_scales

        if not isinstance(model, KerasViTModel):
            raise ValueError(
                f"Layer-wise lr decay needs a keras_vit model (its block_ids()), got "
                f"{type(model).__name__} {getattr(model, 'name', model)!r}."
            )
        adamw, extra = LayerDecayAdamW, {"lr_scales": layer_lr_scales(model, recipe.layer_decay)}
    optimizer = adamw(
        **extra,
        learning_rate=schedule,
        weight_decay=recipe.weight_decay,
        use_ema=recipe.ema,
        ema_momentum=recipe.ema_momentum,
        global_clipnorm=recipe.clip_norm,
    )
    if model is not None:
        optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return optimizer


class _StatelessSeed(keras.random.SeedGenerator):
    """Stands in for a layer's `SeedGenerator` while it is traced into a tf.data function:
    each draw gets `fold_in(seed, k)` for the k-th draw of the trace, with `seed` a tensor that
    differs per batch, instead of incrementing a shared variable (racy under parallel map,
    and reset by a restart)."""

    def __init__(self, seed):  # no super().__init__: no state variable to create
        self._seed = seed
        self._draws = 0

    def next(self, ordered=True):
        import tensorflow as tf

        self._draws += 1
        return tf.cast(
            tf.random.experimental.stateless_fold_in(self._seed, self._draws),
            random_seed_dtype(),
        )


def _stateless(layer, seed):
    """Point `layer`'s generator (and so its draws) at `seed` for the trace being built."""
    # (a SeedGenerator subclass because keras.random's draw_seed accepts only those)
    object.__setattr__(layer, "generator", _StatelessSeed(seed))  # bypass Keras's tracking


def make_augmentation(recipe, num_classes):
    """`fn(images, labels, seed) -> (images, labels)` on a batch of 0..255 NHWC images and
    one-hot labels, or None when the recipe augments nothing. `seed`: `(2,)` int64."""
    import tensorflow as tf

    stages = []  # image layers, applied in order
    if recipe.hflip:
        stages.append(keras.layers.RandomFlip("horizontal"))
    if recipe.rand_augment_ops:
        stages.append(
            keras.layers.RandAugment(
                value_range=(0, 255),
                num_ops=recipe.rand_augment_ops,
                factor=recipe.rand_augment_magnitude,
            )
        )
    if recipe.erasing_prob:
        stages.append(keras.layers.RandomErasing(factor=recipe.erasing_prob, value_range=(0, 255)))
    mixup = keras.layers.MixUp(alpha=recipe.mixup_alpha) if recipe.mixup_alpha else None
    cutmix = keras.layers.CutMix(factor=recipe.cutmix_alpha) if recipe.cutmix_alpha else None
    if not stages and not recipe.mixes:
        return None

    def augment(images, labels, seed):
        seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(len(stages) + 3)]
        for layer, s in zip(stages, seeds):
            _stateless(layer, s)
            images = layer(images, training=True)
        if not recipe.mixes:
            return images, labels
        batch = {"images": images, "labels": labels}

        def apply(layer, s):
            _stateless(layer, s)
            out = layer(batch, training=True)
            return out["images"], tf.cast(out["labels"], labels.dtype)

        u = tf.random.stateless_uniform((2,), seeds[-3])  # [mix at all?, cutmix or mixup?]
        mixed = (
            (lambda: apply(cutmix, seeds[-2]))
            if mixup is None
            else (lambda: apply(mixup, seeds[-1]))
            if cutmix is None
            else lambda: tf.cond(
                u[1] < recipe.switch_prob,
                lambda: apply(cutmix, seeds[-2]),
                lambda: apply(mixup, seeds[-1]),
            )
        )
        return tf.cond(u[0] < recipe.mix_prob, mixed, lambda: (images, labels))

    return augment
