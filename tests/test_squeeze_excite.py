"""SqueezeExcite: identical to timm's `SqueezeExcite` given the same weights, timm's rounding of
the reduced width, the SE option of the inverted residual, and a `.keras` round trip."""

from functools import partial

import keras
import numpy as np
import pytest
from helpers import assert_parity, nchw_to_nhwc, randomize_timm_model, structured_images

from keras_vit.layers import InvertedResidual, SqueezeExcite
from keras_vit.loading import load_state_dict

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")
from timm.layers import SqueezeExcite as TimmSqueezeExcite  # noqa: E402


def _wrap(layer, shape):
    """A functional model holding `layer`, so its weights get timm keys `<layer.name>.*`."""
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def _torch_forward(module, x_nchw):
    with torch.no_grad():
        return nchw_to_nhwc(module(torch.from_numpy(x_nchw)).numpy())


@pytest.mark.parametrize(
    "channels, kwargs, act",
    [
        (64, dict(rd_ratio=1 / 16), "relu"),
        (96, dict(rd_ratio=0.25), "silu"),
        (40, dict(rd_channels=12), "relu"),  # a count that is not a multiple of 8
    ],
)
def test_parity_with_timm_squeeze_excite(channels, kwargs, act):
    act_layer = {"relu": torch.nn.ReLU, "silu": torch.nn.SiLU}[act]
    ref = TimmSqueezeExcite(channels, act_layer=act_layer, **kwargs).eval()
    randomize_timm_model(ref, seed=channels)
    x = structured_images(2, 9, 7, seed=1, channels=channels)
    layer = SqueezeExcite(activation=act, name="se", **kwargs)
    model = _wrap(layer, (9, 7, channels))
    load_state_dict(model, {f"se.{k}": v.numpy() for k, v in ref.state_dict().items()})
    assert layer.fc1.filters == ref.fc1.out_channels
    expected = _torch_forward(ref, x)
    ours = model.predict_on_batch(nchw_to_nhwc(x))
    diff = assert_parity(ours, expected, atol=1e-5)
    print(f"SE {channels} {kwargs} {act}: max |diff| {diff:.3g}")


@pytest.mark.parametrize(
    "channels, ratio", [(64, 1 / 16), (24, 1 / 16), (100, 0.25), (17, 1 / 3), (640, 1 / 8)]
)
def test_reduced_width_follows_timm_rounding(channels, ratio):
    expected = TimmSqueezeExcite(channels, rd_ratio=ratio).fc1.out_channels
    assert SqueezeExcite(rd_ratio=ratio).reduced_channels(channels) == expected
    assert SqueezeExcite(rd_ratio=ratio, rd_channels=5).reduced_channels(channels) == 5


def test_inverted_residual_with_se_matches_timm_bottleneck():
    """`se_ratio` puts timm's SE (ReLU inside) after the depthwise conv, named `attn`."""
    from timm.layers import ConvNormAct, SEModule
    from timm.models.byobnet import BottleneckBlock, LayerFn

    layers = LayerFn(
        conv_norm_act=partial(ConvNormAct, act_layer=torch.nn.SiLU),
        act=torch.nn.SiLU,
        attn=partial(SEModule, rd_ratio=0.25),
    )
    ref = BottleneckBlock(
        32, 32, bottle_ratio=4.0, group_size=1, downsample="", bottle_in=True,
        linear_out=True, layers=layers,
    ).eval()  # fmt: skip
    randomize_timm_model(ref, seed=4)
    block = InvertedResidual(32, expansion=4.0, se_ratio=0.25, name="block")
    model = _wrap(block, (12, 12, 32))
    load_state_dict(model, {f"block.{k}": v.numpy() for k, v in ref.state_dict().items()})
    assert block.has_residual
    x = structured_images(2, 12, 12, seed=2, channels=32)
    assert_parity(model.predict_on_batch(nchw_to_nhwc(x)), _torch_forward(ref, x))


def test_cnn_with_squeeze_excite_keras_round_trip(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu")(inputs)
    x = SqueezeExcite(rd_channels=6, activation="silu", gate="hard_sigmoid")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = SqueezeExcite(rd_ratio=0.25)(x)
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).standard_normal((3, 16, 16, 3)).astype(np.float32)
    expected = model.predict_on_batch(images)
    path = tmp_path / "cnn_se.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    se = [layer for layer in loaded.layers if isinstance(layer, SqueezeExcite)]
    assert [s.get_config()["rd_channels"] for s in se] == [6, None]
    assert se[0].gate == "hard_sigmoid" and se[1].fc1.filters == 8
    np.testing.assert_array_equal(loaded.predict_on_batch(images), expected)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="-0.5"):
        SqueezeExcite(rd_ratio=-0.5)
    with pytest.raises(ValueError, match="'tanh'"):
        SqueezeExcite(gate="tanh")
    with pytest.raises(ValueError, match="rd_channels"):
        SqueezeExcite(rd_channels=0)
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        SqueezeExcite().build((2, 8))
