"""`make demo`: DeiT's result on real data, offline, in a few CPU minutes.

1. trains a small convnet teacher on scikit-learn's handwritten digits (upscaled to 32x32),
2. trains the same small distilled DeiT student without a teacher and with hard distillation
   (DeiT's `(1 - a) CE(cls, y) + a CE(dist, argmax teacher)`), for each seed,
3. prints validation accuracy side by side,
4. exports the distilled student as a SavedModel and classifies held-out digits through it
   with nothing but TensorFlow.

Every run is resumable: interrupt it and run it again, finished runs are reused.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/demo")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated student seeds")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--show", type=int, default=8, help="held-out digits to classify")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.time()

    import numpy as np
    import tensorflow as tf

    import keras_vit

    def run(name, **kwargs):
        t = time.time()
        m = keras_vit.train(
            dataset="digits",
            output=os.path.join(args.output, name),
            epochs=args.epochs,
            verbose=0,
            **kwargs,
        )
        print(
            f"  {name:22s} val accuracy {m['val_accuracy']:.4f}  ({time.time() - t:.0f} s)",
            flush=True,
        )
        return m

    print(f"digits: 1,797 images, 8x8 upscaled to 32x32; {args.epochs} epochs per run")
    teacher = run("teacher", model="convnet", distillation="none", seed=0)
    teacher_file = os.path.join(args.output, "teacher", "model.keras")
    plain, hard = [], []
    for seed in seeds:
        plain.append(run(f"student_seed{seed}", distillation="none", seed=seed))
        hard.append(
            run(f"distilled_seed{seed}", teacher=teacher_file, distillation="hard", seed=seed)
        )

    def row(label, runs, params):
        accs = [r["val_accuracy"] for r in runs]
        spread = f" ± {statistics.stdev(accs):.4f}" if len(accs) > 1 else ""
        each = ", ".join(f"{a:.4f}" for a in accs)
        print(
            f"| {label:32s} | {params:>6s} | {f'{statistics.mean(accs):.4f}{spread}':20s} | {each:22s} |"
        )

    import keras

    student = keras.saving.load_model(
        os.path.join(args.output, f"distilled_seed{seeds[0]}", "model.keras")
    )
    t_model = keras.saving.load_model(teacher_file)
    n_s, n_t = f"{student.count_params() / 1e3:.0f}k", f"{t_model.count_params() / 1e3:.0f}k"
    print(f"\nvalidation accuracy on {teacher['num_val']} held-out digits (seeds {args.seeds}):\n")
    print(f"| {'model':32s} | {'params':>6s} | {'accuracy (mean ± sd)':20s} | {'per seed':22s} |")
    print(f"|{'-' * 34}|{'-' * 8}|{'-' * 22}|{'-' * 24}|")
    row("teacher: small convnet", [teacher], n_t)
    row("student: DeiT, no teacher", plain, n_s)
    row("student: DeiT, hard distillation", hard, n_s)

    # export the distilled student; serve held-out digits through the SavedModel alone
    saved = os.path.join(args.output, "distilled_savedmodel")
    try:
        from keras_vit.export import export_saved_model

        export_saved_model(student, saved, class_names=[str(i) for i in range(10)])
    except ImportError:  # keras_vit.export not installed: Keras's own SavedModel export
        student.export(saved, verbose=False)
    served = tf.saved_model.load(saved).signatures["serving_default"]

    from keras_vit.data import eval_dataset, load_splits
    from keras_vit.training.train import training_preprocessing

    splits = load_splits("digits")  # held-out digits resized as in training (whole image)
    images, labels = next(iter(eval_dataset(splits, training_preprocessing(student), args.show)))
    out = served(images=tf.constant(images))
    logits = out["logits"] if "logits" in out else next(iter(out.values()))
    probs = tf.nn.softmax(logits).numpy()
    pred = probs.argmax(-1)
    print(f"\nSavedModel {saved} (serving_default), {args.show} held-out digits:")
    print("  true      " + " ".join(f"{int(y):>4d}" for y in labels.numpy()))
    print("  predicted " + " ".join(f"{int(p):>4d}" for p in pred))
    print("  p(pred)   " + " ".join(f"{p:.2f}" for p in probs.max(-1)))
    same = np.allclose(logits.numpy(), student.predict(images, verbose=0), atol=1e-4)
    print(f"  SavedModel logits == Keras student logits (1e-4): {same}")
    print(f"\ndemo finished in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
