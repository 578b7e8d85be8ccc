"""Inference with the batch cut into parts (two halves) run side by side, on TensorFlow's CPU graph.

Why: on TensorFlow's oneDNN graph the ops of one batch form a single chain, each oneDNN
primitive hands its work to the intra-op pool and waits for it, and the ops that do not
split well over the cores (LayerNorm, softmax, transposes, the small convolutions and matmuls
of the later stages) leave cores idle between and inside them. Two halves of the batch are
two independent chains of one graph: TensorFlow's executor runs them on its two inter-op
threads at once, so one half's poorly parallel op overlaps the other half's. Inference has no
batch statistics, so every image's answer is its own either way (measured: identical logits).

Measured (stop 28, AMD EPYC with avx512_bf16, 2 cores, batch 8, `predict_on_batch`):
`examples/benchmark_cpu.py ... --precisions f32,f32_whole,bf16,bf16_whole,int8` (one process
with timm and ONNX Runtime, interleaved), halves / whole: float32 DeiT-S 1.05x, ViT-B 0.99x,
MobileViT-S 1.08x, -XXS 1.08x, v2 0.5 1.01x, v2 1.0 0.95x; bfloat16 1.13x, 1.02x, 1.06x,
1.06x, 1.08x, 1.09x. A second run gave float32 ViT-B 1.05x, v2 0.5 1.11x, v2 1.0 0.96x:
within this machine's run-to-run spread the float32 gain is 0 to 10%, bf16's is steadier.
Under XLA (int8, an explicit `jit_compile=True`) each half is an XLA program of its own
(`run_traced_inference`): halves inside one program gained little (1.03x-1.08x), since it
runs its ops one after another. Whether a model takes the halves:
`keras_vit.models.base.halves_batch`; a user who gives TensorFlow one intra-op thread gets one
part per inter-op thread instead (`inference_parts`).
"""

import contextlib
import os


def inference_parts():
    """How many side-by-side parts a known batch is cut into: one per inter-op thread where
    TensorFlow's intra-op pool has a single thread (`TF_NUM_INTRAOP_THREADS=1`, or
    `tf.config.threading.set_intra_op_parallelism_threads(1)` before the first op), else two.

    Why: with one intra-op thread every op runs on the thread that starts it, so each part is
    a chain on its own core with no hand-off to a pool and no waiting for it (measured, stop
    29, 2-core AMD EPYC, batch 8, float32: MobileViT-XXS 240 against 211 img/s with the
    default pool, v2 0.5 235 against 181, -S 72 against 64). Such a user has given the cores
    to the inter-op pool, so the batch is cut into as many parts as it has threads (by
    default one per core); with the default intra-op pool two halves overlap best."""
    if thread_setting("intra") != 1:
        return 2
    return max(2, thread_setting("inter") or len(os.sched_getaffinity(0)))


def thread_setting(pool):
    """The thread count TensorFlow's `"intra"` or `"inter"` op pool was given, 0 for its
    default: the Python setting wins, else TensorFlow reads `TF_NUM_{INTRA,INTER}OP_THREADS`."""
    import tensorflow as tf

    getter = getattr(tf.config.threading, f"get_{pool}_op_parallelism_threads")
    return getter() or int(os.environ.get(f"TF_NUM_{pool.upper()}OP_THREADS") or 0)


# the most images a part (or a batch run whole) may hold to run as an XLA program where
# `run_traced_inference` gets `small_jit` (measured: see there)
SMALL_PART_IMAGES = 2


def _sized_run(part, run, run_small):
    """`run_small` for a part known to hold at most `SMALL_PART_IMAGES` images, else `run`."""
    small = part.shape[0] is not None and part.shape[0] <= SMALL_PART_IMAGES
    return run_small if small else run


