"""`model.quantize("int8")` on a freshly created model of every family (an unbuilt DropPath
used to stop it), then `predict`, within a stated tolerance of float32, and a `.keras` round
trip of the quantized model; the same quantize-then-predict for every registered name at test
size (one block, two patches a side; MobileViT at 64 pixels, one transformer layer a stage)."""

import gc

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.convert.timm import keras_to_timm_state_dict

FAMILIES = [
    ("vit_tiny_patch16_224", dict(depth=2, image_size=32)),
    ("deit_tiny_distilled_patch16_224", dict(depth=2, image_size=32)),
    ("mobilevit_xxs", dict(image_size=64)),
]
# int8 weights (per output channel) and int8 activations (per tensor): logits keep a
# correlation of at least 0.99 with float32 and stay within 10% of their range
MIN_CORRELATION = 0.99
MAX_REL_DIFF = 0.10


def _fresh_model_with_spread_weights(name, kw):
    """A new model whose every tensor is moved off its init (tokens at 1e-6 and zero biases
    would make every image look alike), loaded through the normal path."""
    model = keras_vit.create_model(name, num_classes=10, **kw)
    rng = np.random.default_rng(0)
    state = {
        k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
        for k, v in keras_to_timm_state_dict(model).items()
    }
    fresh = keras_vit.create_model(name, num_classes=10, **kw)
    return keras_vit.load_weights(fresh, state)


def reduced_kwargs(name):
    """Constructor overrides that shrink registered `name` to test size."""
    spec = keras_vit.registry.get_spec(name)
    if spec.family.startswith("mobilevit"):
        return dict(image_size=64, transformer_depths=(1, 1, 1))
    return dict(depth=1, image_size=2 * spec.arch["patch_size"])


def _images(size, n=8, seed=1):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3))  # low-frequency images, distinguishable
    return np.repeat(np.repeat(coarse, size // 4, 1), size // 4, 2).astype(np.float32)


def _spread_in_place(name, kw):
    """A new model with 0.05 noise added to every variable, assigned directly (one model built
    instead of two: the every-name test is about quantization, not the loading path)."""
    model = keras_vit.create_model(name, num_classes=10, **kw)
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign((np.asarray(v) + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype))
    return model


def _quantize_and_compare(name, kw, jit_compile="auto", build=_fresh_model_with_spread_weights):
    """(model quantized after its float32 predict, images, int8 logits)."""
    model = build(name, kw)
    model.compile(jit_compile=jit_compile)
    x = _images(kw["image_size"])
    reference = model.predict_on_batch(x)
    assert np.ptp(reference) > 0.1, "test images give near-identical logits"

    model.quantize("int8")
    quantized = model.predict_on_batch(x)
    corr = float(np.corrcoef(quantized.ravel(), reference.ravel())[0, 1])
    rel = float(np.max(np.abs(quantized - reference)) / np.ptp(reference))
    print(f"{name}: int8 vs float32 correlation {corr:.5f}, max |diff| / range {rel:.4f}")
    assert corr >= MIN_CORRELATION and rel <= MAX_REL_DIFF, (corr, rel)
    assert not np.array_equal(quantized, reference)  # it really runs quantized
    return model, x, quantized


@pytest.mark.parametrize("name", keras_vit.list_models())
def test_every_registered_name_quantizes_int8(name):
    # TF's graph: the same int8 layers without 2 XLA compilations a name (the XLA path, the
    # default, is the round-trip test's below)
    _quantize_and_compare(name, reduced_kwargs(name), jit_compile=False, build=_spread_in_place)


def test_quantize_before_any_predict():
    name, kw = FAMILIES[0]
    model = keras_vit.create_model(name, **kw)
    model.quantize("int8")  # straight after creation
    assert gc.get_freeze_count() == 0  # quantize hands every object back to the collector
    assert model.jit_compile is (keras.backend.backend() in ("tensorflow", "jax"))
    assert np.all(np.isfinite(model.predict_on_batch(_images(kw["image_size"], 2))))


@pytest.mark.parametrize("name,kw", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_quantize_int8_then_predict_and_round_trip(name, kw, tmp_path):
    model, x, quantized = _quantize_and_compare(name, kw)

    path = tmp_path / "int8.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # rebuilt, then quantized again
    np.testing.assert_array_equal(loaded.predict_on_batch(x), quantized)
