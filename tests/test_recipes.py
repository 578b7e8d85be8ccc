"""The DeiT recipe: knobs, per-size defaults, the lr schedule, weight-decay exclusions,
augmentation outputs, and the train step (student + teacher + DeiT loss + AdamW) under XLA."""

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras_vit  # noqa: E402
from keras_vit.training.recipes import (  # noqa: E402
    Recipe,
    make_augmentation,
    make_optimizer,
    make_schedule,
    recipe_for,
)

TINY = dict(image_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10)


def test_knobs_are_validated_and_overridable():
    r = recipe_for("deit_small_patch16_224", mixup_alpha=0.0, lr=1e-3)
    assert (r.mixup_alpha, r.lr, r.cutmix_alpha, r.label_smoothing) == (0.0, 1e-3, 1.0, 0.1)
    with pytest.raises(ValueError, match="mixup_alfa"):
        recipe_for("deit_small_patch16_224", mixup_alfa=0.2)
    with pytest.raises(ValueError, match="erasing_prob"):
        Recipe(erasing_prob=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        Recipe(label_smoothing=1.0)


def test_defaults_per_model_size_and_for_digits():
    assert recipe_for("deit_tiny_patch16_224").drop_path_rate == 0.0
    assert recipe_for("deit_base_distilled_patch16_384.fb_in1k").drop_path_rate == 0.1
    assert recipe_for("vit_large_patch16_224").drop_path_rate == 0.3
    digits = recipe_for(None, "digits")
    assert not digits.mixes and digits.rand_augment_ops == 0 and not digits.hflip
    assert make_augmentation(digits, 10) is None


def test_warmup_then_cosine_to_min_lr():
    r = Recipe(lr=5e-4, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5)
    lr = make_schedule(r, global_batch=1024, steps_per_epoch=10, epochs=12)
    opt = make_optimizer(r, global_batch=1024, steps_per_epoch=10, epochs=12)
    peak = 5e-4 * 1024 / 512  # DeiT's linear scaling
    assert float(lr(0)) == pytest.approx(1e-6)
    assert float(lr(10)) == pytest.approx((1e-6 + peak) / 2, rel=1e-5)  # linear warmup
    assert float(lr(20)) == pytest.approx(peak, rel=1e-6)
    # cosine from the peak to min_lr over the remaining 100 steps
    for step in (45, 70, 120):
        t = (step - 20) / 100
        alpha = 1e-5 / peak
        expected = peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha)
        assert float(lr(step)) == pytest.approx(expected, rel=1e-5)
    assert (opt.weight_decay, opt.use_ema) == (0.05, False)
    assert make_optimizer(r.replace(ema=True), 64, 10, 12).use_ema


def test_no_weight_decay_on_tokens_positions_biases_and_norms():
    model = keras_vit.create_model("deit_tiny_distilled_patch16_224", **TINY)
    opt = make_optimizer(Recipe(), 64, 10, 5, model=model)
    decayed = {v.path for v in model.trainable_variables if opt._use_weight_decay(v)}
    assert decayed, "some weights must decay"
    assert all(v.endswith("kernel") for v in decayed)
    skipped = {v.path for v in model.trainable_variables} - decayed
    for name in ("cls_token", "dist_token", "pos_embed", "norm/gamma", "head/bias"):
        assert any(name in p for p in skipped), name


def test_mixup_cutmix_labels_and_image_range():
    r = Recipe(rand_augment_ops=2, erasing_prob=0.5, switch_prob=0.5)
    aug = make_augmentation(r, 10)
    rng = np.random.RandomState(0)
    images = tf.constant(rng.uniform(0, 255, (16, 16, 16, 3)), tf.float32)
    labels = tf.one_hot(np.arange(16) % 10, 10)
    x1, y1 = aug(images, labels, tf.constant([5, 1], tf.int64))
    x2, y2 = aug(images, labels, tf.constant([5, 1], tf.int64))
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())  # a seed fixes the batch
    x3, _ = aug(images, labels, tf.constant([5, 2], tf.int64))
    assert not np.array_equal(x1.numpy(), x3.numpy())
    assert x1.shape == images.shape and 0 <= float(tf.reduce_min(x1))
    assert float(tf.reduce_max(x1)) <= 255.0 + 1e-3
    np.testing.assert_allclose(y1.numpy().sum(-1), 1.0, atol=1e-5)
    assert (y1.numpy().max(-1) < 0.999).any()  # two classes mixed
    # every mixed label is a convex combination of the original label and one other one
    assert ((y1.numpy() > 1e-6).sum(-1) <= 2).all()


