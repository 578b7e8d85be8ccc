"""MobileViT v2 parity with timm: random weights (every parameter and buffer, GroupNorm affine
too), structured images, float32, max |logit diff| <= 1e-4.

CI: every width at reduced depth (one transformer layer per stage) at small sizes, all of
them but 96 not multiples of 32, so a stage's odd map takes the block's resize path
(bilinear, `align_corners=True`); `mobilevitv2_050` at full size at 256 and 224 (7 -> 8 in
the last stage). `make parity`: every width at full size, at 256 and at another size.
"""

import dataclasses
import functools

import keras
import numpy as np
import parity
import pytest
from parity import timm, torch

import keras_vit
from keras_vit.layers import LinearSelfAttention
from keras_vit.layers.mobilevitv2_blocks import resize_bilinear_align_corners
from keras_vit.models import MobileViTV2

MULTIPLIERS = {
    "mobilevitv2_050": 0.5,
    "mobilevitv2_075": 0.75,
    "mobilevitv2_100": 1.0,
    "mobilevitv2_125": 1.25,
    "mobilevitv2_150": 1.5,
    "mobilevitv2_175": 1.75,
    "mobilevitv2_200": 2.0,
}
NAMES = list(MULTIPLIERS)
REDUCED = dict(transformer_depths=(1, 1, 1))


def _timm_reduced(name, transformer_depths):
    """timm's ByobNet for `name` with `transformer_depths[i]` layers in its i-th MobileViT v2
    block (timm registers no name for it: the cfg is modified)."""
    from timm.models.byobnet import ByobNet
    from timm.models.mobilevit import _mobilevitv2_cfg

    depths = iter(transformer_depths)

    def shrink(block):
        if isinstance(block, tuple):
            return tuple(shrink(b) for b in block)
        if block.type != "mobilevit2":
            return block
        kwargs = {**block.block_kwargs, "transformer_depth": next(depths)}
        return dataclasses.replace(block, block_kwargs=kwargs)

    cfg = _mobilevitv2_cfg(MULTIPLIERS[name])
    blocks = tuple(shrink(b) for b in cfg.blocks)
    assert next(depths, None) is None, f"{transformer_depths} for a 3-block {name}"
    return ByobNet(dataclasses.replace(cfg, blocks=blocks))


def _reduced(name, size):
    builder = functools.partial(_timm_reduced, name)
    return parity.ParityCase(
        name, REDUCED, image_sizes=(size,), seed=len(name) + size, timm_builder=builder
    )


# CI: every width at reduced depth at a small size
# (no size below 96 but 72/80: the last stage keeps >= 2x2 patches, so its softmax has work)
REDUCED_CASES = [
    _reduced("mobilevitv2_050", 96),
    _reduced("mobilevitv2_075", 80),
    _reduced("mobilevitv2_100", 112),
    _reduced("mobilevitv2_125", 72),
    _reduced("mobilevitv2_150", 96),
    _reduced("mobilevitv2_175", 80),
    _reduced("mobilevitv2_200", 96),
]
# full size: native 256 and another (224: a 7x7 last stage; 384: the in22k-ft 384 checkpoints)
FULL_CASES = [
    parity.ParityCase(name, image_sizes=sizes, seed=NAMES.index(name))
    for name, sizes in [
        ("mobilevitv2_050", (256, 224)),
        ("mobilevitv2_075", (256, 192)),
        ("mobilevitv2_100", (256, 224)),
        ("mobilevitv2_125", (256, 160)),
        ("mobilevitv2_150", (256, 384)),
        ("mobilevitv2_175", (256, 384)),
        ("mobilevitv2_200", (256, 384, 224)),
    ]
]


def test_registry_has_every_timm_mobilevitv2():
    assert keras_vit.list_models("mobilevitv2_*") == sorted(timm.list_models("mobilevitv2_*"))
    assert keras_vit.list_models("mobilevitv2_*") == NAMES
    assert keras_vit.registry.get_spec("mobilevitv2_100").family == "mobilevitv2"


