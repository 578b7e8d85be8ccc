"""ONNX export: ONNX Runtime within 1e-4 of Keras in float32 for ViT-Ti, DeiT-Ti distilled,
MobileViT-XXS and MobileViT v2 0.5 (registered names at test size, every weight randomised),
one input `images` and one output `logits` with a dynamic batch, and bad arguments refused
before anything is written."""

import numpy as np
import onnxruntime as ort  # the `test` extra has it: a missing one fails, never skips
import pytest
from export_fixtures import (
    EXPORT_MODELS,
    assert_discriminative,
    randomized_export_model,
    uint8_images,
)

from keras_vit.export_onnx import export_onnx

ATOL = 1e-4


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    built = {}
    for name in EXPORT_MODELS:
        model = randomized_export_model(name)
        built[name] = (model, export_onnx(model, tmp / f"{name}.onnx"))
    return built


@pytest.mark.parametrize("name", list(EXPORT_MODELS))
def test_onnxruntime_matches_keras_at_two_batch_sizes(exports, name):
    model, path = exports[name]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    size = model.inputs[0].shape[1]
    assert (inp.name, inp.shape) == ("images", ["batch", size, size, 3])
    assert (out.name, out.shape) == ("logits", ["batch", model.num_classes])
    for batch in (3, 1):  # the batch is dynamic
        images = uint8_images(batch, size, size, seed=batch).astype(np.float32)
        ref = np.asarray(model.predict_on_batch(images))
        if batch > 1:
            assert_discriminative(ref)
        (logits,) = session.run(None, {"images": images})
        assert logits.shape == ref.shape
        print(f"{name} batch {batch}: max |onnxruntime - keras| = {np.abs(logits - ref).max():.1e}")
        np.testing.assert_allclose(logits, ref, atol=ATOL, rtol=0)


def test_exact_gelu_has_no_erfc(exports):
    # TensorFlow's exact GELU is erfc-based and ONNX has no Erfc: the export rewrites it
    import onnx

    ops = {node.op_type for node in onnx.load(str(exports["vit_tiny_patch16_224"][1])).graph.node}
    assert "Erf" in ops and "Erfc" not in ops


def test_bad_arguments_write_nothing(exports, tmp_path):
    model, _ = exports["vit_tiny_patch16_224"]
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", opset=7)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(model, tmp_path / "missing" / "x.onnx")
    with pytest.raises(ValueError, match="folder"):
        export_onnx(model, tmp_path)
    assert list(tmp_path.iterdir()) == []
