"""DeiT III parity with timm: every `deit3_*` architecture, random weights, float32, max |diff|
<= 1e-4, at the native and a resampled non-square resolution; parameter counts as timm's.

CI runs every variant at depth 1 (same widths, heads, patch and resolution as the full model)
and DeiT III-S/16 at full size; `make parity` (`-m slow`) runs all full-size.
"""

import pytest
from parity import ParityCase, assert_param_count, run_parity

import keras_vit
from keras_vit.models import VisionTransformer

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

DEIT3_NAMES = keras_vit.list_models("deit3_*")


def _resampled_size(name):
    """A non-square grid two patches taller and two narrower than the native one."""
    arch = keras_vit.registry.get_spec(name).arch
    p, grid = arch["patch_size"], arch["image_size"] // arch["patch_size"]
    return (p * (grid + 2), p * (grid - 2))


def _case(name, **arch):
    return ParityCase(name, arch, image_sizes=(None, _resampled_size(name)))


DEPTH_1 = [_case(n, depth=1) for n in DEIT3_NAMES]
FULL_SIZE = [_case(n) for n in DEIT3_NAMES]
CI_FULL_SIZE = [ParityCase("deit3_small_patch16_224")]  # native; depth 1 covers resampling


def _run(case, tmp_path):
    """run_parity; each name builds the plain VisionTransformer with DeiT III's options."""

    def check(_case, model):
        assert type(model) is VisionTransformer
        assert model.no_embed_class and model.init_values == 1e-6
        # pos_embed covers the patch grid only; the class token is put in front after it
        assert model.get_layer("pos_embed").embedding.shape[1] == (
            model.grid_size[0] * model.grid_size[1]
        )

    return run_parity(case, tmp_path, check_model=check)


def test_registry_covers_timm_deit3():
    assert DEIT3_NAMES == sorted(timm.list_models("deit3_*"))
    assert len(DEIT3_NAMES) == 8
    for name in DEIT3_NAMES:
        spec = keras_vit.registry.get_spec(name)
        assert spec.family == "deit3" and spec.cls is VisionTransformer
        cfg = timm.models.get_pretrained_cfg(name)
        assert spec.defaults["mean"] == cfg.mean and spec.defaults["std"] == cfg.std
        assert spec.defaults["num_classes"] == cfg.num_classes
        assert (3, spec.arch["image_size"], spec.arch["image_size"]) == cfg.input_size


@pytest.mark.parametrize("case", DEPTH_1, ids=str)
def test_parity_every_variant_at_depth_1(case, tmp_path):
    _run(case, tmp_path)


@pytest.mark.parametrize("case", CI_FULL_SIZE, ids=str)
def test_parity_full_size_small(case, tmp_path):
    _run(case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL_SIZE, ids=str)
def test_parity_full_size(case, tmp_path):
    _run(case, tmp_path)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("name", DEIT3_NAMES)
def test_param_count_matches_timm_at_depth_1_and_2(name, depth):
    """Both counts are affine in the depth (stem + head + depth x block): equal at two depths,
    they are equal at every depth, the full one included, without building the full model."""
    assert_param_count(name, depth=depth)


@pytest.mark.parametrize("name", ["deit3_small_patch16_224", "deit3_medium_patch16_224"])
def test_param_count_matches_timm_ci(name):
    assert_param_count(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", DEIT3_NAMES)
def test_param_count_matches_timm(name):
    assert_param_count(name)
