"""Bad inputs raise a clear ValueError and change nothing.

Each case loads into an existing model (whose weights must be untouched afterwards), in every
format where the failure can happen: truncated files, another model's weights, a missing
tensor, NaN, a pickle that would run code (it must not run), an unknown tag.
"""

import pickle

import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

import keras_vit
from keras_vit.convert.big_vision import timm_to_npz
from keras_vit.convert.timm import keras_to_timm_state_dict

VIT = "vit_tiny_patch16_224"
KW = dict(depth=1, image_size=32, num_classes=5)


@pytest.fixture(scope="module")
def model():
    return keras_vit.create_model(VIT, **KW)


@pytest.fixture(scope="module")
def good_state(model):
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in keras_to_timm_state_dict(model).items()}  # fmt: skip


def _write(state, path):
    """Write a timm-layout state_dict in the format named by `path`'s extension."""
    path = str(path)
    if path.endswith(".safetensors"):
        save_file(state, path)
    elif path.endswith(".pth"):
        torch = pytest.importorskip("torch")  # only the .pth cases need torch
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    else:
        np.savez(path, **timm_to_npz(state, num_heads=3))
    return path


def _assert_refused(model, source, match):
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError, match=match):
        keras_vit.load_weights(model, source)
    after = [keras.ops.convert_to_numpy(w) for w in model.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "model was changed"


FORMATS = ["safetensors", "pth", "npz"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_good_file_loads_in_every_format(model, good_state, tmp_path, fmt):
    other = keras_vit.create_model(VIT, **KW)
    keras_vit.load_weights(other, _write(good_state, tmp_path / f"w.{fmt}"))
    np.testing.assert_array_equal(
        keras_to_timm_state_dict(other)["blocks.0.attn.qkv.weight"],
        good_state["blocks.0.attn.qkv.weight"],
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file(model, good_state, tmp_path, fmt):
    path = _write(good_state, tmp_path / f"w.{fmt}")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    _assert_refused(model, path, "Cannot read")


@pytest.mark.parametrize("fmt", FORMATS)
def test_another_models_weights(model, tmp_path, fmt):
    small = keras_vit.create_model("vit_small_patch16_224", depth=1, image_size=32, num_classes=5)
    path = _write(keras_to_timm_state_dict(small), tmp_path / f"w.{fmt}")
    _assert_refused(model, path, r"do not fit .*'patch_embed\.proj\.weight' has shape")


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_tensor(model, good_state, tmp_path, fmt):
    state = dict(good_state)
    missing = "blocks.0.mlp.fc2.bias" if fmt != "npz" else "blocks.0.norm2.weight"
    del state[missing]
    if fmt == "npz":  # the .npz writer needs every key: drop it from the written file instead
        arrays = timm_to_npz(good_state, num_heads=3)
        del arrays["Transformer/encoderblock_0/LayerNorm_2/scale"]
        path = str(tmp_path / "w.npz")
        np.savez(path, **arrays)
        _assert_refused(model, path, "LayerNorm_2/scale")
        return
    _assert_refused(model, _write(state, tmp_path / f"w.{fmt}"), f"missing tensor '{missing}'")


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_in_a_tensor(model, good_state, tmp_path, fmt):
    state = {k: v.copy() for k, v in good_state.items()}
    state["blocks.0.mlp.fc1.weight"][3, 4] = np.nan
    _assert_refused(model, _write(state, tmp_path / f"w.{fmt}"), "contains NaN or Inf")


class _Evil:
    """Unpickling this would call open(marker, 'w'): creating the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle", "plain_pkl"])
def test_pickle_that_would_run_code_is_refused(model, good_state, tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {"head.bias": _Evil(str(marker))}
    if container != "plain_pkl":  # torch's restricted unpickler reads .pth and .bin
        torch = pytest.importorskip("torch")
    if container == "torch_zip":
        path = tmp_path / "evil.pth"
        torch.save(payload, path)
    else:
        path = tmp_path / ("evil.bin" if container == "raw_pickle" else "evil.pkl")
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    # control: the payload is live; a plain unpickle of it does create a marker
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(str(control)))).close()
    assert control.exists() and not marker.exists()
    _assert_refused(model, path, "refused|not unpickle|Cannot read")
    assert not marker.exists(), "the pickle's code ran"


def test_unknown_tag_and_model_without_checkpoints():
    with pytest.raises(ValueError, match=r"Unknown pretrained tag 'nope'.*augreg_in21k_ft_in1k"):
        keras_vit.create_model(f"{VIT}.nope")
    with pytest.raises(ValueError, match="No pretrained checkpoint is registered"):
        keras_vit.create_model("vit_large_patch14_224", weights="pretrained", depth=1)
    with pytest.raises(ValueError, match="Unknown pretrained tag"):
        keras_vit.get_pretrained_cfg("deit_tiny_patch16_224.in21k")


def test_hf_directory_missing_a_tensor(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=192,
        num_hidden_layers=1,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=32,
        patch_size=16,
        num_labels=5,
    )
    hf = transformers.ViTForImageClassification(config)
    hf.save_pretrained(tmp_path / "hf")
    from safetensors.numpy import load_file

    state = load_file(tmp_path / "hf" / "model.safetensors")
    del state["vit.encoder.layer.0.attention.attention.value.bias"]
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    _assert_refused(model, tmp_path / "hf", "lacks the v bias")
