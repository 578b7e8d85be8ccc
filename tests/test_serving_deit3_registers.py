"""DeiT III, a register ViT and DINOv2 (with registers) through the SavedModel and
`keras-vit predict`: both signatures within 1e-4 of the Keras model (the bytes one on timm's
evaluation pixels of the files; DINOv2 also headless, `features`), and predict's top-k
probabilities the model's own softmax on them. Small models (depth 1,
2x2 patch grids), every weight random."""

import numpy as np
import pytest
from export_fixtures import (
    assert_discriminative,
    randomize_keras_model,
    timm_eval_pixels,
    timm_eval_steps,
    uint8_images,
)
from PIL import Image

import keras_vit
from keras_vit.cli import main as cli_main
from keras_vit.data.transform import EvalTransform
from keras_vit.export import export_saved_model

ATOL = 1e-4
MODELS = {  # name: (input size, extra arguments)
    "deit3_small_patch16_224": (32, {}),
    "vit_little_patch16_reg4_gap_256": (32, {}),
    "vit_small_patch14_reg4_dinov2": (28, {}),
}


def _model(name, **kwargs):
    size, extra = MODELS[name]
    model = keras_vit.create_model(name, depth=1, image_size=size, **{**extra, **kwargs})
    return randomize_keras_model(model, seed=len(name))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _serve(model, path, images, pngs):
    """Export, reload with TensorFlow alone, and call both signatures."""
    import tensorflow as tf

    export_saved_model(model, path)
    loaded = tf.saved_model.load(str(path))
    signatures = (
        ("serving_default", dict(images=tf.constant(images))),
        ("serve_image_bytes", dict(image_bytes=tf.constant(pngs))),
    )
    return [
        {k: v.numpy() for k, v in loaded.signatures[sig](**inputs).items()}
        for sig, inputs in signatures
    ]


def _on_eval_pixels(model, encoded, transform):
    """The model on timm's evaluation pixels of the encoded files: what `serve_image_bytes`
    and `keras-vit predict` feed it (the checkpoint's resize and centre crop)."""
    steps, _ = timm_eval_steps(transform)
    pixels = np.stack([timm_eval_pixels(data, steps) for data in encoded])
    return np.asarray(model.predict_on_batch(pixels.astype(np.float32)))


def _pngs(images, tmp_path):
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.mark.parametrize("name", list(MODELS))
def test_saved_model_signatures_match_keras(name, tmp_path):
    model = _model(name, num_classes=10)
    size = MODELS[name][0]
    images = uint8_images(3, size, size, seed=4)
    paths = _pngs(images, tmp_path)
    data = [p.read_bytes() for p in paths]
    ref = np.asarray(model.predict_on_batch(images.astype(np.float32)))
    ref_bytes = _on_eval_pixels(model, data, EvalTransform.from_model(model))
    assert_discriminative(ref)
    pixels, encoded = _serve(model, tmp_path / "sm", images.astype(np.float32), data)
    for out, expected in ((pixels, ref), (encoded, ref_bytes)):
        np.testing.assert_allclose(out["logits"], expected, atol=ATOL, rtol=0)
        np.testing.assert_allclose(out["probabilities"], _softmax(expected), atol=ATOL, rtol=0)


def test_headless_dinov2_saved_model_serves_features(tmp_path):
    model = _model("vit_small_patch14_reg4_dinov2")  # num_classes=0, as published
    assert model.output_shape == (None, 384)
    images = uint8_images(2, 28, 28, seed=5)
    paths = _pngs(images, tmp_path)
    ref = np.asarray(model.predict_on_batch(images.astype(np.float32)))
    assert_discriminative(ref)
    outputs = _serve(
        model, tmp_path / "sm", images.astype(np.float32), [p.read_bytes() for p in paths]
    )
    for out in outputs:
        assert set(out) == {"features"}
        np.testing.assert_allclose(out["features"], ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_predict_top_k_is_the_models_softmax(name, tmp_path, capsys):
    model = _model(name, num_classes=10)
    size = MODELS[name][0]
    images = uint8_images(2, size, size, seed=6)
    paths = _pngs(images, tmp_path)
    model.save(tmp_path / "m.keras")  # the file keeps the checkpoint cfg: its tag's transform
    transform = EvalTransform.from_model(model)
    probs = _softmax(_on_eval_pixels(model, [p.read_bytes() for p in paths], transform))
    assert cli_main(["predict", *map(str, paths), "--weights", str(tmp_path / "m.keras")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * 6  # per image: its path and 5 ranked lines
    for i, path in enumerate(paths):
        assert lines[6 * i] == str(path)
        best = np.argsort(-probs[i])[:5]
        for rank in range(5):
            fields = lines[6 * i + 1 + rank].split()  # "1.  0.1234  class 7"
            assert int(fields[3]) == best[rank]
            assert abs(float(fields[1]) - probs[i, best[rank]]) < 1e-4
