"""GPU throughput of keras_vit on Keras's JAX backend beside timm (eager and torch.compile),
inference and one training step, bf16 mixed precision, in one process.

Usage (on the GPU host, see ../shared/gpu/README.md for the set-up without TensorFlow):
    KERAS_BACKEND=jax python examples/benchmark_gpu.py [--models ...] [--infer-batch 256]
        [--train-batch 128] [--steps 20] [--no-compile]
    KERAS_BACKEND=jax python examples/benchmark_gpu.py --smoke     # tiny, any machine (CPU)

The program never imports TensorFlow (the GPU host has none); keras_vit's import path on JAX
does not either. For each model (default ViT-B/16, DeiT-S distilled, MobileViT-S) it prints
images/s for:
- keras_vit `device`: the batch already on the accelerator, Keras's own stateless
  `predict_step` / `train_step` under `jax.jit` (what `predict`/`fit` run per batch, minus
  the host transfers), parameters and optimizer state donated between steps;
- keras_vit `host`: the user's path, `model.predict(x)` / `model.fit(x, y)` from numpy
  arrays in host memory (so it includes the host-to-device copies);
- timm eager and `torch.compile` (channels_last, `torch.autocast(bfloat16)`, the batch on
  the device; training: AdamW, cross-entropy, as ../shared/gpu/timm_anchor.py).
For DeiT-S distilled it also times the `DeiTDistiller` step (hard distillation from a
ResNet-50 teacher, frozen) against timm's student step plus the teacher's forward pass.
Mixed precision: Keras's `mixed_bfloat16` policy (float32 variables, bfloat16 compute,
softmax/LayerNorm/loss in float32), timm's autocast. Training steps are AdamW at lr 1e-4.
Every figure is the median of `--rounds` timed runs of `--steps` steps after warm-up, each run
ending with a device synchronisation.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
# JAX would otherwise take 75% of the GPU up front and leave torch too little
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import keras_vit  # noqa: E402

DEFAULT_MODELS = ["vit_base_patch16_224", "deit_small_distilled_patch16_224", "mobilevit_s"]
TEACHER = "resnet50"  # the convnet teacher, Keras's and timm's of the same architecture


def _median_rate(run, images_per_run, rounds):
    """Images/s: the median over `rounds` of `run()` (which must synchronise at its end)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return images_per_run / statistics.median(times)


# --- keras_vit on JAX -------------------------------------------------------------------------
def _model_state(model, *, training):
    """The variables as JAX arrays in the order Keras's stateless steps take them, copied (the
    training step donates its input buffers, which must not be the model's own)."""
    groups = [model.trainable_variables, model.non_trainable_variables]
    if training:
        groups += [model.optimizer.variables, model.metrics_variables]
    return tuple([jax.numpy.copy(v.value) for v in group] for group in groups)


def keras_inference(model, images, batch, steps, rounds):
    """(device img/s, host img/s): jitted `predict_step` on a device batch; `predict`."""
    x = jax.device_put(images[:batch])
    state = _model_state(model, training=False)
    step = jax.jit(lambda state, x: model.predict_step(state, x)[0])

    def device_run():
        for _ in range(steps):
            out = step(state, x)
        jax.block_until_ready(out)

    host = images[: batch * steps]
    model.predict(host[:batch], batch_size=batch, verbose=0)  # compile, warm up
    device_run()
    on_device = _median_rate(device_run, batch * steps, rounds)
    from_host = _median_rate(
        lambda: model.predict(host, batch_size=batch, verbose=0), len(host), rounds
    )
    return on_device, from_host


def keras_training(model, images, labels, batch, steps, rounds, loss=None):
    """(device img/s, host img/s) of one training step: jitted `train_step` on a device
    batch; `fit` on host arrays. `model` is compiled here (AdamW 1e-4, `loss`)."""
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss)
    x, y = images[: batch * steps], labels[: batch * steps]
    fit = lambda: model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)  # noqa: E731
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # build, compile
    from_host = _median_rate(fit, len(x), rounds)

    step = jax.jit(model.train_step, donate_argnums=0)
    data = (jax.device_put(x[:batch]), jax.device_put(y[:batch]))
    state = [_model_state(model, training=True)]

    def device_run():
        for _ in range(steps):
            logs, state[0] = step(state[0], data)
        jax.block_until_ready((logs, state[0]))

    device_run()
    return _median_rate(device_run, batch * steps, rounds), from_host


# --- timm -------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timm_rates(name, kwargs, images, labels, batch, steps, rounds, device, train, compile_):
    """img/s of timm's model, eager or compiled: inference, or an AdamW cross-entropy step."""
    model = timm.create_model(name, **kwargs).to(device).to(memory_format=torch.channels_last)
    x = torch.from_numpy(images[:batch].transpose(0, 3, 1, 2).copy()).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels[:batch]).long().to(device)
    net = torch.compile(model) if compile_ else model
    if not train:
        model.eval()

        def one():
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                net(x)

    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def one():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def run():
        for _ in range(steps):
            one()
        _sync(device)

    run()  # warm up (and compile)
    return _median_rate(run, batch * steps, rounds)


