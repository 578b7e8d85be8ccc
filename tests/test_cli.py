"""`python -m keras_vit`: predict, export and attention on a small saved model; user mistakes
end with one line on stderr, exit code 2 and no traceback."""

import subprocess
import sys

import keras
import numpy as np
import pytest
from export_fixtures import randomize_keras_model, timm_eval_pixels, timm_eval_steps, uint8_images
from helpers import subprocess_env
from PIL import Image

import keras_vit
from keras_vit.export import serving_function


def _cli(*args):
    env = subprocess_env(keep_tf_log_level=False)  # the CLI silences TF's start-up itself
    return subprocess.run(
        [sys.executable, "-m", "keras_vit", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    model = keras_vit.create_model(
        "deit_tiny_distilled_patch16_224", image_size=32, depth=1, num_classes=10
    )
    randomize_keras_model(model, seed=7)
    model.save(tmp / "tiny.keras")
    images = uint8_images(2, 32, 32, seed=8)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp / f"img{i}.png")
        Image.fromarray(image).save(paths[-1])
    big = uint8_images(1, 50, 70, seed=9)[0]
    Image.fromarray(big).save(tmp / "big.jpg")
    (tmp / "notes.jpg").write_text("not an image")
    # predict applies timm's eval transform from the checkpoint config the .keras file keeps
    # (the model's tag's crop and interpolation, at its 32 px input)
    from keras_vit.data.transform import EvalTransform

    steps, _ = timm_eval_steps(EvalTransform.from_model(model))
    pixels = np.stack([timm_eval_pixels(open(p, "rb").read(), steps) for p in paths])
    probs = serving_function(model, 3)(pixels.astype(np.float32))
    return tmp, paths, {k: np.asarray(v) for k, v in probs.items()}


def _assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("keras-vit ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_commands():
    proc = _cli("--help")
    assert proc.returncode == 0
    for command in ("list", "predict", "export", "attention"):
        assert command in proc.stdout
    proc = _cli("predict", "--help")
    assert proc.returncode == 0 and "--top" in proc.stdout and "examples:" in proc.stdout


def test_predict_top_k_matches_the_model(files):
    tmp, paths, ref = files
    proc = _cli("predict", *paths, "--weights", tmp / "tiny.keras", "--top", 3)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    blocks = proc.stdout.strip().split("\n")
    assert len(blocks) == 2 * 4  # per image: its path and 3 ranked lines
    for i, path in enumerate(paths):
        assert blocks[4 * i] == str(path)
        for rank in range(3):
            fields = blocks[4 * i + 1 + rank].split()
            assert fields[0] == f"{rank + 1}."
            assert abs(float(fields[1]) - ref["top_k_probabilities"][i, rank]) < 1e-4
            assert int(fields[3]) == ref["top_k_ids"][i, rank]


def test_attention_writes_png_of_image_size(files):
    tmp, _, _ = files
    out = tmp / "att.png"
    proc = _cli("attention", tmp / "big.jpg", "--weights", tmp / "tiny.keras", "--output", out)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == (70, 50)
        assert np.asarray(picture).std() > 1  # a picture, not a blank


def test_export_tflite_and_savedmodel(files):
    tmp, _, _ = files
    proc = _cli("export", tmp / "tiny.tflite", "--weights", tmp / "tiny.keras")
    assert proc.returncode == 0, proc.stderr
    assert (tmp / "tiny.tflite").stat().st_size > 10_000
    proc = _cli("export", tmp / "sm", "--weights", tmp / "tiny.keras", "--top-k", 2)
    assert proc.returncode == 0, proc.stderr
    assert (tmp / "sm" / "saved_model.pb").exists()


def test_export_onnx_gives_the_models_logits(files):
    import onnxruntime as ort

    tmp, _, _ = files
    proc = _cli("export", tmp / "tiny.onnx", "--weights", tmp / "tiny.keras")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "(onnx)" in proc.stdout
    model = keras.saving.load_model(tmp / "tiny.keras")
    images = uint8_images(2, 32, 32, seed=3).astype(np.float32)
    session = ort.InferenceSession(str(tmp / "tiny.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images})
    np.testing.assert_allclose(logits, model.predict_on_batch(images), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["predict", "{tmp}/missing.png", "--weights", "{tmp}/tiny.keras"], ["missing.png"]),
        (["predict", "{tmp}/img0.png", "--model", "vit_tinny"], ["vit_tinny"]),
        (["predict", "{tmp}/notes.jpg", "--weights", "{tmp}/tiny.keras"], ["notes.jpg"]),
        (["predict", "{tmp}/img0.png", "--weights", "{tmp}/nope.safetensors"], ["nope"]),
        (["predict", "{tmp}/img0.png", "--weights", "{tmp}/tiny.keras", "--top", "0"], ["--top"]),
        (["predict", "{tmp}/img0.png"], ["--model"]),
        (["export", "{tmp}/x", "--weights", "{tmp}/tiny.keras", "--quantization", "float16"],
         ["--quantization"]),
        (["export", "{tmp}/x", "--weights", "{tmp}/tiny.keras", "--opset", "15"], ["--opset"]),
        (["attention", "{tmp}/img0.png", "--weights", "{tmp}/tiny.keras", "--output",
          "{tmp}/no/such/dir/a.png"], ["does not exist"]),
    ],
)  # fmt: skip
def test_user_mistakes_are_one_line(files, args, fragments):
    tmp = files[0]
    _assert_user_error(_cli(*[a.format(tmp=tmp) for a in args]), *fragments)


def test_predict_gives_the_savedmodels_logits(files):
    """`predict` runs the SavedModel's `serve_image_bytes` graph: the same logits from the
    same files (a PNG at the input size, a JPEG of another size, a palette GIF)."""
    import json

    import tensorflow as tf

    from keras_vit.export import export_saved_model

    tmp, paths, _ = files
    model = keras.saving.load_model(tmp / "tiny.keras")
    images = [*paths, tmp / "big.jpg"]
    with Image.open(tmp / "big.jpg") as im:
        im.convert("P").save(tmp / "big.gif")
    images.append(tmp / "big.gif")
    export = export_saved_model(model, str(tmp / "served"))
    served = tf.saved_model.load(export).signatures["serve_image_bytes"]
    data = tf.constant([open(p, "rb").read() for p in images])
    expected = served(image_bytes=data)["logits"].numpy()
    proc = _cli("predict", *images, "--weights", tmp / "tiny.keras", "--json", "--top", 2)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["image"] for r in rows] == [str(p) for p in images]
    logits = np.array([r["logits"] for r in rows])
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
    assert np.abs(expected[0] - expected[2]).max() > 1e-2  # the files give different answers