def test_distillation_train_step_compiles_with_xla():
    """The whole train step (student heads, frozen convnet teacher, hard DeiT loss on MixUp
    labels, AdamW with the recipe's schedule) as one XLA program: its HLO is produced, and
    `fit(jit_compile=True)` keeps XLA on (Keras silently drops it for unsupported models)."""
    from keras_vit.training import DeiTDistiller
    from keras_vit.training.small_models import small_convnet

    student = keras_vit.create_model("deit_tiny_distilled_patch16_224", drop_path_rate=0.1, **TINY)
    teacher = small_convnet(10, image_size=16)
    distiller = DeiTDistiller(student, teacher, distillation="hard", label_smoothing=0.1)
    distiller.compile(optimizer=make_optimizer(Recipe(), 8, 2, 1, model=student), jit_compile=True)
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    aug = make_augmentation(Recipe(rand_augment_ops=0, erasing_prob=0.0), 10)  # MixUp/CutMix
    x, y = aug(tf.constant(images), tf.one_hot(np.arange(8), 10), tf.constant([1, 2], tf.int64))
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert distiller.jit_compile is True
    assert np.isfinite(history.history["loss"][0])

    step = tf.function(distiller.train_step, jit_compile=True)
    hlo = step.experimental_get_compiler_ir((x, y))(stage="hlo")
    assert "HloModule" in hlo and "dot" in hlo  # compiled, with the attention matmuls in it


def test_finetune_and_linear_probe_presets():
    scratch, ft = (
        recipe_for("deit_small_patch16_224"),
        recipe_for("deit_small_patch16_224", preset="finetune"),
    )
    assert scratch.mixes and not ft.mixes  # no MixUp/CutMix unless asked
    assert (ft.erasing_prob, ft.rand_augment_magnitude, ft.warmup_epochs) == (0.0, 0.5, 1.0)
    assert ft.learning_rate(64) == pytest.approx(1e-4 * 64 / 512)  # lower, scaled by batch
    assert ft.learning_rate(64) == pytest.approx(scratch.learning_rate(64) / 5)
    assert ft.drop_path_rate == scratch.drop_path_rate == 0.1  # the size's default stays
    asked = recipe_for("deit_small_patch16_224", preset="finetune", mixup_alpha=0.8, mix_prob=1.0)
    assert asked.mixes
    probe = recipe_for("deit_small_patch16_224", preset="linear_probe")
    assert (probe.drop_path_rate, probe.weight_decay, probe.rand_augment_ops) == (0.0, 0.0, 0)
    with pytest.raises(ValueError, match="'fine-tune'"):
        recipe_for(None, preset="fine-tune")
    with pytest.raises(ValueError, match="layer_decay"):
        Recipe(layer_decay=1.5)


def test_default_preset_follows_the_start_and_the_cli_spells_it():
    from keras_vit.commands.train import _parse_knobs
    from keras_vit.training.train import resolve_recipe

    name = "deit_small_patch16_224"
    assert resolve_recipe(None, name, "x", loaded=False, freeze_backbone=False).mixes
    assert resolve_recipe(None, name, "x", True, False) == recipe_for(name, preset="finetune")
    assert resolve_recipe(None, name, "x", True, True) == recipe_for(name, preset="linear_probe")
    # an explicit preset wins, knobs apply on top
    knobs = _parse_knobs(["scratch", "lr=1e-3"])
    assert knobs == {"preset": "scratch", "lr": 1e-3}
    assert resolve_recipe(knobs, name, "x", True, False) == recipe_for(name, lr=1e-3)
    assert resolve_recipe("finetune", name, "x", False, False) == recipe_for(
        name, preset="finetune"
    )
    with pytest.raises(ValueError, match="two presets"):
        _parse_knobs(["finetune", "scratch"])


def test_layer_wise_decay_scales_one_step_of_the_optimizer():
    """One AdamW step with layer_decay=0.5 on a depth-3 ViT moves every variable by
    `0.5 ** (3 - i)` times what plain AdamW moves it (block i), the head by 1x, the stem by
    0.5 ** 4, the final norm with the last block; weight decay scales with it."""
    import keras

    depth, decay = 3, 0.5
    model = keras_vit.create_model("vit_tiny_patch16_224", **{**TINY, "depth": depth})
    base = Recipe(lr=1e-2, scale_lr_with_batch=False, warmup_epochs=0, weight_decay=0.3)
    rng = np.random.default_rng(0)
    variables = model.trainable_variables
    grads = [rng.normal(0, 1, v.shape).astype("float32") for v in variables]
    start = [v.numpy().copy() for v in variables]

    def step(recipe):
        opt = make_optimizer(recipe, 512, 10, 1, model=model)
        opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        delta = [v.numpy() - s for v, s in zip(variables, start)]
        for v, s in zip(variables, start):
            v.assign(s)
        return delta

    plain, layered = step(base), step(base.replace(layer_decay=decay))

    def expected(path):
        top = path.split("/")[0]
        if top.startswith("blocks_"):
            return decay ** (depth - int(top.split("_")[1]))
        return {"head": 1.0, "norm": decay}.get(top, decay ** (depth + 1))  # else the stem

    seen = set()
    for v, a, b in zip(variables, layered, plain):
        scale = expected(v.path)
        seen.add(scale)
        assert np.abs(b).max() > 1e-4, v.path  # plain AdamW moved it
        np.testing.assert_allclose(a, scale * b, rtol=1e-4, atol=1e-9, err_msg=v.path)
    assert seen == {decay**k for k in range(depth + 2)}
