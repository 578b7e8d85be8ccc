"""ViT parity with timm: every registered variant, random weights, float32, max |diff| <= 1e-4.

CI runs every variant at depth 2 (same widths, heads, patch and resolutions as the full
model), plus the tiny and small variants at full depth; `make parity` runs all full-size.
"""

import re

import numpy as np
import parity
import pytest
from parity import timm, torch

import keras_vit

# the classic ViT family (register ViTs and DINOv2 share the prefix: tests/test_registers_parity.py)
VIT_NAMES = [
    n for n in keras_vit.list_models("vit_*") if keras_vit.registry.get_spec(n).family == "vit"
]
SMALL = [n for n in VIT_NAMES if re.match(r"vit_(tiny|small)_", n)]


def _other_sizes(name):
    """Two other resolutions on the patch grid: one smaller square, one larger non-square."""
    return (parity.other_size(name, -3), parity.other_size(name, 2, -2))


DEPTH_2 = [
    parity.ParityCase(n, dict(depth=2), image_sizes=(None, *_other_sizes(n))) for n in VIT_NAMES
]
FULL_DEPTH_SMALL = [parity.ParityCase(n) for n in SMALL]
FULL_SIZE = [parity.ParityCase(n, image_sizes=(None, *_other_sizes(n))) for n in VIT_NAMES]


def test_registry_covers_timm_classic_vits():
    pattern = re.compile(r"vit_(tiny|small|base|large|huge)_patch(8|14|16|32)_(224|384)$")
    expected = sorted(n for n in timm.list_models("vit_*") if pattern.match(n))
    assert VIT_NAMES == expected
    assert len(VIT_NAMES) == 18


test_parity_every_variant_at_depth_2 = parity.parity_test(DEPTH_2)
test_parity_full_depth_small_variants = parity.parity_test(FULL_DEPTH_SMALL)
test_parity_full_size = parity.parity_test(FULL_SIZE, slow=True)
test_param_count_matches_timm = parity.param_count_test(VIT_NAMES, slow=True)
test_param_count_matches_timm_ci = parity.param_count_test(
    ["vit_tiny_patch16_224", "vit_base_patch16_224"]
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A depth-2 ViT-Ti in timm with random weights, and its safetensors file."""
    ref = parity.randomize_timm_model(
        timm.create_model("vit_tiny_patch16_224", depth=2).eval(), seed=3
    )
    path = parity.save_timm_safetensors(ref, tmp_path_factory.mktemp("w") / "tiny.safetensors")
    return ref, path


def test_preprocessing_takes_0_255_rgb(tiny):
    ref, path = tiny
    pixels = parity.structured_pixels(2, 224, 224)
    normalised = (pixels / 255.0 - 0.5) / 0.5  # ViT's mean = std = 0.5
    model = keras_vit.create_model("vit_tiny_patch16_224", depth=2, weights=path)
    expected = parity.timm_forward(ref, np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))
    parity.assert_parity(model.predict_on_batch(pixels), expected)


def test_features_and_avg_pool_match_timm(tiny):
    ref, path = tiny
    images = parity.structured_images(2, 224, 224)
    feats = keras_vit.create_model(
        "vit_tiny_patch16_224", depth=2, weights=path, num_classes=0, include_preprocessing=False
    )
    with torch.no_grad():
        expected = ref.forward_head(ref.forward_features(torch.from_numpy(images)), pre_logits=True)
    assert feats.output_shape == (None, 192)
    parity.assert_parity(feats.predict_on_batch(parity.nchw_to_nhwc(images)), expected.numpy())

    # global average pooling: timm puts a LayerNorm (fc_norm) after the pool instead of `norm`
    avg_ref = timm.create_model("vit_tiny_patch16_224", depth=2, global_pool="avg").eval()
    parity.randomize_timm_model(avg_ref, seed=5)
    avg_path = parity.save_timm_safetensors(avg_ref, path.parent / "avg.safetensors")
    avg = keras_vit.create_model(
        "vit_tiny_patch16_224",
        depth=2,
        weights=avg_path,
        global_pool="avg",
        include_preprocessing=False,
    )
    parity.assert_parity(
        avg.predict_on_batch(parity.nchw_to_nhwc(images)), parity.timm_forward(avg_ref, images)
    )


def test_new_num_classes_keeps_backbone_and_starts_fresh_head(tiny):
    ref, path = tiny
    images = parity.nchw_to_nhwc(parity.structured_images(2, 224, 224))
    model = keras_vit.create_model(
        "vit_tiny_patch16_224", depth=2, weights=path, num_classes=7, include_preprocessing=False
    )
    assert model.output_shape == (None, 7)
    features = keras_vit.create_model(
        "vit_tiny_patch16_224", depth=2, weights=path, num_classes=0, include_preprocessing=False
    )
    head = model.get_layer("head")
    expected = features.predict_on_batch(images) @ head.kernel.numpy() + head.bias.numpy()
    np.testing.assert_allclose(model.predict_on_batch(images), expected, atol=1e-4)


def test_intermediate_features_match_timm_blocks(tiny):
    ref, path = tiny
    captured = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: captured.append(o.numpy())) for b in ref.blocks
    ]
    images = parity.structured_images(2, 224, 224)
    parity.timm_forward(ref, images)
    for h in hooks:
        h.remove()
    model = keras_vit.create_model(
        "vit_tiny_patch16_224", depth=2, weights=path, include_preprocessing=False
    )
    ours = model.forward_intermediates(parity.nchw_to_nhwc(images))
    assert len(ours) == 2 and ours[0].shape == (2, 197, 192)
    for a, b in zip(ours, captured):
        parity.assert_parity(a, b)
    last = model.forward_intermediates(parity.nchw_to_nhwc(images), indices=[-1])
    np.testing.assert_array_equal(last[0], ours[-1])
