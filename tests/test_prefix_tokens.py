"""Prefix tokens as configuration of one `VisionTransformer`: class, register and
distillation tokens, `no_embed_class`, avg pooling; parity with timm's own constructor at the
native and a resampled size, `.keras` round trips."""

import keras
import numpy as np
import pytest
from parity import (
    assert_parity,
    nchw_to_nhwc,
    randomize_timm_model,
    save_timm_safetensors,
    structured_images,
    timm_forward,
    torch,
)
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402

import keras_vit
from keras_vit.models import VisionTransformer

SMALL = dict(patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)

CASES = {
    # what register-token models use (vit_*_reg4_gap_*): 4 registers, no class position,
    # average pooling over the patches with fc_norm, layer scale
    "reg4_gap": dict(
        reg_tokens=4,
        no_embed_class=True,
        class_token=True,
        global_pool="avg",
        fc_norm=True,
        init_values=1e-5,
    ),
    "no_class_token_avg": dict(class_token=False, global_pool="avg"),
    # registers inside the position embedding (no_embed_class=False), token pooling
    "reg2_token_pos_covers_prefix": dict(reg_tokens=2, global_pool="token"),
    "deit3_style_no_embed_class": dict(no_embed_class=True, init_values=1e-5),
}


def _timm(cls, size, **kw):
    torch.manual_seed(0)
    return cls(img_size=size, in_chans=3, **SMALL, **kw).eval()


def _ours(size, **kw):
    return VisionTransformer(image_size=size, include_preprocessing=False, **SMALL, **kw)


def _parity(ref_cls, kw, tmp_path, sizes=(32, (48, 40))):
    ref = randomize_timm_model(_timm(ref_cls, 32, **kw), seed=3)
    path = save_timm_safetensors(ref, tmp_path / "w.safetensors")
    diffs = []
    for size in sizes:
        if size == 32:
            tm = ref
        else:
            tm = _timm(ref_cls, size, **kw)
            tm.load_state_dict(checkpoint_filter_fn(ref.state_dict(), tm))
        h, w = (size, size) if isinstance(size, int) else size
        images = structured_images(2, h, w, seed=h + w)
        model = keras_vit.load_weights(_ours(size, **kw), path)
        ours = model.predict_on_batch(nchw_to_nhwc(images))
        diffs.append(assert_parity(ours, timm_forward(tm, images)))
    return model, diffs


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_timm_constructor_native_and_resampled(case, tmp_path):
    kw = CASES[case]
    model, diffs = _parity(TimmViT, kw, tmp_path)
    ref = _timm(TimmViT, (48, 40), **kw)
    assert model.num_prefix_tokens == ref.num_prefix_tokens
    assert tuple(model.get_layer("pos_embed").embedding.shape) == tuple(ref.pos_embed.shape)
    print(f"{case}: max |diff| native, resampled: {diffs}")


def test_reg_token_shapes_and_order():
    model = _ours(32, **CASES["reg4_gap"])
    assert model.num_prefix_tokens == 5
    assert tuple(model.get_layer("reg_token").token.shape) == (1, 4, 48)
    assert tuple(model.get_layer("pos_embed").embedding.shape) == (1, 16, 48)  # grid only
    assert _ours(32, reg_tokens=4).get_layer("pos_embed").embedding.shape == (1, 21, 48)


def test_resampling_keeps_prefix_out_only_where_pos_embed_has_it():
    rng = np.random.default_rng(0)
    grid_only = rng.standard_normal((1, 16, 48)).astype(np.float32)
    with_prefix = rng.standard_normal((1, 5 + 16, 48)).astype(np.float32)
    a = _ours(48, **CASES["reg4_gap"]).adapt_checkpoint({"pos_embed": grid_only})
    assert a["pos_embed"].shape == (1, 36, 48)
    b = _ours(48, reg_tokens=4).adapt_checkpoint({"pos_embed": with_prefix})
    assert b["pos_embed"].shape == (1, 5 + 36, 48)
    np.testing.assert_array_equal(b["pos_embed"][:, :5], with_prefix[:, :5])


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(class_token=False), "class_token=False"),
        (dict(reg_tokens=-1), "reg_tokens"),
        (dict(distilled=True, reg_tokens=2), "register tokens"),
        (dict(pos_embed="sincos"), "sincos"),
    ],
)
def test_inconsistent_token_config_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        _ours(32, **bad)


def test_register_model_keras_round_trip(tmp_path):
    model = VisionTransformer(image_size=32, **SMALL, **CASES["reg4_gap"])
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    expected = model.predict_on_batch(x)
    model.save(tmp_path / "reg.keras")
    loaded = keras.saving.load_model(tmp_path / "reg.keras")
    assert loaded.get_config() == model.get_config()
    assert loaded.num_prefix_tokens == 5
    np.testing.assert_array_equal(loaded.predict_on_batch(x), expected)
