"""What the distiller adds: one `DeiTDistiller` training step against the student's own
training step plus the teacher's forward pass, same batch, one process.

Usage: python examples/benchmark_distiller.py [--student deit_tiny_distilled_patch16_224]
           [--teacher resnet50] [--mode hard] [--batch 8] [--image-size 224] [--seconds 20]

Any backend (`KERAS_BACKEND=jax` to measure on a GPU without TensorFlow). Everything is XLA
compiled (`jit_compile=True`) and warmed up. The two sides are timed in alternation (so a
busy machine slows both alike) and the medians compared:
    ratio = distill_step / (student_step + teacher_forward)
where the student's own step is `train_on_batch` with cross-entropy on its averaged output.
The acceptance is ratio <= 1.05.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_vit  # noqa: E402

TEACHERS = {
    "resnet50": keras.applications.ResNet50,
    "convnext_tiny": keras.applications.ConvNeXtTiny,
    "efficientnetb0": keras.applications.EfficientNetB0,
}


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--teacher", default="resnet50", choices=sorted(TEACHERS))
    parser.add_argument("--mode", default="hard", choices=["hard", "soft"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--depth", type=int, default=None, help="student depth (default: full)")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    size, classes = args.image_size, 1000
    extra = {} if args.depth is None else {"depth": args.depth}
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, classes, args.batch)
    # DeiT's teacher gives logits: no softmax at the end
    teacher = TEACHERS[args.teacher](
        weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None
    )
    teacher.compile(jit_compile=True)

    # the student alone, trained on the labels (cross-entropy on its averaged output)
    student = keras_vit.create_model(args.student, image_size=size, **extra)
    student.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    # the same architecture, trained through the distiller
    distilled = keras_vit.create_model(args.student, image_size=size, **extra)
    distiller = keras_vit.DeiTDistiller(distilled, teacher, args.mode)
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=True)

    def distill_step():
        distiller.train_on_batch(images, labels)

    def separate_steps():
        student.train_on_batch(images, labels)
        teacher.predict_on_batch(images)

    for _ in range(3):  # compile and warm up
        distill_step()
        separate_steps()
    distill, separate = [], []
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds or len(distill) < 5:
        distill.append(_timed(distill_step))
        separate.append(_timed(separate_steps))
    d, s = statistics.median(distill), statistics.median(separate)
    print(
        f"backend {keras.backend.backend()}, student {args.student} (depth "
        f"{distilled.depth}), teacher {args.teacher}, {args.mode}, batch {args.batch}, "
        f"{size}x{size}, {len(distill)} rounds"
    )
    print(f"distiller step:                    {d * 1e3:9.1f} ms")
    print(f"student step + teacher forward:    {s * 1e3:9.1f} ms")
    print(f"ratio: {d / s:.3f}  (acceptance <= 1.05)")


if __name__ == "__main__":
    main()