def run_in_parts(run, x, parts=2, branch_scope=contextlib.nullcontext, run_small=None):
    """`run(x)` (a structure of `(N, ...)` tensors) computed as `run` of consecutive slices
    of `x` of `ceil(N / min(parts, N))` images each, concatenated along the batch. A batch
    of one runs whole (an empty slice does not run: TensorFlow's kernels reject empty
    batches). An unknown batch size (a relaxed trace, a SavedModel signature) runs as two
    halves or whole, chosen at run time with a `tf.cond` (one branch per part count would
    copy the graph once per count); each branch is traced inside its own `branch_scope()`.
    `run_small` (default `run`) runs what is known to be small: a part (or a known batch run
    whole) of at most `SMALL_PART_IMAGES` images, and the unknown batch's whole branch (a batch
    of one)."""
    import tensorflow as tf

    run_small = run_small or run

    def concat(pieces):
        return tf.nest.map_structure(lambda *a: tf.concat(a, 0), *pieces)

    def run_part(part):
        return _sized_run(part, run, run_small)(part)

    batch = x.shape[0]
    if batch is not None:
        count = min(parts, batch)
        if count < 2:
            return run_part(x)
        size = -(-batch // count)  # ceil: 8 in 3 parts is 3 + 3 + 2
        return concat([run_part(x[i : i + size]) for i in range(0, batch, size)])

    def halves():
        with branch_scope():
            h = (tf.shape(x)[0] + 1) // 2
            return concat([run(x[:h]), run(x[h:])])

    def whole():  # a batch of one (or none)
        with branch_scope():
            return run_small(x)

    return tf.cond(tf.shape(x)[0] >= 2, halves, whole)


def run_traced_inference(run, x, snapshot=None, halves=False, jit=False, small_jit=False):
    """`run(x)` as TF-graph inference traces it (`predict_step`, the SavedModel): under
    `snapshot`'s frozen kernels (a `KernelSnapshot`, frozen_kernels.py) where one is given,
    in side-by-side parts (`inference_parts()`) where `halves`, `run` compiled with XLA
    where `jit` (each part its own XLA program), and where `small_jit` a small part (at most
    `SMALL_PART_IMAGES` images; a batch of one) compiled with XLA while larger parts stay on
    the graph (`keras_vit.models.base.small_parts_xla`: float32 on a CPU), all but a model's
    `xla_tail_from` layers on, which run as an XLA program of their own
    (`keras_vit.models.base.XLAByDefault.xla_tail_from`).

    Small parts under XLA: a part of an image or two is a chain of small ops, and on
    TensorFlow's graph each oneDNN op hands its little work to the intra-op pool and waits
    for it; XLA's program fuses the elementwise ops between the matmuls and runs without the
    executor's per-op dispatch. Measured (2-core AMD EPYC, float32, `predict_on_batch`,
    in-process A/B, graph vs XLA img/s), batch 1: MobileViT-XXS 66.2 vs 96.0, v2 0.5 80.8 vs
    111.5, -XS 54.8 vs 63.9, -S 31.0 vs 33.4, v2 1.0 48.2 vs 54.3, DeiT-Ti 49.7 vs 79.0,
    DeiT-S 24.4 vs 27.8; batch 2 (parts of one): XXS 99.3 vs 151.7, -S 48.0 vs 56.7, DeiT-Ti
    75.1 vs 113.9; batch 4 (parts of two): XXS 150.0 vs 172.9, v2 0.5 142.0 vs 167.9, DeiT-Ti
    103.4 vs 124.2, DeiT-S 39.6 vs 41.1, -S 59.0 vs 56.8. At four images a part the graph is as
    fast or faster (batch 8: -XS 98.7 vs 82.2, -S 63.9 vs 58.4; XXS and v2 0.5 within the
    run-to-run spread), at 16 clearly (XXS 211.1 vs 182.1). An unknown batch (the SavedModel)
    runs only a batch of one under XLA: its `tf.cond` has no branch for two to four images.

    XLA in parts: one XLA program runs its ops one after another (each on the intra-op
    pool), so the parts of one program do not overlap; as separate programs (`XlaLaunch`
    ops of a plain graph) TensorFlow's executor runs them side by side like any two ops.
    Measured (stop 29, 2-core AMD EPYC, int8, batch 8, outputs within 1e-3 of the whole
    program): DeiT-S 37.5 -> 50.7 img/s, MobileViT-XXS 159.5 -> 178.7; with one intra-op
    thread 25.9 -> 50.5 and 96.6 -> 180.8.

    An unknown batch with frozen kernels makes the kernels' constants inside each branch of
    the `tf.cond`: constants made outside would enter the branches through their `Switch`,
    and oneDNN would then run them as variables (its plain-layout kernel: measured, stop 29,
    DeiT-S bf16 SavedModel, batch 8, 2-core AMD EPYC, 70.6 img/s against 75.1 (a first run:
    74.0 against 77.5), and 42.7 against 82.4 with one intra-op thread, where the old
    whole-batch fallback ran on one core; outputs bit-equal to `predict_on_batch` either
    way). What it costs: the SavedModel holds the frozen kernels once per branch (DeiT-S
    bf16: 136 MB -> 226 MB)."""
    import tensorflow as tf

    from keras_vit.layers.trace_context import xla_tail

    if jit:  # no frozen kernels under XLA: `snapshot` is None
        run = tf.function(run, jit_compile=True)
    run_small = tf.function(run, jit_compile=True) if small_jit and not jit else run
    # where small parts run under XLA, a larger part on the graph runs the model's
    # `xla_tail_from` layers on as an XLA program (models/base.py: `KerasViTModel.call`)
    with xla_tail() if small_jit and not jit else contextlib.nullcontext():
        if snapshot is not None and halves and x.shape[0] is None:
            return run_in_parts(
                run, x, inference_parts(), branch_scope=snapshot.frozen, run_small=run_small
            )
        with contextlib.nullcontext() if snapshot is None else snapshot.frozen():
            if not halves:
                return _sized_run(x, run, run_small)(x)
            return run_in_parts(run, x, inference_parts(), run_small=run_small)
