"""SavedModel for TF Serving: both signatures answer, in a process where keras and keras_vit
cannot be imported, within 1e-4 of the Keras model (ViT and distilled DeiT, batch 1 and 7;
the bytes signature against the model on timm's eval pixels of the same PNGs); bad bytes fail
the request, not the process; `saved_model_cli show --all` lists both signatures; a given
`transform` replaces the checkpoint's."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from export_fixtures import (
    assert_discriminative,
    randomize_keras_model,
    timm_eval_pixels,
    timm_eval_steps,
    uint8_images,
)
from helpers import WITHOUT_KERAS_PRELUDE, subprocess_env
from PIL import Image

import keras_vit
from keras_vit.data.transform import EvalTransform
from keras_vit.export import export_saved_model, resolve_class_names

ATOL = 1e-4
SIZE = 48  # 3x3 patches of 16
MODELS = ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"]

# Runs in a fresh interpreter without keras (helpers.WITHOUT_KERAS_PRELUDE), as on a TF
# Serving host: both signatures are called and the answers written to an .npz.
SERVE_SCRIPT = WITHOUT_KERAS_PRELUDE + textwrap.dedent(
    """
    import json
    import numpy as np

    job = json.load(open(sys.argv[1]))
    results, report = {}, {}
    for name, export in job["exports"].items():
        loaded = tf.saved_model.load(export)
        pixels_fn = loaded.signatures["serving_default"]
        bytes_fn = loaded.signatures["serve_image_bytes"]
        images = np.load(job["images"])["images"].astype(np.float32)
        pngs = [open(p, "rb").read() for p in job["pngs"]]
        for batch in (1, 7):
            out = pixels_fn(images=tf.constant(images[:batch]))
            for key, value in out.items():
                results[f"{name}/pixels{batch}/{key}"] = value.numpy()
            out = bytes_fn(image_bytes=tf.constant(pngs[:batch]))
            for key, value in out.items():
                results[f"{name}/bytes{batch}/{key}"] = value.numpy()
        errors = []
        for bad in (b"", b"this is plain text, not an image"):
            try:
                bytes_fn(image_bytes=tf.constant([bad]))
                errors.append("no error")
            except tf.errors.InvalidArgumentError:
                errors.append("InvalidArgumentError")
        # the process survived: a good request still gets its answer
        after = bytes_fn(image_bytes=tf.constant(pngs[:1]))["logits"].numpy()
        results[f"{name}/after_bad/logits"] = after
        report[name] = errors
    report["keras_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "keras")
    for key, value in results.items():  # tf.string -> bytes objects -> unicode
        if value.dtype == object:
            results[key] = np.vectorize(lambda b: b.decode("utf-8"), otypes=[str])(value)
    np.savez(job["results"], **results)
    json.dump(report, open(job["report"], "w"))
    """
)


def _png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _write_images(tmp, images):
    """`images` (N, H, W, 3) uint8 into `tmp`: as images.npz (the pixels signature's input)
    and as one PNG each (the bytes signature's); the PNG paths."""
    np.savez(tmp / "images.npz", images=images)
    pngs = []
    for i, image in enumerate(images):
        pngs.append(str(tmp / f"{i}.png"))
        with open(pngs[-1], "wb") as f:
            f.write(_png(image))
    return pngs


def _serve_without_keras(tmp, exports, pngs):
    """SERVE_SCRIPT in a fresh interpreter on `exports` ({name: SavedModel dir}) with the
    images `_write_images` put in `tmp`: (results {"name/signature+batch/output": array},
    report {name: errors of the bad requests, "keras_loaded": [...]})."""
    job = dict(
        exports=exports,
        images=str(tmp / "images.npz"),
        pngs=pngs,
        results=str(tmp / "results.npz"),
        report=str(tmp / "report.json"),
    )
    (tmp / "job.json").write_text(json.dumps(job))
    (tmp / "serve.py").write_text(SERVE_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(tmp / "serve.py"), str(tmp / "job.json")],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(job["results"])), json.loads((tmp / "report.json").read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("savedmodel")
    images = uint8_images(7, SIZE, SIZE, seed=3)
    pngs = _write_images(tmp, images)
    refs, exports = {}, {}
    for name in MODELS:
        model = keras_vit.create_model(name, image_size=SIZE, depth=2)
        randomize_keras_model(model, seed=len(name))
        refs[name] = np.asarray(model.predict_on_batch(images.astype(np.float32)))
        # the bytes signature: the checkpoint's eval transform (crop_pct 0.9, bicubic), as timm
        steps, _ = timm_eval_steps(EvalTransform.from_model(model))
        timm_pixels = np.stack([timm_eval_pixels(open(p, "rb").read(), steps) for p in pngs])
        refs[name + "/bytes"] = np.asarray(model.predict_on_batch(timm_pixels.astype(np.float32)))
        exports[name] = str(tmp / name)
        export_saved_model(model, exports[name])
        refs[name + "/classes"] = resolve_class_names(model)
    results, report = _serve_without_keras(tmp, exports, pngs)
    return refs, results, report, exports


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("signature", ["pixels", "bytes"])
@pytest.mark.parametrize("batch", [1, 7])
def test_signature_matches_keras(served, name, signature, batch):
    refs, results, _, _ = served
    key = name if signature == "pixels" else name + "/bytes"
    ref = refs[key][:batch]
    assert_discriminative(refs[key])
    out = {
        k.split("/")[-1]: v
        for k, v in results.items()
        if k.startswith(f"{name}/{signature}{batch}/")
    }
    assert out["logits"].shape == ref.shape
    np.testing.assert_allclose(out["logits"], ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(out["probabilities"], _softmax(ref), atol=ATOL, rtol=0)
    # top-k: the k best classes of the reference, best first
    k = out["top_k_ids"].shape[1]
    assert k == 5
    ref_sorted = np.sort(_softmax(ref), axis=-1)[:, ::-1][:, :k]
    np.testing.assert_allclose(out["top_k_probabilities"], ref_sorted, atol=ATOL, rtol=0)
    picked = np.take_along_axis(_softmax(ref), out["top_k_ids"].astype(int), axis=-1)
    np.testing.assert_allclose(picked, ref_sorted, atol=ATOL, rtol=0)
    # 1000 classes: ImageNet's names travel in the graph
    names = refs[name + "/classes"]
    assert names is not None and len(names) == 1000
    expected = np.array([[names[i] for i in row] for row in out["top_k_ids"]])
    assert (out["top_k_class_names"].astype(str) == expected).all()


@pytest.mark.parametrize("name", MODELS)
def test_bad_bytes_fail_the_request_not_the_process(served, name):
    refs, results, report, _ = served
    assert report[name] == ["InvalidArgumentError", "InvalidArgumentError"]
    after = results[f"{name}/after_bad/logits"]
    np.testing.assert_allclose(after, refs[name + "/bytes"][:1], atol=ATOL)


def test_serving_process_never_imported_keras(served):
    assert served[2]["keras_loaded"] == []


def test_saved_model_cli_lists_both_signatures(served):
    exports = served[3]
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip("saved_model_cli is not installed beside this Python")
    proc = subprocess.run(
        [cli, "show", "--dir", exports[MODELS[1]], "--all"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    for signature in ("serving_default", "serve_image_bytes"):
        assert f"signature_def['{signature}']" in text
    for output in ("logits", "probabilities", "top_k_ids", "top_k_class_names"):
        assert f"outputs['{output}']" in text
    assert "shape: (-1, 48, 48, 3)" in text  # dynamic batch
    assert "shape: (-1)" in text  # the bytes input


def test_decoder_reads_every_format_as_timm(tmp_path):
    """JPEG, PNG, BMP and GIF (first frame) of another size come out at the input size with
    timm's eval pixels (decode as PIL, resize, crop; `test_image_transform` has the rest)."""
    import tensorflow as tf

    from keras_vit.export import decode_images

    image = uint8_images(2, 30, 40, seed=1)
    encoded = {}
    for fmt in ("PNG", "JPEG", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(image[0]).save(buf, format=fmt)
        encoded[fmt] = buf.getvalue()
    buf = io.BytesIO()
    frames = [Image.fromarray(image[0]), Image.fromarray(image[1])]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    encoded["GIF"] = buf.getvalue()
    transform = EvalTransform((16, 16), crop_pct=0.9, interpolation="bicubic")
    out = decode_images(tf.constant(list(encoded.values())), transform).numpy()
    assert out.shape == (4, 16, 16, 3) and out.dtype == np.float32
    steps, _ = timm_eval_steps(transform)
    for i, data in enumerate(encoded.values()):
        ref = timm_eval_pixels(data, steps).astype(np.float32)
        assert np.abs(out[i] - ref).max() <= 1.0, list(encoded)[i]


def test_transform_argument_replaces_the_checkpoints(tmp_path):
    """`transform=` is what `serve_image_bytes` applies: squash at crop_pct 1 passes a PNG of
    the input size through untouched (bytes == pixels), where the checkpoint's 0.9 crop
    does not; a transform of another size is refused, naming both sizes."""
    import tensorflow as tf

    model = keras_vit.create_model(MODELS[0], image_size=SIZE, depth=1)
    randomize_keras_model(model, seed=5)
    images = uint8_images(2, SIZE, SIZE, seed=6)
    pngs = tf.constant([_png(im) for im in images])
    expected = np.asarray(model.predict_on_batch(images.astype(np.float32)))
    logits = {}
    for label, transform in (
        ("given", EvalTransform((SIZE, SIZE), crop_pct=1.0, crop_mode="squash")),
        ("checkpoint", None),
    ):
        path = export_saved_model(model, str(tmp_path / label), transform=transform)
        fn = tf.saved_model.load(path).signatures["serve_image_bytes"]
        logits[label] = fn(image_bytes=pngs)["logits"].numpy()
    np.testing.assert_allclose(logits["given"], expected, atol=ATOL)
    assert np.abs(logits["checkpoint"] - expected).max() > 10 * ATOL
    with pytest.raises(ValueError, match=r"\(32, 32\).*\(48, 48\)"):
        export_saved_model(model, str(tmp_path / "bad"), transform=EvalTransform((32, 32)))


# --- end to end: a file's bytes -> SavedModel == timm's pipeline (PIL + create_transform) ----
CHECKPOINTS = [
    # (checkpoint, constructor overrides for CI: reduced depth, preprocessing from the tag)
    ("deit_small_patch16_224.fb_in1k", {"depth": 2}),  # ImageNet mean/std, 0.875, bicubic
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", {"depth": 2}),  # mean = std = 0.5, 0.9
    ("mobilevit_s.cvnets_in1k", {}),  # no normalisation, 256 px, 0.9
]
E2E_ATOL = 0.03  # the acceptance bound; +-1 pixel level moves random-weight logits <= 0.015


def _e2e_files():
    """Files a user would send: JPEG 4:2:0 / 4:4:4, PNG RGBA and palette, BMP; portrait,
    landscape, smaller and larger than the input."""
    files = []
    for i, (h, w, fmt, kw) in enumerate(
        [
            (375, 500, "JPEG", dict(quality=90)),
            (640, 427, "JPEG", dict(quality=75, subsampling=0)),
            (150, 120, "PNG", {}),
            (900, 1200, "JPEG", dict(quality=85)),
            (240, 320, "BMP", {}),
            (333, 256, "PNG-P", {}),
        ]
    ):
        image = Image.fromarray(uint8_images(1, h, w, seed=40 + i)[0])
        if fmt == "PNG" and i == 2:
            image.putalpha(Image.fromarray(uint8_images(1, h, w, seed=60)[0][..., 0]))
        if fmt == "PNG-P":
            image, fmt = image.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kw)
        files.append(buf.getvalue())
    return files


def _end_to_end(tmp_path, checkpoint, overrides):
    """max |logits(SavedModel on bytes) - logits(timm on PIL)|, and the two arg-maxes."""
    import tensorflow as tf
    import timm
    import torch
    from helpers import randomize_timm_model, save_timm_safetensors

    ref_model = timm.create_model(checkpoint, pretrained=False, **overrides).eval()
    randomize_timm_model(ref_model, seed=11)
    weights = save_timm_safetensors(ref_model, tmp_path / "ckpt.safetensors")
    model = keras_vit.create_model(checkpoint, weights=str(weights), **overrides)
    export = export_saved_model(model, str(tmp_path / "export"))
    files = _e2e_files()
    _, timm_transform = timm_eval_steps(timm_model=ref_model)  # resolve_data_config({}, m)
    batch = []
    for data in files:
        with Image.open(io.BytesIO(data)) as im:
            batch.append(timm_transform(im.convert("RGB")))
    with torch.no_grad():
        ref = ref_model(torch.stack(batch)).numpy()
    served = tf.saved_model.load(export).signatures["serve_image_bytes"]
    out = served(image_bytes=tf.constant(files))["logits"].numpy()
    # the images must be told apart by more than the tolerance, or agreement proves nothing
    spread = float(np.abs(ref[:, None] - ref[None]).max())
    assert spread > 3 * E2E_ATOL, f"random-weight logits barely depend on the image ({spread})"
    print(f"{checkpoint}: logits spread over the images {spread:.3f}")
    return float(np.abs(out - ref).max()), out.argmax(-1), ref.argmax(-1)


@pytest.mark.parametrize("checkpoint,overrides", CHECKPOINTS, ids=[c for c, _ in CHECKPOINTS])
def test_image_bytes_equal_timm_pipeline(tmp_path, checkpoint, overrides):
    diff, ours, theirs = _end_to_end(tmp_path, checkpoint, overrides)
    print(f"{checkpoint}: max |logit diff| {diff:.2e}")
    assert diff <= E2E_ATOL, diff
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", [c for c, o in CHECKPOINTS if o])
def test_image_bytes_equal_timm_pipeline_full_size(tmp_path, checkpoint):
    diff, ours, theirs = _end_to_end(tmp_path, checkpoint, {})
    print(f"{checkpoint} (full size): max |logit diff| {diff:.2e}")
    assert diff <= E2E_ATOL, diff
    np.testing.assert_array_equal(ours, theirs)


# Reduced precision: bf16 (TF's oneDNN graph) and int8 (XLA) models export on the compile path
# their `predict` takes, and serve in the keras-free process with float32 logits equal to
# `predict_on_batch` on the same batch, bit for bit (int8 quantizes activations per batch: batch by batch).
PRECISIONS = {"bf16": dict(dtype="bfloat16"), "int8": {}}


@pytest.fixture(scope="module")
def served_reduced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("savedmodel_reduced")
    images = uint8_images(7, SIZE, SIZE, seed=4)
    pngs = _write_images(tmp, images)
    refs, exports = {}, {}
    for precision, kwargs in PRECISIONS.items():
        model = keras_vit.create_model(MODELS[0], image_size=SIZE, depth=2, **kwargs)
        randomize_keras_model(model, seed=11)
        if precision == "int8":
            model.quantize("int8")
        pixels = images.astype(np.float32)
        for batch in (1, 7):
            refs[f"{precision}/{batch}"] = np.asarray(model.predict_on_batch(pixels[:batch]))
        refs[f"{precision}/jit"] = model.predict_jit_compile
        exports[precision] = str(tmp / precision)
        export_saved_model(model, exports[precision])
    results, report = _serve_without_keras(tmp, exports, pngs)
    return refs, results, report


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_reduced_precision_serves_what_predict_gives(served_reduced, precision):
    refs, results, report = served_reduced
    assert report["keras_loaded"] == []
    assert refs[f"{precision}/jit"] is (precision == "int8")  # bf16: oneDNN graph on a CPU
    assert_discriminative(refs[f"{precision}/7"].astype(np.float32))
    for batch in (1, 7):
        ref = refs[f"{precision}/{batch}"]
        out = results[f"{precision}/pixels{batch}/logits"]
        assert out.dtype == np.float32 and ref.dtype == np.float32  # bf16: a float32 head
        # equal, not close: the export traces the graph predict runs (frozen kernels,
        # fusions), so a difference means a different program (as a norm left unfused was)
        np.testing.assert_array_equal(out, ref.astype(np.float32))
