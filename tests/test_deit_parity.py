"""DeiT parity with timm: every registered variant, both heads of the distilled ones, random
weights, float32, max |diff| <= 1e-4, at the native and a resampled resolution.

CI runs every variant at depth 2 (same widths, heads, patch and resolution as the full model)
and the tiny variants at full depth; `make parity` (`-m slow`) runs all full-size.
"""

import keras
import numpy as np
import parity
import pytest
from parity import timm, torch

import keras_vit
from keras_vit.models import DistilledVisionTransformer, VisionTransformer

DEIT_NAMES = keras_vit.list_models("deit_*")
TINY = [n for n in DEIT_NAMES if n.startswith("deit_tiny")]


def _resampled_size(name):
    """A larger non-square grid: DeiT's fine-tune-at-higher-resolution path."""
    return parity.other_size(name, 2, -2)


def _case(name, sizes, **arch):
    return parity.ParityCase(name, arch, image_sizes=sizes, heads="distilled" in name)


DEPTH_2 = [_case(n, (None, _resampled_size(n)), depth=2) for n in DEIT_NAMES]
FULL_DEPTH_TINY = [_case(n, (None,)) for n in TINY]
FULL_SIZE = [_case(n, (None, _resampled_size(n))) for n in DEIT_NAMES]


def _class_of_each_name(case, model, path):
    """Distilled names build the distilled class, the others the plain ViT."""
    assert type(model) is (DistilledVisionTransformer if case.heads else VisionTransformer)


def test_registry_covers_timm_deit():
    expected = [
        "deit_base_distilled_patch16_224",
        "deit_base_distilled_patch16_384",
        "deit_base_patch16_224",
        "deit_base_patch16_384",
        "deit_small_distilled_patch16_224",
        "deit_small_patch16_224",
        "deit_tiny_distilled_patch16_224",
        "deit_tiny_patch16_224",
    ]
    assert DEIT_NAMES == expected
    assert set(expected) <= set(timm.list_models("deit_*"))
    for name in DEIT_NAMES:
        parity.assert_defaults_match_timm_cfg(name)


test_parity_every_variant_at_depth_2 = parity.parity_test(DEPTH_2, check_model=_class_of_each_name)
test_parity_full_depth_tiny_variants = parity.parity_test(
    FULL_DEPTH_TINY, check_model=_class_of_each_name
)
test_parity_full_size = parity.parity_test(FULL_SIZE, slow=True, check_model=_class_of_each_name)
test_param_count_matches_timm = parity.param_count_test(DEIT_NAMES, slow=True)


@pytest.fixture(scope="module")
def tiny_distilled(tmp_path_factory):
    name = "deit_tiny_distilled_patch16_224"
    ref = parity.build_reference(parity.ParityCase(name, dict(depth=2), seed=7))
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    parity.save_timm_safetensors(ref, path)
    return name, ref, path


def test_preprocessing_uses_imagenet_mean_std(tiny_distilled):
    name, ref, path = tiny_distilled
    pixels = parity.structured_pixels(2, 224, 224)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    normalised = ((pixels / 255.0 - mean) / std).astype(np.float32)
    model = keras_vit.create_model(name, depth=2, weights=path)
    expected = parity.timm_forward(ref, np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))
    parity.assert_parity(model.predict_on_batch(pixels), expected)


def test_features_are_mean_of_both_tokens(tiny_distilled):
    name, ref, path = tiny_distilled
    images = parity.structured_images(2, 224, 224)
    feats = keras_vit.create_model(
        name, depth=2, weights=path, num_classes=0, include_preprocessing=False
    )
    with torch.no_grad():
        expected = ref.forward_head(ref.forward_features(torch.from_numpy(images)), pre_logits=True)
    assert feats.output_shape == (None, 192)
    parity.assert_parity(feats.predict_on_batch(parity.nchw_to_nhwc(images)), expected.numpy())


def test_heads_model_shares_weights_and_averages_to_output(tiny_distilled):
    name, _, path = tiny_distilled
    model = keras_vit.create_model(name, depth=2, weights=path, include_preprocessing=False)
    heads = model.heads_model
    assert heads is model.heads_model  # cached
    assert {id(v) for v in heads.weights} == {id(v) for v in model.weights}
    x = parity.nchw_to_nhwc(parity.structured_images(2, 224, 224))
    cls_logits, dist_logits = heads.predict_on_batch(x)
    np.testing.assert_allclose(
        model.predict_on_batch(x), (cls_logits + dist_logits) / 2, rtol=0, atol=1e-5
    )  # two XLA programs: rounding may differ by ~1e-6
    model.get_layer("head_dist").bias.assign(model.get_layer("head_dist").bias + 1.0)
    np.testing.assert_allclose(heads.predict_on_batch(x)[1], dist_logits + 1.0, atol=1e-5)


def test_new_num_classes_resets_both_heads(tiny_distilled):
    name, _, path = tiny_distilled
    model = keras_vit.create_model(
        name, depth=2, weights=path, num_classes=5, include_preprocessing=False
    )
    assert model.output_shape == (None, 5)
    assert model.get_layer("head_dist").kernel.shape == (192, 5)
    assert set(model.head_keys) >= {"head_dist.weight", "head_dist.bias"}


def test_distilled_keras_round_trip(tmp_path):
    model = keras_vit.create_model(
        "deit_tiny_distilled_patch16_224", depth=1, image_size=32, num_classes=7, drop_rate=0.1
    )
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    expected = model.predict_on_batch(x)
    expected_heads = model.heads_model.predict_on_batch(x)  # a cached view must not be saved
    model.save(tmp_path / "deit.keras")
    loaded = keras.saving.load_model(tmp_path / "deit.keras")
    assert type(loaded) is DistilledVisionTransformer
    assert loaded.get_config() == model.get_config()
    assert len(loaded.weights) == len(model.weights)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), expected)
    for a, b in zip(loaded.heads_model.predict_on_batch(x), expected_heads, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [dict(global_pool="avg"), dict(fc_norm=True)])
def test_distilled_rejects_other_pooling(bad):
    with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
        keras_vit.create_model("deit_tiny_distilled_patch16_224", depth=1, image_size=32, **bad)