def timm_distill_rate(student_name, kwargs, size, images, labels, batch, steps, rounds, device):
    """timm's DeiT hard-distillation step: frozen ResNet-50 forward, then the student's
    `(cls, dist)` heads trained on `(CE(cls, y) + CE(dist, argmax teacher)) / 2`."""
    student = timm.create_model(student_name, **kwargs).to(device)
    student.set_distilled_training(True)
    student = student.to(memory_format=torch.channels_last).train()
    teacher = timm.create_model(TEACHER).to(device).to(memory_format=torch.channels_last).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    x = torch.from_numpy(images[:batch].transpose(0, 3, 1, 2).copy()).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels[:batch]).long().to(device)
    ce = torch.nn.functional.cross_entropy

    def run():
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                with torch.no_grad():
                    hard = teacher(x).argmax(-1)
                cls, dist = student(x)
                loss = 0.5 * ce(cls, y) + 0.5 * ce(dist, hard)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)

    run()
    return _median_rate(run, batch * steps, rounds)


def timm_pair(name, kwargs, images, labels, batch, steps, rounds, device, train, args):
    """(eager img/s, compiled img/s or None with --no-compile). timm is fed keras_vit's raw
    0..255 images: a speed test, only the shapes and dtypes matter."""
    rates = [
        timm_rates(name, kwargs, images, labels, batch, steps, rounds, device, train, compile_)
        for compile_ in ((False,) if args.no_compile else (False, True))
    ]
    return rates[0], (rates[1] if len(rates) > 1 else None)


# --- the run ----------------------------------------------------------------------------------
def model_kwargs(name, args):
    """(keras_vit kwargs, timm kwargs, image size) at the benchmark's size."""
    spec = keras_vit.registry.get_spec(name)
    size = spec.arch.get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    ours, theirs = {}, {}
    if args.smoke:
        if name.startswith("mobilevit"):
            size = 64  # fully convolutional: timm takes any size
        else:
            size = 32
            ours.update(depth=1)
            theirs.update(depth=1, img_size=size)
        ours.update(image_size=size)
    return ours, theirs, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs (median)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-distill", action="store_true", help="skip the distiller rows")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (ViT/DeiT depth 1 at 32x32, MobileViT at 64x64), batch 2, 2 steps, "
        "1 round: checks the program on any machine; its figures mean nothing",
    )
    args = parser.parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit(f"Run with KERAS_BACKEND=jax (this is {keras.backend.backend()!r}).")
    if args.smoke:
        args.infer_batch = args.train_batch = 2
        args.steps, args.rounds = 2, 1
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = jax.devices()[0]
    print(
        f"keras {keras.__version__} on jax {jax.__version__} ({accelerator.device_kind}), "
        f"torch {torch.__version__} / timm {timm.__version__} on {device}; bf16; batch "
        f"{args.infer_batch} inference / {args.train_batch} training; {args.steps} steps x "
        f"{args.rounds} rounds" + ("; SMOKE TEST: the figures mean nothing" if args.smoke else "")
    )
    if accelerator.platform != "gpu" and not args.smoke:
        print("warning: JAX sees no GPU; these are not GPU figures")
    rows = []
    rng = np.random.default_rng(0)
    for name in args.models:
        ours, theirs, size = model_kwargs(name, args)
        first_row = len(rows)
        n = max(args.infer_batch, args.train_batch) * args.steps
        images = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
        labels = rng.integers(0, 1000, n).astype("int32")
        keras_sparse_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        b, s, r = args.infer_batch, args.steps, args.rounds
        t = args.train_batch

        model = keras_vit.create_model(name, **ours)
        dev, host = keras_inference(model, images, b, s, r)
        rows.append(
            (
                name,
                "inference",
                dev,
                host,
                *timm_pair(name, theirs, images, labels, b, s, r, device, False, args),
            )
        )
        model = keras_vit.create_model(name, **ours)
        dev, host = keras_training(model, images, labels, t, s, r, loss=keras_sparse_ce)
        rows.append(
            (
                name,
                "train step",
                dev,
                host,
                *timm_pair(name, theirs, images, labels, t, s, r, device, True, args),
            )
        )
        if "distilled" in name and not args.no_distill:
            teacher = keras.applications.ResNet50(
                weights=None, input_shape=(size, size, 3), classifier_activation=None
            )
            distiller = keras_vit.DeiTDistiller(
                keras_vit.create_model(name, **ours), teacher, "hard"
            )
            dev, host = keras_training(distiller, images, labels, t, s, r)
            theirs_rate = timm_distill_rate(name, theirs, size, images, labels, t, s, r, device)
            rows.append((name, f"distill ({TEACHER})", dev, host, theirs_rate, None))
        for row in rows[first_row:]:
            print(json.dumps(dict(zip(("model", "mode", "keras_device", "keras_host",
                                       "timm_eager", "timm_compiled"), row))), flush=True)  # fmt: skip
        keras.backend.clear_session()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    header = f"{'model':34s} {'mode':18s} {'keras dev':>10s} {'keras host':>11s} "
    header += f"{'timm eager':>11s} {'timm comp':>10s} {'dev/best timm':>14s}"
    print(header)
    for name, mode, dev, host, eager, compiled in rows:
        best = max(v for v in (eager, compiled) if v is not None)
        comp = f"{compiled:10.1f}" if compiled is not None else f"{'-':>10s}"
        print(
            f"{name:34s} {mode:18s} {dev:10.1f} {host:11.1f} {eager:11.1f} {comp} "
            f"{dev / best:13.2f}x"
        )
    print("images/s; dev: batch already on the device; host: predict/fit from numpy arrays")
    # the GPU host has no TensorFlow: nothing here may have needed it
    print(f"tensorflow imported: {'yes' if 'tensorflow' in sys.modules else 'no'}")


if __name__ == "__main__":
    main()
