"""DeiT III parity with timm: every `deit3_*` architecture, random weights, float32, max |diff|
<= 1e-4, at the native and a resampled non-square resolution; parameter counts as timm's.

CI runs every variant at depth 1 (same widths, heads, patch and resolution as the full model)
and DeiT III-S/16 at full size; `make parity` (`-m slow`) runs all full-size.
"""

from parity import (
    ParityCase,
    assert_defaults_match_timm_cfg,
    other_size,
    param_count_test,
    parity_test,
    timm,
)

import keras_vit
from keras_vit.models import VisionTransformer

DEIT3_NAMES = keras_vit.list_models("deit3_*")


def _case(name, **arch):
    # a non-square grid two patches taller and two narrower than the native one
    return ParityCase(name, arch, image_sizes=(None, other_size(name, 2, -2)))


DEPTH_1 = [_case(n, depth=1) for n in DEIT3_NAMES]
FULL_SIZE = [_case(n) for n in DEIT3_NAMES]
CI_FULL_SIZE = [ParityCase("deit3_small_patch16_224")]  # native; depth 1 covers resampling


def _check(case, model, path):
    """Each name builds the plain VisionTransformer with DeiT III's options."""
    assert type(model) is VisionTransformer
    assert model.no_embed_class and model.init_values == 1e-6
    # pos_embed covers the patch grid only; the class token is put in front after it
    assert model.get_layer("pos_embed").embedding.shape[1] == (
        model.grid_size[0] * model.grid_size[1]
    )


def test_registry_covers_timm_deit3():
    assert DEIT3_NAMES == sorted(timm.list_models("deit3_*"))
    assert len(DEIT3_NAMES) == 8
    for name in DEIT3_NAMES:
        spec = keras_vit.registry.get_spec(name)
        assert spec.family == "deit3" and spec.cls is VisionTransformer
        assert_defaults_match_timm_cfg(name)


test_parity_every_variant_at_depth_1 = parity_test(DEPTH_1, check_model=_check)
test_parity_full_size_small = parity_test(CI_FULL_SIZE, check_model=_check)
test_parity_full_size = parity_test(FULL_SIZE, slow=True, check_model=_check)
test_param_count_matches_timm_at_depth_1_and_2 = param_count_test(DEIT3_NAMES, depths=(1, 2))
test_param_count_matches_timm_ci = param_count_test(
    ["deit3_small_patch16_224", "deit3_medium_patch16_224"]
)
test_param_count_matches_timm = param_count_test(DEIT3_NAMES, slow=True)
