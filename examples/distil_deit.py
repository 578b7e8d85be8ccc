"""Distil a DeiT student from a Keras convnet teacher with `model.fit`, offline.

Usage: python examples/distil_deit.py [--mode hard|soft|none] [--epochs 8] [--out DIR]

Data: scikit-learn's handwritten digits (keras_vit.data.digits, no network), upscaled to
32x32. The teacher is a small Keras convnet (with BatchNorm) trained first on the labels; it
takes 48x48 inputs scaled to [0, 1], so the distiller is given an adapter (resize + rescale)
exactly as a real teacher with its own input size and normalisation would need. The student
is a small distilled DeiT (patch 4, depth 4) trained by `keras_vit.DeiTDistiller`; it is then
saved alone as a `.keras` file and reloaded.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_vit  # noqa: E402
from keras_vit.data.digits import NUM_CLASSES, load_digits_arrays  # noqa: E402

STUDENT_SIZE, TEACHER_SIZE = 32, 48


def load_data(seed=0):
    images, labels = load_digits_arrays()  # (N, 8, 8, 3) 0..255
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)  # (N, 32, 32, 3), pixel-exact
    order = np.random.default_rng(seed).permutation(len(images))
    images, labels = images[order], labels[order]
    n_val = len(images) // 5
    return (images[n_val:], labels[n_val:]), (images[:n_val], labels[:n_val])


def teacher_adapter(images):
    """Student input (32x32, 0..255) -> teacher input (48x48, [0, 1])."""
    resized = keras.ops.image.resize(images, (TEACHER_SIZE, TEACHER_SIZE))
    return resized / 255.0


def build_teacher():
    inputs = keras.Input((TEACHER_SIZE, TEACHER_SIZE, 3))
    x = inputs
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x), name="convnet_teacher")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="hard", choices=["hard", "soft", "none"])
    parser.add_argument("--epochs", type=int, default=15, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="distil_deit_out", help="where the student is saved")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, y_val) = load_data()
    print(f"digits: {len(x_train)} train / {len(x_val)} val images, {NUM_CLASSES} classes")

    # 1. the teacher: an ordinary Keras convnet trained on the labels
    teacher = build_teacher()
    teacher.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher_x = lambda x: np.asarray(teacher_adapter(x))  # noqa: E731
    teacher.fit(
        teacher_x(x_train), y_train, batch_size=args.batch, epochs=args.teacher_epochs, verbose=2
    )
    _, teacher_acc = teacher.evaluate(teacher_x(x_val), y_val, verbose=0)

    # 2. the student: a small distilled DeiT, trained through the distiller
    student = keras_vit.create_model(
        "deit_tiny_distilled_patch16_224",
        image_size=STUDENT_SIZE,
        patch_size=4,
        embed_dim=96,
        depth=4,
        num_heads=3,
        num_classes=NUM_CLASSES,
        drop_path_rate=0.05,
    )
    distiller = keras_vit.DeiTDistiller(
        student,
        teacher,
        distillation=args.mode,
        alpha=0.5,
        label_smoothing=0.1,
        teacher_adapter=teacher_adapter,
    )
    steps = args.epochs * -(-len(x_train) // args.batch)
    distiller.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(
                0.0, steps, warmup_target=2e-3, warmup_steps=steps // 10
            ),
            weight_decay=0.05,
        ),
        jit_compile=True,
        steps_per_execution=4,
    )
    distiller.fit(
        x_train,
        y_train,
        batch_size=args.batch,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        verbose=2,
    )
    logs = distiller.evaluate(x_val, y_val, batch_size=args.batch, verbose=0, return_dict=True)

    # 3. the student alone: save, reload, predict
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "deit_student.keras")
    student.save(path)
    reloaded = keras.saving.load_model(path)
    acc = float(np.mean(np.argmax(reloaded.predict(x_val, verbose=0), -1) == y_val))
    print(f"teacher val accuracy: {teacher_acc:.3f}")
    print(
        f"student ({args.mode}) val accuracy: {logs['accuracy']:.3f} "
        f"(class head {logs['cls_accuracy']:.3f}, distillation head {logs['dist_accuracy']:.3f})"
    )
    if "teacher_agreement" in logs:
        print(f"student/teacher top-1 agreement: {logs['teacher_agreement']:.3f}")
    print(f"saved student: {path}; reloaded, its val accuracy is {acc:.3f}")


if __name__ == "__main__":
    main()
