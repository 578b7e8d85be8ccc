"""Mutation test of the parity comparison itself (DESIGN.md, "prove it with mutants").

Each classic mapping bug is injected into an otherwise correct conversion of a reduced-depth
timm model, and the same comparison the parity tests use must reject it by a wide margin:
max |logit diff| >= 10x its tolerance (1e-4). The unmutated control must pass. The bugs are
injected where a converter would make them: in the timm-layout state_dict that is loaded
(q/k/v order, LayerNorm weight/bias, patch kernel layout, token order, position-embedding
resampling) or in the built model (LayerNorm epsilon), all through public API.

The reference is randomised as every parity test's is, then its residual stream is made small
(patch projection, class/distillation token and position embedding scaled by `_QUIET`): the
first LayerNorm then sees a variance of ~1e-4, where an epsilon of 1e-5 instead of 1e-6 is no
longer a 1e-4 effect. On default-scale inputs that mutant moves the logits by about 1e-4 only.
"""

import keras
import numpy as np
import pytest
from helpers import ATOL, nchw_to_nhwc, structured_images, timm_forward
from parity import ParityCase, build_reference, reference_at

import keras_vit

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

MARGIN = 10 * ATOL
_QUIET = 0.02  # scale of the embedding stage in the reference (see the module docstring)

VIT = ParityCase("vit_tiny_patch16_224", dict(depth=2, image_size=64), seed=1)
DEIT = ParityCase("deit_tiny_distilled_patch16_224", dict(depth=2, image_size=64), seed=2)
RESAMPLED = (96, 80)  # a larger non-square grid: 6x5 patches from the 4x4 of 64 px


def _quiet_reference(case):
    ref = build_reference(case)
    with torch.no_grad():
        for name in ("cls_token", "dist_token", "pos_embed"):
            if hasattr(ref, name):
                getattr(ref, name).mul_(_QUIET)
        ref.patch_embed.proj.weight.mul_(_QUIET)
        ref.patch_embed.proj.bias.mul_(_QUIET)
    return ref


def _state(ref):
    return {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


# --- the mutants: state_dict -> state_dict (or model -> model for the epsilon) ---------------


def _swap_q_k(state):
    for key in [k for k in state if k.endswith("attn.qkv.weight") or k.endswith("attn.qkv.bias")]:
        q, k, v = np.split(state[key], 3, axis=0)
        state[key] = np.concatenate([k, q, v], axis=0)
    return state


def _swap_norm_weight_and_bias(state):
    norms = [k[: -len(".weight")] for k in state if k.endswith(".weight") and "norm" in k]
    for key in norms:
        state[f"{key}.weight"], state[f"{key}.bias"] = state[f"{key}.bias"], state[f"{key}.weight"]
    return state


def _transpose_patch_kernel(state):
    w = state["patch_embed.proj.weight"]  # (out, in, kh, kw) -> kernel rows and columns swapped
    state["patch_embed.proj.weight"] = np.ascontiguousarray(w.transpose(0, 1, 3, 2))
    return state


def _swap_class_and_distillation_tokens(state):
    state["cls_token"], state["dist_token"] = state["dist_token"], state["cls_token"]
    return state


def _resample_with_prefix_inside(size):
    """The whole sequence (prefix + grid) interpolated as one signal to the new length, as
    `F.interpolate(pos_embed.transpose(1, 2), size=new_len)` would, instead of the prefix
    tokens kept out and the grid resampled in 2-D."""

    def mutate(state):
        pos = state["pos_embed"][0]  # (1 + old_h * old_w, D)
        new_len = 1 + (size[0] // 16) * (size[1] // 16)
        x_old, x_new = np.linspace(0, 1, len(pos)), np.linspace(0, 1, new_len)
        resampled = np.stack([np.interp(x_new, x_old, pos[:, c]) for c in range(pos.shape[1])], 1)
        state["pos_embed"] = resampled[None].astype(np.float32)
        return state

    return mutate


def _layer_norm_epsilon_1e5(monkeypatch):
    """Every LayerNormalization built from now on uses epsilon 1e-5 (timm's ViT uses 1e-6)."""
    init = keras.layers.LayerNormalization.__init__

    def wrong_epsilon(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "epsilon": 1e-5})

    monkeypatch.setattr(keras.layers.LayerNormalization, "__init__", wrong_epsilon)


STATE_MUTANTS = {
    "qkv_order": (VIT, None, _swap_q_k),
    "norm_weight_bias_swapped": (VIT, None, _swap_norm_weight_and_bias),
    "patch_kernel_transposed": (VIT, None, _transpose_patch_kernel),
    "cls_dist_tokens_swapped": (DEIT, None, _swap_class_and_distillation_tokens),
    "pos_embed_resampled_with_prefix": (VIT, RESAMPLED, _resample_with_prefix_inside(RESAMPLED)),
}


def _compare(case, ref, size, state=None):
    """max |logit diff| of keras_vit (from `state`, default the reference's) against timm."""
    tm, (h, w) = reference_at(case, ref, size)
    images = structured_images(2, h, w, seed=h + w)
    model = keras_vit.create_model(
        case.keras_name, include_preprocessing=False, **{**case.kwargs, "image_size": (h, w)}
    )
    keras_vit.load_weights(model, state if state is not None else _state(ref))
    ours = model.predict_on_batch(nchw_to_nhwc(images))
    expected = timm_forward(tm, images)
    spread = float(np.max(np.abs(expected[0] - expected[1])))
    assert spread > 0.05, f"the reference does not tell the images apart ({spread:.3g})"
    return float(np.max(np.abs(ours - expected)))


@pytest.fixture(scope="module")
def references():
    return {case.timm_name: _quiet_reference(case) for case in (VIT, DEIT)}


@pytest.mark.parametrize("case", [VIT, DEIT], ids=str)
@pytest.mark.parametrize("size", [None, RESAMPLED])
def test_control_passes(case, size, references):
    """The unmutated conversion of the same quiet reference is within tolerance."""
    assert _compare(case, references[case.timm_name], size) <= ATOL


@pytest.mark.parametrize("mutant", sorted(STATE_MUTANTS))
def test_mapping_bug_is_caught(mutant, references):
    case, size, mutate = STATE_MUTANTS[mutant]
    ref = references[case.timm_name]
    state = mutate(_state(ref))
    if size is not None:  # the mutated pos_embed already has the new length: no resampling
        assert state["pos_embed"].shape[1] != ref.pos_embed.shape[1]
    diff = _compare(case, ref, size, state=state)
    print(f"mutant {mutant}: max |logit diff| {diff:.3g}")
    assert diff >= MARGIN, f"{mutant} moves the logits by only {diff:.3g} < {MARGIN}"


def test_layer_norm_epsilon_is_caught(references, monkeypatch):
    _layer_norm_epsilon_1e5(monkeypatch)
    diff = _compare(VIT, references[VIT.timm_name], None)
    print(f"mutant layer_norm_epsilon_1e-5: max |logit diff| {diff:.3g}")
    assert diff >= MARGIN, f"LayerNorm epsilon 1e-5 moves the logits by only {diff:.3g}"
