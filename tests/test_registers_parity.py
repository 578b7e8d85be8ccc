"""ViTs with register tokens (`vit_*_reg4_gap_*`) and DINOv2 (with and without registers)
against timm: random weights, float32, max |diff| <= 1e-4 at the native and a resampled
non-square size (the position embedding resampled with the class and register tokens kept
out, by timm's own `checkpoint_filter_fn` on the reference side); parameter counts as timm's;
register tokens under timm's key; the SwiGLU MLP of DINOv2 giant.

CI runs every architecture at depth 1 (DINOv2 at its 518 input) and one small variant per
family at full size; `make parity` (`-m slow`) runs all full-size.
"""

import inspect

import numpy as np
import pytest
from parity import (
    ParityCase,
    assert_defaults_match_timm_cfg,
    assert_parity,
    other_size,
    param_count_test,
    parity_test,
    randomize_timm_model,
    timm,
    torch,
)

import keras_vit
from keras_vit.convert.timm import keras_to_timm_state_dict
from keras_vit.layers import SwiGLUPacked
from keras_vit.models import VisionTransformer, vit_registers

REG4_GAP = [
    "vit_base_patch16_reg4_gap_256",
    "vit_betwixt_patch16_reg4_gap_256",
    "vit_betwixt_patch16_reg4_gap_384",
    "vit_little_patch16_reg4_gap_256",
    "vit_medium_patch16_reg4_gap_256",
    "vit_mediumd_patch16_reg4_gap_256",
    "vit_mediumd_patch16_reg4_gap_384",
]
DINOV2 = sorted(
    f"vit_{size}_patch14_{reg}dinov2"
    for size in ("small", "base", "large", "giant")
    for reg in ("", "reg4_")
)
NAMES = sorted(REG4_GAP + DINOV2)


def _resampled_size(name):
    """DINOv2: 224x168, the usual 224 input and a non-square grid (16x12) below 518's 37x37;
    the others: a non-square grid two patches taller and two narrower than the native one."""
    return (224, 168) if name in DINOV2 else other_size(name, 2, -2)


def _case(name, sizes=None, **arch):
    return ParityCase(name, arch, image_sizes=sizes or (None, _resampled_size(name)))


DEPTH_1 = [_case(n, depth=1) for n in NAMES]
FULL_SIZE = [_case(n) for n in NAMES]
# one small variant per family at its native size (depth 1 covers the resampled sizes)
CI_FULL_SIZE = [
    _case("vit_little_patch16_reg4_gap_256", sizes=(None,)),
    _case("vit_small_patch14_reg4_dinov2", sizes=(None,)),
]


def _check(case, model, path):
    """Each name builds the plain VisionTransformer, its register tokens loaded from timm's
    key `reg_token` of the file run_parity wrote."""
    from safetensors.numpy import load_file

    assert type(model) is VisionTransformer
    ours = keras_to_timm_state_dict(model)
    if model.reg_tokens:
        assert ours["reg_token"].shape == (1, 4, model.embed_dim)
        np.testing.assert_array_equal(ours["reg_token"], load_file(path)["reg_token"])
    grid = model.grid_size[0] * model.grid_size[1]
    prefix_in_pos = 0 if model.no_embed_class else model.num_prefix_tokens
    assert ours["pos_embed"].shape == (1, prefix_in_pos + grid, model.embed_dim)


def test_registry_covers_timm_register_vits_and_dinov2():
    ours = [n for n in keras_vit.list_models("vit_*") if "reg4_gap" in n or "dinov2" in n]
    assert ours == NAMES and len(NAMES) == 15
    assert set(NAMES) <= set(timm.list_models("vit_*"))
    for name in NAMES:
        spec = keras_vit.registry.get_spec(name)
        assert spec.family == ("dinov2" if "dinov2" in name else "vit_reg")
        assert_defaults_match_timm_cfg(name)


