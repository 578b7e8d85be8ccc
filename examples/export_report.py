"""Print the export figures the README quotes: SavedModel and TFLite vs the Keras model.

Usage: python examples/export_report.py   (or `make report`, which also runs the parity tests
with their figures)

The small models of tests/test_export_savedmodel.py and tests/test_tflite.py (depth 2, 32 px;
MobileViT-XXS at 64 px with one transformer layer per stage), every weight random at a healthy
scale, structured uint8 images. The SavedModel is reloaded with `tf.saved_model.load` and both
signatures called at batch 1 and 7 (`serving_default`: float pixels; `serve_image_bytes`: the
same images as PNG bytes); the TFLite flatbuffer (batch 1) runs in `tf.lite.Interpreter`. Each line: max |logit diff| against `model.predict_on_batch`.
"""

import os
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402
from export_fixtures import randomize_keras_model, uint8_images  # noqa: E402

import keras_vit  # noqa: E402

MODELS = {
    "vit_tiny_patch16_224": dict(image_size=32, depth=2),
    "deit_tiny_distilled_patch16_224": dict(image_size=32, depth=2),
    "mobilevit_xxs": dict(image_size=64, transformer_depths=(1, 1, 1)),
}


def main():
    import tensorflow as tf

    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")

    print(f"{'model':34s} {'export':32s} {'batch':>5s} {'max |logit diff|':>17s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in MODELS.items():
            model = randomize_keras_model(keras_vit.create_model(name, **kwargs), seed=len(name))
            size = kwargs["image_size"]
            images = uint8_images(7, size, size, seed=5).astype(np.float32)
            ref = np.asarray(model.predict_on_batch(images))
            assert np.abs(ref[0] - ref[1]).max() > 1e-2, "outputs barely depend on the input"

            path = os.path.join(tmp, name)
            keras_vit.export_saved_model(model, path)
            loaded = tf.saved_model.load(path)
            pngs = tf.constant(
                [tf.io.encode_png(image).numpy() for image in images.astype("uint8")]
            )
            for signature, feed in (("serving_default", {"images": tf.constant(images)}),
                                    ("serve_image_bytes", {"image_bytes": pngs})):  # fmt: skip
                serve = loaded.signatures[signature]
                for batch in (1, 7):
                    out = serve(**{k: v[:batch] for k, v in feed.items()})["logits"].numpy()
                    diff = float(np.abs(out - ref[:batch]).max())
                    label = f"SavedModel {signature}"
                    print(f"{name:34s} {label:32s} {batch:5d} {diff:17.2e}", flush=True)

            flat = keras_vit.export_tflite(model, os.path.join(tmp, f"{name}.tflite"))
            run = tf.lite.Interpreter(model_path=str(flat)).get_signature_runner()
            diff = max(
                float(np.abs(run(images=images[i : i + 1])["logits"] - ref[i : i + 1]).max())
                for i in range(len(images))
            )
            print(f"{name:34s} {'TFLite serving_default':32s} {1:5d} {diff:17.2e}", flush=True)


if __name__ == "__main__":
    main()
