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


# --- one load path: a converted `.weights.h5` fine-tunes exactly like its source file ---
FINE_TUNE_CASES = [
    ("vit_tiny_patch16_224", dict(depth=2), 384),
    ("deit_tiny_distilled_patch16_224", dict(depth=2), 384),
    ("mobilevit_xxs", {}, 320),
]


def _source_files(name, kw, tmp_path):
    """The same weights (random, every tensor perturbed) as timm `.safetensors` and as the
    `.weights.h5` that `model.save_weights` (`keras-vit convert`) writes."""
    model = keras_vit.create_model(name, **kw)
    rng = np.random.default_rng(0)
    state = {
        k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
        for k, v in keras_to_timm_state_dict(model).items()
    }
    safetensors = tmp_path / "w.safetensors"
    save_file(state, str(safetensors))
    keras_vit.load_weights(model, safetensors)
    h5 = tmp_path / "w.weights.h5"
    model.save_weights(h5)
    return safetensors, h5


@pytest.mark.parametrize("name,kw,size", FINE_TUNE_CASES)
def test_weights_h5_fine_tunes_at_new_classes_and_size_like_its_source(name, kw, size, tmp_path):
    sources = _source_files(name, kw, tmp_path)
    x = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    outputs, weights = [], []
    for path in sources:
        keras.utils.set_random_seed(0)  # the same fresh head in both
        model = keras_vit.create_model(name, weights=path, num_classes=10, image_size=size, **kw)
        assert model.output_shape == (None, 10)
        outputs.append(model.predict_on_batch(x))
        weights.append(_snapshot(model))
    diff = float(np.max(np.abs(outputs[0] - outputs[1])))
    assert diff <= 1e-6, f"{name}: .weights.h5 vs .safetensors max |diff| {diff:.3g}"
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
    if "pos_embed" in keras_to_timm_state_dict(model):  # resampled to the new grid
        grid = (size // 16) ** 2
        assert model.get_layer("pos_embed").embedding.shape[1] == model.num_prefix_tokens + grid


def test_weights_h5_of_another_architecture_names_the_tensor_and_changes_nothing(tmp_path):
    _, h5 = _source_files("deit_tiny_distilled_patch16_224", dict(depth=1), tmp_path)
    model = keras_vit.create_model("deit_tiny_patch16_224", depth=1)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"pos_embed of shape \(1, 198, 192\).*1 prefix token"):
        keras_vit.load_weights(model, h5)
    assert _unchanged(model, before)
    deeper = keras_vit.create_model("deit_tiny_distilled_patch16_224", depth=2)
    with pytest.raises(ValueError, match=r"missing tensor 'blocks\.1\.norm1\.weight'"):
        keras_vit.load_weights(deeper, h5)
