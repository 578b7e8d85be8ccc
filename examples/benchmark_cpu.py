"""CPU inference at float32 / bfloat16 / int8: keras_vit beside timm and ONNX Runtime, one process.

Usage: python examples/benchmark_cpu.py [MODEL or PATTERN ...] [--precisions f32,bf16,int8[,f32_whole,bf16_whole,f32_graph]]
           [--refs timm_f32,timm_bf16,ort_f32,ort_int8,keras_onnx] [--batch 8] [--rounds 7] [--savedmodel]
           [--tflite]

MODEL is a registered name; a shell-style PATTERN (`'mobilevit*'`, quoted) stands for every
registered name it matches (`keras_vit.list_models`). Every column runs the same network: a timm model with every parameter randomised
(tests/helpers.py: randomize_timm_model), its weights loaded into keras_vit. Columns:

- keras_vit f32 / bf16 / int8: `create_model(name)`, `create_model(name, dtype="bfloat16")`,
  `create_model(name).quantize("int8")`, then `predict_on_batch`, nothing else (the compile
  path is the models' own choice, see keras_vit/models/base.py); f32_whole / bf16_whole
  (asked for by name): the same with the batch run whole instead of as two halves side by
  side (`model.inference_batch_halves = False`, keras_vit/models/batch_halves.py); f32_graph
  (by name): float32 compiled with `jit_compile=False`, which keeps every part on TF's graph,
  where the default runs parts of up to two images (batches up to four) as XLA programs
  (keras_vit/models/base.py: `small_parts_xla`);
- timm f32: eager in `torch.inference_mode()`; timm bf16: the same under
  `torch.autocast("cpu", dtype=torch.bfloat16)`;
- ORT f32 / int8: the timm model through `torch.onnx.export`, then ONNX Runtime; int8 is
  `onnxruntime.quantization.quantize_dynamic` (int8 weights, dynamic int8 activations);
- keras_onnx: our float32 model through `keras_vit.export_onnx`, then ONNX Runtime (what a
  user serving our export with ONNX Runtime gets).

Timing: everything is built and warmed up first, then `--rounds` rounds on the same batch;
in each round every column has a slot: a 0.2 s pause (so the previous engine's spinning
worker threads park), then about 0.5 s of back-to-back calls (interleaved, so a noisy
neighbour slows all columns alike). The median time per call gives images/s. The machine's
float32 rate (TensorFlow's 4096^3 matmul, GFLOP/s) is printed first, and each float32
column's share of it (the model's matmul/conv FLOPs, counted by torch's FlopCounterMode,
times images/s).

Accuracy of the reduced-precision columns, on structured images (a random low-frequency
pattern, so different images get different logits): the correlation of all logits with the
float32 model's (keras_vit f32 for ours, timm f32 for timm/ORT) and top-1 agreement.

`--tflite` also exports DeiT-Ti and the MobileViTs given (random keras_vit weights) to TFLite
float32 and full-integer int8 (calibrated on 100 built-in digits), and times the TFLite
interpreter on one image (its on-device batch), interleaved, with the int8 file's top-1
agreement and logits correlation with float32 on 200 held-out digits.

TensorFlow's thread pools are the process's (set before TensorFlow starts): run with
`TF_NUM_INTRAOP_THREADS=1` to time the models as a throughput-minded user who gives each
inter-op thread one core runs them (the batch then runs in one part per inter-op thread,
keras_vit/models/batch_halves.py); the matmul rate is then that of one 4096^3 matmul per
inter-op thread side by side.

Last, the ratios the issues ask about, from the same run's medians: keras_vit float32 over
ONNX Runtime float32 and over timm float32, and the faster of keras_vit bf16 / int8 over timm's
bf16 autocast (`speed_ratios`).

`--savedmodel` also exports the keras_vit bf16 and int8 models with `export_saved_model` and
times their `serving_default` in a second process where keras cannot be imported (what TF
Serving runs), alternating batch by batch with `predict_on_batch` here.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import timm  # noqa: E402  (torch before TensorFlow: the other import order crashes)
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import numpy as np  # noqa: E402
from helpers import (  # noqa: E402
    WITHOUT_KERAS_PRELUDE,
    agreement,
    randomize_timm_model,
    structured_pixels,
    tflite_logits,
)

import keras_vit  # noqa: E402
from keras_vit.models.batch_halves import inference_parts, thread_setting  # noqa: E402

# one model of every family (issue 17: `make bench` prints every family); v2 0.5 and XXS are
# the smallest, where per-op overheads weigh most
DEFAULT_MODELS = [
    "deit_small_patch16_224",
    "vit_base_patch16_224",
    "mobilevit_s",
    "mobilevit_xxs",
    "mobilevitv2_050",
    "mobilevitv2_100",
    "deit3_small_patch16_224",
    "vit_small_patch14_reg4_dinov2",
    "flexivit_small",
]
PRECISIONS = ("f32", "bf16", "int8")
# A/B columns: the same float32 / bf16 models with the batch run whole, not as two halves
# side by side (keras_vit/models/batch_halves.py: `inference_batch_halves = False`)
WHOLE_BATCH = ("f32_whole", "bf16_whole")
# A/B column: float32 with every part on TF's graph (`jit_compile=False`): no small-part XLA
GRAPH_ONLY = ("f32_graph",)
REFS = ("timm_f32", "timm_bf16", "ort_f32", "ort_int8", "keras_onnx")
CPU_FLAGS = ("amx_bf16", "avx512_bf16", "amx_int8", "avx512_vnni")


def expand_models(names):
    """Registered names for `names`, in order and without repeats: a name with `*`, `?` or
    `[` is a shell-style pattern over `keras_vit.list_models()`, anything else is kept as
    given (checked when its model is built). A pattern matching nothing is an error."""
    models = []
    for name in names:
        if any(c in name for c in "*?["):
            matched = keras_vit.list_models(name)
            if not matched:
                raise ValueError(
                    f"The pattern {name!r} matches no registered model; see "
                    "keras_vit.list_models()."
                )
        else:
            matched = [name]
        models += [m for m in matched if m not in models]
    return models


# (label, numerator column(s), denominator column): keras_vit over the reference the issues
# name; several numerators: the fastest of them (issue 17: "the faster of bf16 and int8")
RATIOS = (
    ("f32/ORT f32", ("keras_f32",), "ort_f32"),
    ("f32/timm f32", ("keras_f32",), "timm_f32"),
    ("bf16|int8/timm bf16", ("keras_bf16", "keras_int8"), "timm_bf16"),
)


def speed_ratios(rates):
    """{label: keras_vit images/s over the reference's} for the `RATIOS` whose columns
    `rates` (images/s by column) holds; the fastest numerator present is used."""
    ratios = {}
    for label, numerators, denominator in RATIOS:
        present = [rates[c] for c in numerators if c in rates]
        if present and denominator in rates:
            ratios[label] = max(present) / rates[denominator]
    return ratios


def cpu_description():
    """`(model name, {flag: present})` from /proc/cpuinfo."""
    name, flags = "unknown", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return name, {flag: flag in flags for flag in CPU_FLAGS}


def matmul_gflops(dtype="float32", n=4096, reps=5, chains=1):
    """TensorFlow's n^3 matmul rate (median of `reps`), GFLOP/s, as `chains` independent
    matmuls side by side: with one intra-op thread (TF_NUM_INTRAOP_THREADS=1) one matmul
    runs on one core, so the machine's rate is one matmul per inter-op thread."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n)), dtype)
    step = tf.function(lambda: [tf.matmul(a + i, a) for i in range(chains)])
    step()[0].numpy()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        [c.numpy() for c in step()]
        times.append(time.perf_counter() - t)
    return chains * 2 * n**3 / statistics.median(times) / 1e9


def image_size(name):
    size = keras_vit.registry.get_spec(name).arch.get("image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def timm_input(model, pixels):
    """NHWC 0..255 pixels -> the normalised NCHW tensor timm takes."""
    cfg = model.pretrained_cfg
    mean = np.asarray(cfg.get("mean", (0.485, 0.456, 0.406)), np.float32)
    std = np.asarray(cfg.get("std", (0.229, 0.224, 0.225)), np.float32)
    x = (pixels / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))


def build_columns(name, ref, pixels, precisions, refs, workdir):
    """{column: step function returning float32 logits (numpy)} for one model."""
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    columns, ours_onnx = {}, None
    if "keras_onnx" in refs:  # first: the converter peaks at ~16 GB on ViT-B/16, so while
        ours = keras_vit.create_model(name)  # none of the other columns is alive yet
        keras_vit.load_weights(ours, state)
        ours_onnx = keras_vit.export_onnx(ours, os.path.join(workdir, f"{name}.keras_vit.onnx"))
        del ours
    for precision in precisions:
        dtype = "bfloat16" if precision.startswith("bf16") else None
        model = keras_vit.create_model(name, dtype=dtype)
        keras_vit.load_weights(model, state)
        model.inference_batch_halves = not precision.endswith("_whole")
        if precision == "int8":
            model.quantize("int8")
        if precision in GRAPH_ONLY:
            model.compile(jit_compile=False)
        columns[f"keras_{precision}"] = (
            lambda m=model: np.asarray(m.predict_on_batch(pixels), np.float32),
            model,
        )
    x = timm_input(ref, pixels)

    def timm_step(bf16):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return ref(x).float().numpy()

    if "timm_f32" in refs:
        columns["timm_f32"] = (lambda: timm_step(False), None)
    if "timm_bf16" in refs:
        columns["timm_bf16"] = (lambda: timm_step(True), None)
    if any(r.startswith("ort") or r == "keras_onnx" for r in refs):
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        f32_path = os.path.join(workdir, f"{name}.onnx")
        with torch.inference_mode():
            torch.onnx.export(
                ref, (x,), f32_path, input_names=["x"], output_names=["logits"], dynamo=False
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        paths = {"ort_f32": f32_path}
        if "ort_int8" in refs:
            paths["ort_int8"] = os.path.join(workdir, f"{name}.int8.onnx")
            quantize_dynamic(f32_path, paths["ort_int8"], weight_type=QuantType.QInt8)
        feeds = {"ort_f32": {"x": x.numpy()}}
        feeds["ort_int8"] = feeds["ort_f32"]
        if ours_onnx is not None:
            paths["keras_onnx"] = ours_onnx
            feeds["keras_onnx"] = {"images": pixels}
        for column, path in paths.items():
            if column in refs:
                session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                feed = feeds[column]
                columns[column] = (lambda s=session, f=feed: s.run(None, f)[0], None)
    return columns


def model_gflops(ref, x):
    """Matmul + conv GFLOP of one image through the timm model."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        ref(x[:1])
    return counter.get_total_flops() / 1e9


def interleaved(steps, rounds, slot_seconds=0.5, settle_seconds=0.2):
    """{column: median seconds per call}: every column once per round, each in its own slot.

    A slot is a pause of `settle_seconds`, then the column run back-to-back for about
    `slot_seconds` (at least once), timed as a whole: what a serving process running one
    engine sees. Why not one call per column per round: each engine's worker threads spin for
    a while after a call (ONNX Runtime's intra-op pool, torch's OpenMP, TensorFlow's Eigen
    pool) and, on few cores, that spinning is charged to whichever column runs next; the pause
    lets them park. Rounds still alternate the columns, so a noisy neighbour slows all alike.
    """
    calls = {}
    for key, step in steps.items():  # calls per slot, from one timed call
        t = time.perf_counter()
        step()
        calls[key] = max(1, round(slot_seconds / (time.perf_counter() - t)))
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            time.sleep(settle_seconds)
            t = time.perf_counter()
            for _ in range(calls[key]):
                step()
            times[key].append((time.perf_counter() - t) / calls[key])
    return {k: statistics.median(v) for k, v in times.items()}


# --- SavedModel in a keras-free process ------------------------------------------------------
SERVER = WITHOUT_KERAS_PRELUDE + textwrap.dedent(
    """
    import time
    import numpy as np

    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    images = tf.constant(np.load(sys.argv[2]))
    # the classifier's logits, or a headless model's (DINOv2's) features
    output = "logits" if "logits" in serve.structured_outputs else "features"
    np.save(sys.argv[3], serve(images=images)[output].numpy())
    serve(images=images)
    print("ready", flush=True)
    for line in sys.stdin:  # one batch per line received, its time sent back
        t = time.perf_counter()
        serve(images=images)[output].numpy()
        print(time.perf_counter() - t, flush=True)
    """
)


def savedmodel_vs_predict(model, pixels, rounds, workdir, tag):
    """(predict_on_batch s, SavedModel s in a keras-free process, max |logit diff|)."""
    from keras_vit.export import export_saved_model

    path = os.path.join(workdir, f"sm_{tag}")
    export_saved_model(model, path)
    images, out = os.path.join(workdir, "pixels.npy"), os.path.join(workdir, f"{tag}.npy")
    np.save(images, pixels)
    script = os.path.join(workdir, "serve.py")
    with open(script, "w") as f:
        f.write(SERVER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [sys.executable, script, path, images, out],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "ready", "the serving process failed"
        ours, theirs = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            reference = np.asarray(model.predict_on_batch(pixels), np.float32)
            ours.append(time.perf_counter() - t)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            theirs.append(float(proc.stdout.readline()))
    finally:
        proc.stdin.close()
        proc.wait()
    diff = float(np.max(np.abs(np.load(out) - reference)))
    return statistics.median(ours), statistics.median(theirs), diff


# --- TFLite float32 vs full-integer int8 ------------------------------------------------------
def tflite_float_vs_int8(name, rounds, workdir, held_out=200):
    """(float32 img/s, int8 img/s, top-1 agreement, logits correlation) of TFLite files."""
    import tensorflow as tf

    from keras_vit.export import calibration_digits, export_tflite, select_ops

    model = keras_vit.create_model(name)
    rng = np.random.default_rng(0)
    for v in model.weights:  # off the init: tokens at 1e-6 make every image look alike
        v.assign((np.asarray(v) + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype))
    size = image_size(name)
    runners = {}
    for quantization in (None, "int8"):
        path = export_tflite(
            model, os.path.join(workdir, f"{name}.{quantization}.tflite"), quantization=quantization
        )
        assert select_ops(path) == [], select_ops(path)
        interpreter = tf.lite.Interpreter(model_path=path, num_threads=torch.get_num_threads())
        runners[quantization or "f32"] = interpreter.get_signature_runner("serving_default")
    images = calibration_digits(size, held_out, offset=1000)
    logits = {k: tflite_logits(run, images) for k, run in runners.items()}
    corr, top1 = agreement(logits["int8"], logits["f32"])
    steps = {k: (lambda r=run: r(images=images[:1])) for k, run in runners.items()}
    seconds = interleaved(steps, rounds * 5)
    return 1 / seconds["f32"], 1 / seconds["int8"], top1, corr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--refs", default=",".join(REFS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--savedmodel", action="store_true")
    parser.add_argument("--tflite", action="store_true")
    args = parser.parse_args()
    try:
        args.models = expand_models(args.models)
    except ValueError as err:
        parser.error(str(err))
    precisions = [p for p in args.precisions.split(",") if p]
    refs = [r for r in args.refs.split(",") if r]
    known = PRECISIONS + WHOLE_BATCH + GRAPH_ONLY
    for bad in set(precisions) - set(known) | set(refs) - set(REFS):
        parser.error(f"unknown column {bad!r}; precisions {known}, refs {REFS}")

    cpu, flags = cpu_description()
    print(f"CPU: {cpu}; " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()))
    parts = inference_parts()  # 2 (halves) unless TF has one intra-op thread
    intra = thread_setting("intra") or "default"
    chains = parts if intra == 1 else 1
    f32_rate = matmul_gflops("float32", chains=chains)
    bf16_rate = matmul_gflops("bfloat16", chains=chains)
    print(
        f"threads: torch {torch.get_num_threads()}, TF intra-op {intra} (a batch in {parts} "
        f"parts), batch {args.batch}, {args.rounds} interleaved rounds, median; TF 4096^3 "
        f"matmul ({chains} side by side): float32 {f32_rate:.0f} GFLOP/s, "
        f"bfloat16 {bf16_rate:.0f} GFLOP/s"
    )
    print("images/s; [corr, top-1] of logits vs the float32 model for reduced precision")
    order = [f"keras_{p}" for p in precisions] + refs
    widths = {c: max(10, len(c)) for c in order}
    print(f"{'model':30s} {'GFLOP':>6s} " + " ".join(f"{c:>{widths[c]}s}" for c in order))
    accuracy_lines, share_lines, saved_lines, ratio_rows = [], [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            torch.manual_seed(0)
            ref = randomize_timm_model(timm.create_model(name).eval(), seed=0)
            h, w = image_size(name)
            pixels = structured_pixels(args.batch, h, w, seed=1)
            columns = build_columns(name, ref, pixels, precisions, refs, workdir)
            gflops = model_gflops(ref, timm_input(ref, pixels))
            steps = {k: step for k, (step, _) in columns.items()}
            outputs = {k: step() for k, step in steps.items()}  # warm-up and the logits
            for step in steps.values():
                step()
            seconds = interleaved(steps, args.rounds)
            rates = {k: args.batch / s for k, s in seconds.items()}
            print(
                f"{name:30s} {gflops:6.2f} "
                + " ".join(
                    f"{rates[c]:{widths[c]}.2f}" if c in rates else f"{'-':>{widths[c]}s}"
                    for c in order
                ),
                flush=True,
            )
            ratio_rows.append((name, speed_ratios(rates)))
            for column, out in outputs.items():
                base = "keras_f32" if column.startswith("keras") else "timm_f32"
                reduced = column.endswith(("bf16", "int8"))
                if column != base and base in outputs and reduced:
                    corr, top1 = agreement(out, outputs[base])
                    accuracy_lines.append(
                        f"{name:30s} {column:10s} corr {corr:.5f} top-1 {top1:.3f}"
                    )
            float32 = ("keras_f32", "keras_f32_whole", "keras_f32_graph", "timm_f32", "ort_f32")
            for column in float32 + ("keras_onnx",):
                if column in rates:
                    share = gflops * rates[column] / f32_rate
                    share_lines.append(f"{name:30s} {column:10s} {share:6.1%} of the f32 rate")
            if args.savedmodel:
                for column in ("keras_bf16", "keras_int8"):
                    if column in columns:
                        model = columns[column][1]
                        p, s, d = savedmodel_vs_predict(model, pixels, args.rounds, workdir, column)
                        saved_lines.append(
                            f"{name:30s} {column:10s} predict_on_batch {args.batch / p:7.2f} "
                            f"SavedModel {args.batch / s:7.2f} img/s ({p / s:.2f}x), "
                            f"max |logit diff| {d:.2e}"
                        )
            del columns, steps
    print("\naccuracy vs float32 (structured images, random weights):")
    print("\n".join(accuracy_lines))
    print("\nshare of the float32 matmul rate:")
    print("\n".join(share_lines))
    labels = [label for label, _, _ in RATIOS if any(label in r for _, r in ratio_rows)]
    if labels:
        print("\nkeras_vit / reference, images/s of this run:")
        print(f"{'model':30s} " + " ".join(f"{label:>19s}" for label in labels))
        for name, ratios in ratio_rows:
            cells = [f"{ratios[lb]:19.2f}" if lb in ratios else f"{'-':>19s}" for lb in labels]
            print(f"{name:30s} " + " ".join(cells))
    if saved_lines:
        print("\nSavedModel (keras-free process) vs predict_on_batch, alternating:")
        print("\n".join(saved_lines))
    if args.tflite:
        print("\nTFLite interpreter, batch 1: float32 vs full-integer int8 (digits calibration)")
        names = ["deit_tiny_patch16_224"] + [m for m in args.models if m.startswith("mobilevit")]
        with tempfile.TemporaryDirectory() as workdir:
            for name in names:
                f32, int8, top1, corr = tflite_float_vs_int8(name, args.rounds, workdir)
                print(
                    f"{name:30s} float32 {f32:7.2f} int8 {int8:7.2f} img/s ({int8 / f32:.2f}x); "
                    f"int8 vs float32 on 200 held-out digits: top-1 {top1:.3f}, corr {corr:.4f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
