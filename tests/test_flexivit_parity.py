"""FlexiViT against timm: the architectures at their own patch size, and the patch-size change
(`create_model(..., patch_size=P)` on a patch-16 checkpoint) against timm's model created with
`patch_size=P` and loaded through its `checkpoint_filter_fn` (`resample_patch_embed` and
`resample_abs_pos_embed`). Every parameter randomised, float32, max |diff| <= 1e-4."""

import dataclasses
import gc
import sys

import numpy as np
import pytest
from parity import (
    ParityCase,
    assert_param_count,
    assert_parity,
    build_reference,
    load_ours,
    nchw_to_nhwc,
    run_parity,
    save_timm_safetensors,
    structured_images,
    timm,
    timm_arguments,
    timm_forward,
    torch,
)

from keras_vit.layers import resample_patch_embed

FLEXIVIT = ("flexivit_small", "flexivit_base", "flexivit_large")
# FlexiViT's own sizes: 240 divides by each (grids 30, 24 and 8 tokens a side)
PATCH_SIZES = (8, 10, 30)


# --- resample_patch_embed: the pure function, against timm's -----------------------------
@pytest.mark.parametrize(
    "new,interpolation,antialias",
    [
        ((8, 8), "bicubic", True),  # shrink: the antialiased (widened) kernel
        ((10, 10), "bicubic", True),
        ((30, 30), "bicubic", True),  # grow
        ((12, 20), "bicubic", True),  # non-square
        ((8, 8), "bicubic", False),
        ((24, 24), "bilinear", True),
        ((10, 6), "bilinear", False),
    ],
)
def test_resample_patch_embed_matches_timm(new, interpolation, antialias):
    from timm.layers import resample_patch_embed as timm_resample

    kernel = np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32) / 16
    expected = timm_resample(
        torch.from_numpy(kernel), list(new), interpolation=interpolation, antialias=antialias
    ).numpy()
    ours = resample_patch_embed(kernel, new, interpolation=interpolation, antialias=antialias)
    assert ours.shape == expected.shape == (6, 3, *new) and ours.dtype == np.float32
    # timm takes the pseudo-inverse in float32, here float64: rounding of order 1e-6
    np.testing.assert_allclose(ours, expected, rtol=0, atol=5e-6 * np.abs(expected).max())


def test_resample_patch_embed_same_size_and_bad_input():
    kernel = np.ones((2, 3, 16, 16), np.float32)
    assert resample_patch_embed(kernel, 16) is kernel
    with pytest.raises(ValueError, match=r"\(out, in, height, width\).*\(2, 3, 16\)"):
        resample_patch_embed(kernel[..., 0], (8, 8))
    with pytest.raises(ValueError, match="'nearest'"):
        resample_patch_embed(kernel, (8, 8), interpolation="nearest")
    with pytest.raises(ValueError, match=r"new_size.*0"):
        resample_patch_embed(kernel, (8, 0))


def test_resampled_kernel_sees_resized_patches_as_the_old_one_saw_the_originals():
    """What the pseudo-inverse is for (FlexiViT, eq. 3): <resize(x), new kernel> equals
    <x, old kernel> for every patch x of the old size, when growing the patch."""
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    patches = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    new = resample_patch_embed(kernel, (16, 16))
    resized = F.interpolate(
        torch.from_numpy(patches), size=(16, 16), mode="bicubic", antialias=True
    ).numpy()
    old_out = np.einsum("nchw,ochw->no", patches, kernel)
    new_out = np.einsum("nchw,ochw->no", resized, new)
    np.testing.assert_allclose(new_out, old_out, atol=1e-3 * np.abs(old_out).max())


# --- the architectures at their own patch size ---------------------------------------------
NATIVE = [ParityCase(n, dict(depth=1), image_sizes=(None, (192, 256))) for n in FLEXIVIT]


@pytest.mark.parametrize("case", NATIVE, ids=str)
def test_flexivit_parity_native_and_resampled_image(case, tmp_path):
    run_parity(case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", [ParityCase(n) for n in FLEXIVIT], ids=str)
def test_flexivit_parity_full_size(case, tmp_path):
    run_parity(case, tmp_path)


@pytest.mark.parametrize("name", FLEXIVIT)
def test_flexivit_param_count_is_timms(name):
    assert_param_count(name)


def test_param_count_at_another_patch_size_is_timms():
    assert_param_count("flexivit_small", patch_size=10)


# --- the patch-size change: a patch-16 checkpoint at patch P ---------------------------------
def run_patch_parity(case, patch_sizes, tmp_path):
    """The case's patch-16 checkpoint loaded at each of `patch_sizes` by both libraries (timm:
    a model created with `patch_size=P`, the state_dict through its `checkpoint_filter_fn`);
    returns {P: max |diff|}."""
    from timm.models._registry import model_entrypoint

    ref = build_reference(case)
    path = save_timm_safetensors(ref, tmp_path / f"{case.timm_name}.safetensors")
    module = sys.modules[model_entrypoint(case.timm_name).__module__]
    size = case.image_sizes[0]
    diffs = {}
    for patch in patch_sizes:
        other = timm.create_model(case.timm_name, **timm_arguments(case, patch_size=patch)).eval()
        other.load_state_dict(module.checkpoint_filter_fn(ref.state_dict(), other))
        height, width = other.patch_embed.img_size
        images = structured_images(case.batch, height, width, seed=patch)
        at_patch = dataclasses.replace(case, ours_kwargs={**case.ours_kwargs, "patch_size": patch})
        ours = load_ours(at_patch, path, size)
        assert ours.patch_size == patch and ours.grid_size == tuple(other.patch_embed.grid_size)
        out = ours.predict_on_batch(nchw_to_nhwc(images))
        diffs[patch] = assert_parity(out, timm_forward(other, images), atol=case.atol)
        del other, ours  # a full-size Large is 1.2 GB a copy: one pair alive at a time
        gc.collect()
    print(f"{case}: max |diff| per patch size {diffs}")
    return diffs


PATCH_CASES = [
    ParityCase("flexivit_small", dict(depth=2)),
    ParityCase("flexivit_base", dict(depth=1)),
]


@pytest.mark.parametrize("case", PATCH_CASES, ids=str)
def test_flexivit_at_patch_8_10_30_from_a_patch_16_checkpoint(case, tmp_path):
    run_patch_parity(case, PATCH_SIZES, tmp_path)


def test_any_vit_checkpoint_loads_at_another_patch_size(tmp_path):
    """A classic ViT file (class token inside `pos_embed`) at patch 8 and 14 (224 px), and a
    distilled DeiT at patch 8: both prefix tokens kept out of the resampled grid."""
    run_patch_parity(ParityCase("vit_base_patch16_224", dict(depth=1)), (8, 14), tmp_path)
    run_patch_parity(ParityCase("deit_tiny_distilled_patch16_224", dict(depth=2)), (8,), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", [ParityCase(n) for n in FLEXIVIT], ids=str)
def test_flexivit_full_size_at_patch_8_10_30(case, tmp_path):
    run_patch_parity(case, PATCH_SIZES, tmp_path)


def test_patch_size_that_does_not_divide_the_image_is_refused(tmp_path):
    import keras_vit

    with pytest.raises(ValueError, match=r"\(240, 240\).*multiple of the patch size 14"):
        keras_vit.create_model("flexivit_small", depth=1, patch_size=14)
