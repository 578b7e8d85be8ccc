"""Inference with the batch cut into two halves that run side by side, on TensorFlow's CPU graph.

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
Under XLA (the float32 training of some families, int8) the cluster is one program and
gains little (1.03x-1.08x), so it keeps the whole batch. Whether a model takes the halves:
`keras_vit.models.base.halves_batch`.
"""

import contextlib


def run_in_halves(run, x, branch_unknown=True):
    """`run(x)` (a structure of `(N, ...)` tensors) computed as `run` of `x[:h]` and of
    `x[h:]`, `h = ceil(N / 2)`, concatenated along the batch. A batch of one runs whole (an
    empty half does not run: TensorFlow's kernels reject empty batches). An unknown batch size
    (a relaxed trace, a SavedModel signature) chooses at run time with a `tf.cond`, or, with
    `branch_unknown=False`, runs whole: inside a `tf.cond` branch the frozen kernels
    (frozen_kernels.py) arrive through the branch's `Switch`, not as `Const` nodes, and
    oneDNN then runs them as variables, slower and not bit-equal to the traced-shape form."""
    import tensorflow as tf

    def halves():
        h = (tf.shape(x)[0] + 1) // 2
        first, second = run(x[:h]), run(x[h:])
        return tf.nest.map_structure(lambda a, b: tf.concat([a, b], 0), first, second)

    batch = x.shape[0]
    if batch is not None:
        return halves() if batch >= 2 else run(x)
    if not branch_unknown:
        return run(x)
    return tf.cond(tf.shape(x)[0] >= 2, halves, lambda: run(x))


def run_traced_inference(run, x, snapshot=None, halves=False):
    """`run(x)` as TF-graph inference traces it (`predict_step`, the SavedModel): under
    `snapshot`'s frozen kernels (a `KernelSnapshot`, frozen_kernels.py) where one is given,
    in two halves where `halves` (run whole on an unknown batch when kernels are frozen)."""
    with contextlib.nullcontext() if snapshot is None else snapshot.frozen():
        if not halves:
            return run(x)
        return run_in_halves(run, x, branch_unknown=snapshot is None)
