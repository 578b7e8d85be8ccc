"""MobileViT parity with timm: full-size XXS/XS/S, random weights, float32, max |diff| <= 1e-4.

Every variant runs at its native 256 and at another size; 224 (a 7x7 last stage, not a
multiple of the 2x2 patch) takes the resize-to-a-multiple path of timm's MobileVitBlock.
"""

import keras
import numpy as np
import parity
import pytest
from parity import timm, torch

import keras_vit
from keras_vit.layers import fold_patches, unfold_patches
from keras_vit.models import MobileViT

NAMES = ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"]
OTHER_SIZES = {"mobilevit_xxs": [192, 224], "mobilevit_xs": [224], "mobilevit_s": [192]}
CASES = [
    parity.ParityCase(n, image_sizes=(256, *OTHER_SIZES[n]), seed=10 + i)
    for i, n in enumerate(NAMES)
]


def test_registry_has_timm_mobilevit_v1():
    assert keras_vit.list_models("mobilevit_*") == sorted(NAMES)
    assert set(NAMES) <= set(timm.list_models("mobilevit*"))
    assert keras_vit.registry.get_spec("mobilevit_s").family == "mobilevit"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (randomised timm classifier, its safetensors file)."""
    out, folder = {}, tmp_path_factory.mktemp("mobilevit")
    for case in CASES:
        ref = parity.build_reference(case)
        out[case.timm_name] = ref, parity.save_timm_safetensors(ref, folder / f"{case}.safetensors")
    return out


test_parity_at_256_and_another_size = parity.parity_test(CASES)
# trainable weights = timm's parameters; BatchNorm moving statistics = timm's buffers
test_param_count_matches_timm = parity.param_count_test(NAMES)


def test_features_only_matches_timm_features_only(checkpoints):
    ref, path = checkpoints["mobilevit_xxs"]
    tf_ = timm.create_model("mobilevit_xxs", features_only=True).eval()
    # timm's FeatureListNet flattens `stages.N` into `stages_N`; the classifier has no place
    state = {k.replace("stages.", "stages_", 1): v for k, v in ref.state_dict().items()}
    tf_.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    images = parity.structured_images(2, 256, 256, seed=7)
    expected = parity.timm_forward(tf_, images)

    model = keras_vit.create_model(
        "mobilevit_xxs", weights=path, features_only=True, include_preprocessing=False
    )
    assert model.feature_strides == tuple(tf_.feature_info.reduction()) == (2, 4, 8, 16, 32)
    ours = model.predict_on_batch(parity.nchw_to_nhwc(images))
    assert len(ours) == len(expected) == 5
    for a, b in zip(ours, expected):
        assert a.shape == parity.nchw_to_nhwc(b).shape
        parity.assert_parity(a, parity.nchw_to_nhwc(b))

    # the same maps from a classifier's feature_model(), and from timm's own key layout
    classifier = keras_vit.create_model("mobilevit_xxs", weights=path, include_preprocessing=False)
    # the view is a plain keras.Model, `model` a MobileViT: their graphs fuse differently and
    # round differently, by up to ~3e-5 on these deep maps; both are within 1e-4 of timm above
    for a, b in zip(classifier.feature_model().predict_on_batch(parity.nchw_to_nhwc(images)), ours):
        np.testing.assert_allclose(a, b, atol=1e-4)
    features_path = parity.save_timm_safetensors(tf_, path.parent / "features.safetensors")
    again = keras_vit.create_model(
        "mobilevit_xxs", weights=features_path, features_only=True, include_preprocessing=False
    )
    np.testing.assert_array_equal(again.predict_on_batch(parity.nchw_to_nhwc(images))[-1], ours[-1])


def test_preprocessing_pooled_features_and_new_head(checkpoints):
    ref, path = checkpoints["mobilevit_xxs"]
    pixels = parity.structured_pixels(2, 64, 64)
    nchw = np.ascontiguousarray((pixels / 255.0).transpose(0, 3, 1, 2))  # mean 0, std 1
    model = keras_vit.create_model("mobilevit_xxs", weights=path, image_size=64)
    parity.assert_parity(model.predict_on_batch(pixels), parity.timm_forward(ref, nchw))

    features = keras_vit.create_model("mobilevit_xxs", weights=path, image_size=64, num_classes=0)
    with torch.no_grad():
        pooled = ref.forward_head(ref.forward_features(torch.from_numpy(nchw)), pre_logits=True)
    assert features.output_shape == (None, 320)
    parity.assert_parity(features.predict_on_batch(pixels), pooled.numpy())

    seven = keras_vit.create_model("mobilevit_xxs", weights=path, image_size=64, num_classes=7)
    fc = seven.get_layer("head").fc
    expected = features.predict_on_batch(pixels) @ fc.kernel.numpy() + fc.bias.numpy()
    np.testing.assert_allclose(seven.predict_on_batch(pixels), expected, atol=1e-4)


def test_unfold_matches_timm_and_fold_inverts_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 10, 5)).astype(np.float32)  # (B, H, W, C)
    patches = keras.ops.convert_to_numpy(unfold_patches(x, 2))
    assert patches.shape == (2 * 4, 3 * 5, 5)  # (B * P, N, C)
    # timm's MobileVitBlock unfold, verbatim, on the NCHW tensor
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    b, c, h, w = t.shape
    t = t.reshape(b * c * 3, 2, 5, 2).transpose(1, 2)
    t = t.reshape(b, c, 15, 4).transpose(1, 3).reshape(b * 4, 15, -1)
    np.testing.assert_array_equal(patches, t.numpy())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fold_patches(patches, 2, 6, 10)), x)
    rect = keras.ops.convert_to_numpy(unfold_patches(x, (3, 5)))  # non-square patches
    assert rect.shape == (2 * 15, 2 * 2, 5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fold_patches(rect, (3, 5), 6, 10)), x)
    with pytest.raises(ValueError, match=r"\(6, 10\)"):
        unfold_patches(x, 4)


def test_keras_round_trip(tmp_path):
    model = keras_vit.create_model(
        "mobilevit_xxs",
        image_size=(64, 96),
        num_classes=7,
        se_ratio=0.25,
        drop_rate=0.1,
        drop_path_rate=0.1,
    )
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    expected = model.predict_on_batch(images)
    path = tmp_path / "mobilevit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is MobileViT
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict_on_batch(images), expected)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'token'"):
        keras_vit.create_model("mobilevit_xxs", global_pool="token")
    with pytest.raises(ValueError, match=r"`depths` needs 3 entries"):
        MobileViT(channels=(16, 24, 48))
    with pytest.raises(ValueError, match="-1"):
        keras_vit.create_model("mobilevit_xxs", num_classes=-1)


def test_xla_and_graph_give_the_same_outputs():
    """MobileViT compiles under XLA (its depthwise convs as shifted products) and runs on TF's
    graph (the float32 CPU default, test_compile_defaults.py) with the same outputs."""
    model = keras_vit.create_model("mobilevit_xxs", image_size=64, transformer_depths=(1, 1, 1))
    images = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    model.compile(jit_compile=True)
    with_xla = model.predict_on_batch(images)
    model.compile(jit_compile=False)
    assert model.jit_compile is False
    np.testing.assert_allclose(model.predict_on_batch(images), with_xla, atol=1e-5)
