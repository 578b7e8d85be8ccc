"""TFLite: builtin ops only (the converter runs with TFLITE_BUILTINS alone and the file holds
no Flex/custom op), interpreter within 1e-4 of Keras in float32 for ViT-Ti, DeiT-Ti distilled,
MobileViT-XXS and MobileViT v2 0.5 (registered names, reduced depth to stay fast), and the
quantised variants smaller and still close."""

import os

import numpy as np
import pytest
from export_fixtures import assert_discriminative, randomize_keras_model, uint8_images

import keras_vit
from keras_vit.export import export_tflite, select_ops, tflite_op_names

ATOL = 1e-4
MODELS = {
    "vit_tiny_patch16_224": dict(image_size=32, depth=2),
    "deit_tiny_distilled_patch16_224": dict(image_size=32, depth=2),
    "mobilevit_xxs": dict(image_size=64, transformer_depths=(1, 1, 1)),
    # 80: stages 3 and 4 (5x5, 3x3) take the align-corners resize, as gathers
    "mobilevitv2_050": dict(image_size=80, transformer_depths=(1, 1, 1)),
}


def _interpreter(path):
    import tensorflow as tf

    return tf.lite.Interpreter(model_path=str(path)).get_signature_runner("serving_default")


@pytest.fixture(scope="module")
def models():
    built = {}
    for name, kwargs in MODELS.items():
        model = keras_vit.create_model(name, **kwargs)
        built[name] = randomize_keras_model(model, seed=len(name))
    return built


@pytest.fixture(scope="module")
def float_exports(models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tflite")
    paths = {}
    for name, model in models.items():
        paths[name] = export_tflite(model, tmp / f"{name}.tflite")
    return paths


@pytest.mark.parametrize("name", list(MODELS))
def test_float32_matches_keras(models, float_exports, name):
    model = models[name]
    size = model.inputs[0].shape[1]
    images = uint8_images(2, size, size, seed=5).astype(np.float32)
    ref = np.asarray(model.predict_on_batch(images))
    assert_discriminative(ref)
    run = _interpreter(float_exports[name])
    for i in range(2):  # the flatbuffer has batch 1
        out = run(images=images[i : i + 1])
        np.testing.assert_allclose(out["logits"], ref[i : i + 1], atol=ATOL, rtol=0)
        e = np.exp(ref[i] - ref[i].max())
        np.testing.assert_allclose(out["probabilities"][0], e / e.sum(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_builtin_ops_only(float_exports, name):
    ops = tflite_op_names(float_exports[name])
    assert select_ops(float_exports[name]) == []
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    # what the models are made of, as TFLite builtins
    assert {"BATCH_MATMUL", "SOFTMAX", "CONV_2D"} <= set(ops)
    if not name.startswith("mobilevit"):
        assert "GELU" in ops
    if name.startswith("mobilevitv2"):  # separable attention's split, the resize's gathers
        assert {"SPLIT_V", "GATHER"} <= set(
            ops
        )  # exact GELU stays one builtin op, no Erf from SELECT_TF_OPS


@pytest.mark.parametrize("quantization,max_ratio", [("float16", 0.6), ("dynamic", 0.4)])
def test_quantized_is_smaller_and_close(models, float_exports, tmp_path, quantization, max_ratio):
    name = "vit_tiny_patch16_224"
    model = models[name]
    path = export_tflite(model, tmp_path / "q.tflite", quantization=quantization)
    assert os.path.getsize(path) < max_ratio * os.path.getsize(float_exports[name])
    assert select_ops(path) == []
    images = uint8_images(1, 32, 32, seed=6).astype(np.float32)
    ref = np.asarray(model.predict_on_batch(images))
    out = _interpreter(path)(images=images)["logits"]
    scale = np.abs(ref).max()
    # weights rounded to float16 / int8: close relative to the logits, not bit-exact
    assert np.abs(out - ref).max() < (0.01 if quantization == "float16" else 0.1) * scale


def test_bad_quantization_is_rejected(models, tmp_path):
    with pytest.raises(ValueError, match="int8"):
        export_tflite(models["vit_tiny_patch16_224"], tmp_path / "x.tflite", quantization="int8")
    assert not (tmp_path / "x.tflite").exists()