def test_a_register_vit_is_a_registration_not_a_class():
    """Issue 18: adding vit_medium_patch16_reg4_gap_256 takes a registration and its
    parameters only."""
    classes = {c for _, c in inspect.getmembers(vit_registers, inspect.isclass)}
    assert classes == {VisionTransformer}  # imported, none defined
    model = keras_vit.create_model("vit_medium_patch16_reg4_gap_256", depth=1)
    assert type(model) is VisionTransformer
    assert keras_vit.registry.get_spec("vit_medium_patch16_reg4_gap_256").arch == dict(
        embed_dim=512,
        depth=12,
        num_heads=8,
        init_values=1e-5,
        patch_size=16,
        image_size=256,
        class_token=False,
        reg_tokens=4,
        no_embed_class=True,
        global_pool="avg",
    )
    assert model.num_prefix_tokens == 4 and model.get_layer("fc_norm") is not None


test_parity_every_variant_at_depth_1 = parity_test(DEPTH_1, check_model=_check)
test_parity_full_size_small = parity_test(CI_FULL_SIZE, check_model=_check)
test_parity_full_size = parity_test(FULL_SIZE, slow=True, check_model=_check)
test_param_count_matches_timm_at_depth_1_and_2 = param_count_test(NAMES, depths=(1, 2))
test_param_count_matches_timm_ci = param_count_test(
    ["vit_little_patch16_reg4_gap_256", "vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"]
)
test_param_count_matches_timm = param_count_test(NAMES, slow=True)


def test_dinov2_resampling_keeps_class_and_registers_out():
    """Plain DINOv2's pos_embed covers [cls, patches]: the class row survives a new grid
    untouched; with registers it covers the patches only and has no prefix rows at all."""
    rng = np.random.default_rng(0)
    plain = keras_vit.create_model("vit_small_patch14_dinov2", depth=1, image_size=224)
    posemb = rng.standard_normal((1, 1 + 37 * 37, 384)).astype(np.float32)
    out = plain.adapt_checkpoint({"pos_embed": posemb})["pos_embed"]
    assert out.shape == (1, 1 + 16 * 16, 384)
    np.testing.assert_array_equal(out[:, :1], posemb[:, :1])
    reg = keras_vit.create_model("vit_small_patch14_reg4_dinov2", depth=1, image_size=224)
    grid_only = posemb[:, 1:]
    out = reg.adapt_checkpoint({"pos_embed": grid_only})["pos_embed"]
    assert out.shape == (1, 16 * 16, 384)
    assert reg.num_prefix_tokens == 5 and reg.pos_embed_prefix_tokens == 0


def test_swiglu_packed_matches_timm():
    from timm.layers import SwiGLUPacked as TimmSwiGLUPacked

    ref = randomize_timm_model(TimmSwiGLUPacked(in_features=24, hidden_features=40).eval(), 1)
    layer = SwiGLUPacked(40)
    x = np.random.default_rng(2).standard_normal((2, 5, 24)).astype(np.float32)
    layer.build(x.shape)
    layer.fc1.kernel.assign(ref.fc1.weight.detach().numpy().T)
    layer.fc1.bias.assign(ref.fc1.bias.detach().numpy())
    layer.fc2.kernel.assign(ref.fc2.weight.detach().numpy().T)
    layer.fc2.bias.assign(ref.fc2.bias.detach().numpy())
    assert layer.fc2.kernel.shape == (20, 24)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    assert_parity(layer(x), expected, atol=1e-5)
    assert SwiGLUPacked.from_config(layer.get_config()).hidden_dim == 40
    with pytest.raises(ValueError, match="odd 41"):
        SwiGLUPacked(41)
    with pytest.raises(ValueError, match="swiglu"):
        VisionTransformer(image_size=28, patch_size=14, depth=1, mlp_layer="swiglu")


def test_dinov2_giant_config_keras_round_trip(tmp_path):
    """SwiGLU blocks, registers and the headless output survive a `.keras` save/load."""
    import keras

    model = keras_vit.create_model(
        "vit_giant_patch14_reg4_dinov2", depth=1, image_size=28, embed_dim=48, num_heads=4
    )
    assert model.get_layer("blocks_0").mlp.fc1.kernel.shape == (48, 256)  # int(48 * 5.33334)
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 3)).astype(np.float32)
    expected = model.predict_on_batch(x)
    model.save(tmp_path / "g.keras")
    loaded = keras.saving.load_model(tmp_path / "g.keras")
    assert type(loaded) is VisionTransformer and loaded.get_config() == model.get_config()
    assert isinstance(loaded.get_layer("blocks_0").mlp, SwiGLUPacked)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), expected)
