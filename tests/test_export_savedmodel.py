"""SavedModel for TF Serving: both signatures answer, in a process where keras and keras_vit
cannot be imported, within 1e-4 of the Keras model (ViT and distilled DeiT, batch 1 and 7;
the bytes signature fed PNGs at the input size); bad bytes fail the request, not the process;
`saved_model_cli show --all` lists both signatures."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from export_fixtures import assert_discriminative, randomize_keras_model, uint8_images
from helpers import subprocess_env
from PIL import Image

import keras_vit
from keras_vit.export import export_saved_model, resolve_class_names

ATOL = 1e-4
SIZE = 48  # 3x3 patches of 16
MODELS = ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"]

# Runs in a fresh interpreter: a meta-path finder refuses keras* and keras_vit*, as on a TF
# Serving host, then both signatures are called and the answers written to an .npz.
SERVE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    import numpy as np

    class WithoutKeras(importlib.abc.MetaPathFinder):
        # wraps every finder: keras* and keras_vit* are not found, as if not installed

        def __init__(self, finders):
            self.finders = finders

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("keras", "keras_vit", "tf_keras"):
                return None
            for finder in self.finders:
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    return spec
            return None

    sys.meta_path[:] = [WithoutKeras(list(sys.meta_path))]
    try:
        import keras  # noqa: F401
        raise SystemExit("keras is still importable")
    except ModuleNotFoundError:
        pass
    import tensorflow as tf

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


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("savedmodel")
    images = uint8_images(7, SIZE, SIZE, seed=3)
    np.savez(tmp / "images.npz", images=images)
    pngs = []
    for i, image in enumerate(images):
        pngs.append(str(tmp / f"{i}.png"))
        with open(pngs[-1], "wb") as f:
            f.write(_png(image))
    refs, exports = {}, {}
    for name in MODELS:
        model = keras_vit.create_model(name, image_size=SIZE, depth=2)
        randomize_keras_model(model, seed=len(name))
        refs[name] = np.asarray(model.predict_on_batch(images.astype(np.float32)))
        exports[name] = str(tmp / name)
        export_saved_model(model, exports[name])
        refs[name + "/classes"] = resolve_class_names(model)
    job = dict(
        exports=exports,
        images=str(tmp / "images.npz"),
        pngs=pngs,
        results=str(tmp / "results.npz"),
        report=str(tmp / "report.json"),
    )
    (tmp / "job.json").write_text(json.dumps(job))
    (tmp / "serve.py").write_text(SERVE_SCRIPT)
    env = subprocess_env()
    proc = subprocess.run(
        [sys.executable, str(tmp / "serve.py"), str(tmp / "job.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(np.load(job["results"]))
    report = json.loads((tmp / "report.json").read_text())
    return refs, results, report, exports


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("signature", ["pixels", "bytes"])
@pytest.mark.parametrize("batch", [1, 7])
def test_signature_matches_keras(served, name, signature, batch):
    refs, results, _, _ = served
    ref = refs[name][:batch]
    assert_discriminative(refs[name])
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
    np.testing.assert_allclose(results[f"{name}/after_bad/logits"], refs[name][:1], atol=ATOL)


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


def test_decoder_reads_every_format_and_resizes(tmp_path):
    """JPEG, BMP and GIF (first frame) of another size come out at the input size; PNG at
    the input size comes out exact."""
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
    same = decode_images(tf.constant([encoded["PNG"]]), (30, 40)).numpy()
    np.testing.assert_array_equal(same[0], image[0].astype(np.float32))
    out = decode_images(tf.constant(list(encoded.values())), (16, 16)).numpy()
    assert out.shape == (4, 16, 16, 3)
    # each format decodes to (nearly) the same picture; GIF is the first frame, palettised
    ref = out[0]
    for i, tol in ((1, 12.0), (2, 1e-3), (3, 20.0)):
        assert np.abs(out[i] - ref).mean() < tol
