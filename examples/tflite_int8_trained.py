"""TFLite full-integer int8 against float32 on *trained* weights: accuracy and top-1 agreement
on held-out images.

Usage: python examples/tflite_int8_trained.py [NAME ...] [--epochs 12] [--image-size 64]

No published checkpoint can be downloaded here, and with random weights a full-size model
gives nearly the same logits for every image, so the agreement it shows says little. This
trains each model (the registered architecture, full depth and width, at `--image-size`
pixels, 10 classes) on the built-in digits: the first 1,297 images train it and calibrate
the int8 conversion (`export_tflite(..., quantization="int8", calibration_images=...)`, 200
of them), the last 500 are held out. On those 500 it prints the accuracy of the Keras model,
of the float32 and int8 TFLite files, the int8 file's top-1 agreement with the float32
file, and the correlation of their logits. Builtin ops only (asserted: 0 select ops).
"""

import argparse
import os
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402
from helpers import agreement, tflite_logits  # noqa: E402

DEFAULT_MODELS = ("deit_tiny_patch16_224", "mobilevit_xxs", "mobilevitv2_050")
TRAIN, CALIBRATION = 1297, 200  # of the 1,797 digits; the other 500 are held out


def digits(size):
    """Digits upscaled (bilinear) to `size` px: float32 (1797, size, size, 3) 0..255, labels."""
    import tensorflow as tf

    from keras_vit.data.digits import load_digits_arrays

    images, labels = load_digits_arrays()
    order = np.random.default_rng(0).permutation(len(images))  # the file is sorted by writer
    images = tf.image.resize(images[order], (size, size), method="bilinear").numpy()
    return images.astype(np.float32), labels[order]


def train(name, images, labels, epochs, size):
    import keras

    import keras_vit

    keras.utils.set_random_seed(0)
    model = keras_vit.create_model(name, num_classes=10, image_size=size)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(images, labels, batch_size=32, epochs=epochs, verbose=0)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")

    import tensorflow as tf

    from keras_vit.export import export_tflite, select_ops

    images, labels = digits(args.image_size)
    train_x, train_y = images[:TRAIN], labels[:TRAIN]
    test_x, test_y = images[TRAIN:], labels[TRAIN:]
    print(
        f"digits at {args.image_size} px, {args.epochs} epochs; {len(test_x)} held-out images"
        f" (accuracy: keras / TFLite float32 / TFLite int8)"
    )
    header = "model", "keras", "tfl f32", "tfl int8", "int8 vs f32 top-1", "corr"
    print(f"{header[0]:26s} {header[1]:>7s} {header[2]:>8s} {header[3]:>8s} {header[4]:>18s}"
          f" {header[5]:>8s}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = train(name, train_x, train_y, args.epochs, args.image_size)
            keras_logits = np.asarray(model.predict(test_x, batch_size=50, verbose=0))
            logits = {}
            for quantization in (None, "int8"):
                path = export_tflite(
                    model,
                    os.path.join(tmp, f"{name}.{quantization}.tflite"),
                    quantization=quantization,
                    calibration_images=train_x[:CALIBRATION] if quantization else None,
                )
                assert select_ops(path) == [], select_ops(path)
                run = tf.lite.Interpreter(model_path=path).get_signature_runner("serving_default")
                logits[quantization or "f32"] = tflite_logits(run, test_x)
            accuracy = {
                k: float(np.mean(v.argmax(-1) == test_y))
                for k, v in (("keras", keras_logits), *logits.items())
            }
            corr, top1 = agreement(logits["int8"], logits["f32"])
            agree = round(top1 * len(test_y))
            print(
                f"{name:26s} {accuracy['keras']:7.3f} {accuracy['f32']:8.3f}"
                f" {accuracy['int8']:8.3f} {agree:>12d}/{len(test_y)} {corr:8.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