def test_reduced_reference_has_the_reduced_depths():
    ref = _timm_reduced("mobilevitv2_050", (1, 2, 1))
    layers = [len(ref.stages[i][1].transformer) for i in (2, 3, 4)]
    assert layers == [1, 2, 1]


test_parity_reduced_depth = parity.parity_test(REDUCED_CASES)
test_parity_full_size = parity.parity_test(FULL_CASES[:1])
test_parity_full_size_slow = parity.parity_test(FULL_CASES[1:], slow=True)
# trainable weights = timm's parameters; BatchNorm moving statistics = timm's buffers
test_param_count_matches_timm = parity.param_count_test(NAMES)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A randomised full-size timm mobilevitv2_050 and its safetensors file."""
    ref = parity.build_reference(parity.ParityCase("mobilevitv2_050", seed=21))
    path = tmp_path_factory.mktemp("mobilevitv2") / "mobilevitv2_050.safetensors"
    return ref, parity.save_timm_safetensors(ref, path)


def test_features_only_matches_timm_features_only(small):
    ref, path = small
    tf_ = timm.create_model("mobilevitv2_050", features_only=True).eval()
    # timm's FeatureListNet flattens `stages.N` into `stages_N`; the classifier has no place
    state = {k.replace("stages.", "stages_", 1): v for k, v in ref.state_dict().items()}
    tf_.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    images = parity.structured_images(2, 224, 224, seed=7)  # 224: the last map is resized 7 -> 8
    expected = parity.timm_forward(tf_, images)

    model = keras_vit.create_model(
        "mobilevitv2_050",
        weights=path,
        image_size=224,
        features_only=True,
        include_preprocessing=False,
    )
    assert model.feature_strides == tuple(tf_.feature_info.reduction()) == (2, 4, 8, 16, 32)
    ours = model.predict_on_batch(parity.nchw_to_nhwc(images))
    assert [a.shape[1:] for a in ours] == [
        (112, 112, 32), (56, 56, 64), (28, 28, 128), (14, 14, 192), (8, 8, 256)
    ]  # fmt: skip
    for a, b in zip(ours, expected, strict=True):
        parity.assert_parity(a, parity.nchw_to_nhwc(b), discriminative=False)
    # the same maps from a classifier's feature_model() and from timm's own key layout
    classifier = keras_vit.create_model(
        "mobilevitv2_050", weights=path, image_size=224, include_preprocessing=False
    )
    for a, b in zip(classifier.feature_model().predict_on_batch(parity.nchw_to_nhwc(images)), ours):
        np.testing.assert_allclose(a, b, atol=1e-4)  # graph mode vs XLA: rounding only
    features_path = parity.save_timm_safetensors(tf_, path.parent / "features.safetensors")
    again = keras_vit.create_model(
        "mobilevitv2_050",
        weights=features_path,
        image_size=224,
        features_only=True,
        include_preprocessing=False,
    )
    np.testing.assert_array_equal(again.predict_on_batch(parity.nchw_to_nhwc(images))[-1], ours[-1])


def test_preprocessing_pooled_features_and_pretrained_cfg(small):
    ref, path = small
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
    nchw = np.ascontiguousarray((pixels / 255.0).transpose(0, 3, 1, 2))  # mean 0, std 1
    model = keras_vit.create_model("mobilevitv2_050.cvnets_in1k", weights=path, image_size=96)
    parity.assert_parity(model.predict_on_batch(pixels), parity.timm_forward(ref, nchw))
    cfg = model.pretrained_cfg
    assert (cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std) == (
        0.888, "bicubic", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    )  # fmt: skip

    features = keras_vit.create_model("mobilevitv2_050", weights=path, image_size=96, num_classes=0)
    with torch.no_grad():
        pooled = ref.forward_head(ref.forward_features(torch.from_numpy(nchw)), pre_logits=True)
    assert features.output_shape == (None, 256)
    parity.assert_parity(features.predict_on_batch(pixels), pooled.numpy())

    # a fully convolutional checkpoint brings its size: the 384 tags build 384 models
    big = keras_vit.registry.get_spec("mobilevitv2_150")
    assert big.arch["image_size"] == 256
    m384 = keras_vit.create_model("mobilevitv2_150.cvnets_in22k_ft_in1k_384", **REDUCED)
    assert m384.input_shape == (None, 384, 384, 3)
    assert m384.pretrained_cfg.crop_pct == 1.0
    m = keras_vit.create_model("mobilevitv2_150.cvnets_in22k_ft_in1k_384", image_size=64)
    assert m.input_shape == (None, 64, 64, 3)  # an explicit size wins


@pytest.mark.parametrize("patches", [10, 1])  # 1: a 64 px image's last stage
def test_linear_attention_matches_timm(patches):
    from helpers import randomize_timm_model
    from timm.models.mobilevit import LinearSelfAttention as TimmAttention

    ref = randomize_timm_model(TimmAttention(16).eval(), seed=3)
    x = np.random.default_rng(0).standard_normal((2, 16, 4, patches)).astype(np.float32)
    layer = LinearSelfAttention()  # x: (B, C, P, N) for timm, (B, P, N, C) for us
    layer.build((None, 4, patches, 16))
    layer.qkv_proj.kernel.assign(ref.qkv_proj.weight.detach().numpy().transpose(2, 3, 1, 0))
    layer.qkv_proj.bias.assign(ref.qkv_proj.bias.detach().numpy())
    layer.out_proj.kernel.assign(ref.out_proj.weight.detach().numpy().transpose(2, 3, 1, 0))
    layer.out_proj.bias.assign(ref.out_proj.bias.detach().numpy())
    ours = keras.ops.convert_to_numpy(layer(x.transpose(0, 2, 3, 1)))  # (B, P, N, C)
    np.testing.assert_allclose(ours, parity.timm_forward(ref, x).transpose(0, 2, 3, 1), atol=1e-5)


@pytest.mark.parametrize("size_in,size_out", [((7, 5), (8, 6)), ((3, 1), (4, 2)), ((5, 6), (6, 6))])
def test_align_corners_resize_matches_torch(size_in, size_out):
    x = np.random.default_rng(1).standard_normal((2, 3, *size_in)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=size_out, mode="bilinear", align_corners=True
    ).numpy()
    ours = keras.ops.convert_to_numpy(
        resize_bilinear_align_corners(parity.nchw_to_nhwc(x), size_out)
    )
    np.testing.assert_allclose(ours, parity.nchw_to_nhwc(expected), atol=1e-6)


def test_keras_round_trip_and_saved_model(tmp_path):
    import tensorflow as tf

    from keras_vit.export import export_saved_model

    model = keras_vit.create_model(
        "mobilevitv2_075",
        image_size=(64, 80),
        num_classes=7,
        drop_rate=0.1,
        drop_path_rate=0.1,
        **REDUCED,
    )
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 80, 3)).astype(np.float32)
    expected = model.predict_on_batch(images)
    model.save(tmp_path / "mobilevitv2.keras")
    loaded = keras.saving.load_model(tmp_path / "mobilevitv2.keras")
    assert type(loaded) is MobileViTV2
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict_on_batch(images), expected)

    export_saved_model(model, tmp_path / "saved")
    served = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=images)["logits"].numpy(), expected, atol=1e-4)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'token'"):
        keras_vit.create_model("mobilevitv2_050", global_pool="token")
    with pytest.raises(ValueError, match=r"`transformer_depths` needs 3 entries"):
        MobileViTV2(transformer_depths=(1, 1))
    with pytest.raises(ValueError, match="-1"):
        keras_vit.create_model("mobilevitv2_050", num_classes=-1)
    with pytest.raises(ValueError, match="1.5"):
        keras_vit.create_model("mobilevitv2_050", drop_path_rate=1.5)
    model = keras_vit.create_model("mobilevitv2_050", image_size=96, **REDUCED)
    with pytest.raises(ValueError, match=r"\(None, 96, 96, 3\).*\(1, 64, 64, 3\)"):
        model.predict_on_batch(np.zeros((1, 64, 64, 3), np.float32))  # names both sizes
