"""Bad names, sizes and checkpoints raise a clear ValueError and change nothing."""

import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

import keras_vit
from keras_vit.convert.timm import keras_to_timm_state_dict


@pytest.fixture()
def model_and_state(tmp_path):
    model = keras_vit.create_model("vit_tiny_patch16_224", depth=1, image_size=32, num_classes=5)
    return model, keras_to_timm_state_dict(model)


def _snapshot(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def _unchanged(model, before):
    return all(
        np.array_equal(a, keras.ops.convert_to_numpy(w)) for a, w in zip(before, model.weights)
    )


def test_unknown_name_lists_closest():
    with pytest.raises(ValueError, match="vit_base_patch16_224"):
        keras_vit.create_model("vit_bse_patch16_224")


def test_image_size_must_be_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        keras_vit.create_model("vit_tiny_patch16_224", image_size=100)


def test_round_trip_through_timm_layout(model_and_state, tmp_path):
    model, state = model_and_state
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    other = keras_vit.create_model(
        "vit_tiny_patch16_224", depth=1, image_size=32, num_classes=5, weights=path
    )
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (
            lambda s: s.update({"blocks.0.attn.qkv.weight": np.zeros((3, 3), np.float32)}),
            r"blocks\.0\.attn\.qkv\.weight.*\(3, 3\).*\(192, 576\)",
        ),
        (lambda s: s.pop("blocks.0.mlp.fc2.bias"), r"missing tensor 'blocks\.0\.mlp\.fc2\.bias'"),
        (lambda s: s.update({"extra.weight": np.zeros(3, np.float32)}), "unexpected tensor 'extra"),
        (lambda s: s["norm.weight"].__setitem__(4, np.nan), r"'norm\.weight' contains NaN"),
        (lambda s: s["head.bias"].__setitem__(0, np.inf), r"'head\.bias' contains NaN or Inf"),
    ],
)
def test_bad_checkpoint_raises_and_leaves_model_unchanged(model_and_state, corrupt, message):
    model, state = model_and_state
    state = {k: v.copy() + 1.0 for k, v in state.items()}  # differs from the model everywhere
    corrupt(state)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        keras_vit.load_weights(model, state)
    assert _unchanged(model, before)


# Files (truncated, another model's weights, pickles that would run code) in every format:
# tests/test_bad_checkpoints.py.
