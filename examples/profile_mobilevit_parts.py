"""Where MobileViT's CPU time goes, part by part: keras_vit beside ONNX Runtime on timm's export.

Usage: python examples/profile_mobilevit_parts.py [MODEL] [--cuts stages_1_0,stages_2_0,...]
           [--batch 8] [--rounds 7] [--kernels]

The network (default `mobilevitv2_050`; any MobileViT v1 or v2 name) is cut before each layer
named in `--cuts` (default: each stage's first block, and the model's `xla_tail_from`), and
each part is timed on its own, fed the activations the part before it produces:

- keras_vit: the part as a functional model over the same layers, run as `predict` runs it
  on TensorFlow's CPU graph in float32: the batch as two halves side by side
  (keras_vit/models/batch_halves.py), the parts from `xla_tail_from` on as one XLA program
  per half, the parts before it on oneDNN's graph;
- ONNX Runtime: the same timm modules (timm's `ByobNet`: `stem`, `stages[i][j]`,
  `final_conv`, `head`) as a `torch.nn.Sequential` through `torch.onnx.export`, two threads.

Both run the same random network (every timm parameter randomised, loaded into keras_vit);
each part's output is compared with timm's (max |diff|, printed) so a wrong cut shows.
Timing as in examples/benchmark_cpu.py: interleaved rounds, each column a slot after a
0.2 s pause, the median time per call. The last line times both whole models the same way:
the sum of the parts' times is larger than the whole (each part is a separate call), so
read the parts against each other, not against the whole.

`--kernels` then says how much of each part's time its kernels take: for our graph parts the
sum of oneDNN's own primitive times (`ONEDNN_VERBOSE=profile_exec`, read in a child process,
since oneDNN reads that variable once at start) over both halves, halved because the halves
run side by side; for ONNX Runtime the sum of its node times (its own profiler). A part whose
kernels take nearly all of its time is behind in its kernels, not in the runtime around them.
"""

import argparse
import copy
import json
import os
import subprocess
import sys

import timm  # torch before TensorFlow: the other import order crashes
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from benchmark_cpu import interleaved, timm_input  # noqa: E402
from helpers import randomize_timm_model, structured_pixels  # noqa: E402

import keras_vit  # noqa: E402
from keras_vit.models.batch_halves import run_in_parts  # noqa: E402


def timm_modules(ref):
    """[(keras_vit layer name, timm module)] in the order a `ByobNet` runs them."""
    named = [("stem", ref.stem)]
    for i, stage in enumerate(ref.stages):
        named += [(f"stages_{i}_{j}", block) for j, block in enumerate(stage)]
    if not isinstance(ref.final_conv, torch.nn.Identity):
        named.append(("final_conv", ref.final_conv))
    return named + [("head", ref.head)]


def keras_part(model, start, end, xla):
    """`x -> model's layers from `start` to before `end`` (None: the model's input / output),
    run as two halves side by side, each half one XLA program where `xla`."""
    inputs = model.inputs if start is None else model.get_layer(start).input
    outputs = model.outputs if end is None else model.get_layer(end).input
    part = keras.Model(inputs, outputs)
    run = tf.function(lambda t: part(t, training=False), jit_compile=xla)
    return tf.function(lambda x: run_in_parts(run, x, parts=2))


def onnx_part(modules, x, path):
    """An ONNX Runtime session of `modules` in sequence, exported with input `x`. A copy is
    exported: TorchScript's exporter was seen to change a module's parameters in place
    (outputs off by 14 after exporting `stem` + `stages[0]` of MobileViT v2 0.5)."""
    with torch.inference_mode():
        torch.onnx.export(
            copy.deepcopy(torch.nn.Sequential(*modules)),
            (x,),
            path,
            input_names=["x"],
            dynamo=False,
        )
    return onnx_session(path)


def onnx_session(path, profile=False):
    """ONNX Runtime on the exported `path`, torch's thread count; `profile`: with its
    profiler on, writing next to `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.enable_profiling = profile
    if profile:
        options.profile_file_prefix = path[: -len(".onnx")]
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


CALLS = 5  # calls per part whose kernel times are summed (after warm-up)
MARK = "=====part"


def onednn_child(model_name, batch, spans):
    """In a process started with ONEDNN_VERBOSE=profile_exec: run each graph part
    (`start:end` layer names, "" for the model's input; the graph parts follow one another
    from the input, so each is fed the one before's output) `CALLS` times between marker
    lines, so the parent can sum the primitives each part executed."""
    model = keras_vit.create_model(model_name)
    size = model.inputs[0].shape[1]
    x = tf.constant(structured_pixels(batch, size, size, seed=0))
    for span in spans:
        start, end = (name or None for name in span.split(":"))
        part = keras_part(model, start, end, xla=False)
        for _ in range(3):
            part(x).numpy()
        print(f"{MARK} {span}", flush=True)
        for _ in range(CALLS):
            part(x).numpy()
        print(f"{MARK} end", flush=True)
        x = part(x)


def onednn_kernel_ms(model_name, batch, spans):
    """{span: ms per call of oneDNN primitives, summed over both halves and halved}."""
    args = [__file__, model_name, "--batch", str(batch), "--onednn-child", ",".join(spans)]
    env = dict(os.environ, ONEDNN_VERBOSE="profile_exec")
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the oneDNN-logging child failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout
    totals, span = {}, None
    for line in out.splitlines():
        if line.startswith(MARK):
            span = None if line.endswith(" end") else line.split()[1]
            totals.setdefault(span, 0.0)
        elif span and line.startswith("onednn_verbose,") and ",exec," in line:
            totals[span] += float(line.rsplit(",", 1)[1])  # the last field: ms
    silent = [span for span in spans if not totals.get(span)]
    if silent:  # no primitive logged: not oneDNN's graph (TF_ENABLE_ONEDNN_OPTS=0?), not 0 ms
        raise RuntimeError(f"oneDNN logged no primitive for the parts {silent}")
    return {span: totals[span] / CALLS / 2 for span in spans}


def ort_kernel_ms(path, x):
    """ms per call of ONNX Runtime's nodes (its profiler) for the part exported to `path`,
    fed `x`: the node times of `CALLS` runs after 3 warm-up runs."""
    session = onnx_session(path, profile=True)
    feed = {"x": x.numpy()}
    for _ in range(3 + CALLS):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    since = runs[3]  # the first timed run's start (microseconds)
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return sum(e["dur"] for e in nodes if e["ts"] >= since) / 1e3 / CALLS


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default="mobilevitv2_050")
    parser.add_argument("--cuts", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--kernels", action="store_true")
    parser.add_argument("--onednn-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.onednn_child is not None:
        return onednn_child(args.model, args.batch, args.onednn_child.split(","))
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    ref = timm.create_model(args.model).eval()
    randomize_timm_model(ref)
    model = keras_vit.create_model(args.model)
    keras_vit.load_weights(model, {k: v.detach().numpy() for k, v in ref.state_dict().items()})
    tail = model.xla_tail_from
    named = timm_modules(ref)
    order = [name for name, _ in named]
    if args.cuts:
        cuts = args.cuts.split(",")
    else:  # before each stage's first block but stage 0's, and before the XLA tail
        cuts = [n for n in order if (n.endswith("_0") and n != "stages_0_0") or n == tail]
    unknown = [c for c in cuts if c not in order or c == "stem"]
    if unknown:
        raise SystemExit(f"--cuts: no cut before {unknown}; the layers are {order[1:]}")
    cuts = sorted(cuts, key=order.index)

    size = model.inputs[0].shape[1]
    pixels = structured_pixels(args.batch, size, size, seed=0)
    bounds = [None, *cuts, None]
    steps, parts, kernel_inputs = {}, [], {}
    x_timm = timm_input(ref, pixels)  # the whole model's input, NCHW, normalised
    x_keras, x_torch = tf.constant(pixels), x_timm
    with torch.inference_mode():
        ref_whole = ref(x_timm).numpy()
    workdir = os.path.join(os.environ.get("TMPDIR", "/tmp"), "keras_vit_profile_parts")
    os.makedirs(workdir, exist_ok=True)
    for k, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        first = 0 if start is None else order.index(start)
        last = len(order) if end is None else order.index(end)
        label = f"{order[first]}..{order[last - 1]}"
        # as predict runs it: from `xla_tail_from` on under XLA, before it on the graph
        xla = tail in order and order.index(tail) <= first
        ours = keras_part(model, start, end, xla)
        modules = [m for _, m in named[first:last]]
        session = onnx_part(modules, x_torch, f"{workdir}/{k}.onnx")
        feed_keras, feed_onnx = x_keras, {"x": x_torch.numpy()}
        kernel_inputs[label] = (f"{start or ''}:{end or ''}", f"{workdir}/{k}.onnx", x_torch)
        steps[(label, "keras")] = lambda f=ours, v=feed_keras: f(v).numpy()
        steps[(label, "ort")] = lambda s=session, v=feed_onnx: s.run(None, v)[0]
        x_keras = ours(feed_keras)
        with torch.inference_mode():
            x_torch = torch.nn.Sequential(*modules)(x_torch)
        ours_np = x_keras.numpy()
        theirs = x_torch.numpy()
        if theirs.ndim == 4:
            theirs = theirs.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        parts.append((label, "XLA" if xla else "graph", float(np.abs(ours_np - theirs).max())))
    whole = onnx_part([ref], x_timm, f"{workdir}/whole.onnx")
    whole_feed = {"x": x_timm.numpy()}
    steps[("whole model", "keras")] = lambda: np.asarray(model.predict_on_batch(pixels))
    steps[("whole model", "ort")] = lambda: whole.run(None, whole_feed)
    logits_diff = float(np.abs(np.asarray(model.predict_on_batch(pixels)) - ref_whole).max())
    seconds = interleaved(steps, args.rounds)

    print(f"{args.model}, batch {args.batch}, float32, ms per call (median of {args.rounds})")
    print(f"{'part':28s} {'runs on':8s} {'keras':>8s} {'ORT':>8s} {'keras/ORT':>10s}  max|diff|")
    ms = {key: 1e3 * s for key, s in seconds.items()}

    def row(label, where, keras_ms, ort_ms, tail=""):
        print(f"{label:28s} {where:8s} {keras_ms:8.2f} {ort_ms:8.2f} {tail}".rstrip())

    for label, where, diff in parts:
        k, o = ms[(label, "keras")], ms[(label, "ort")]
        row(label, where, k, o, f"{k / o:10.2f}  {diff:.1e}")
    total = [sum(ms[(label, side)] for label, _, _ in parts) for side in ("keras", "ort")]
    row("sum of the parts", "", *total)
    k, o = ms[("whole model", "keras")], ms[("whole model", "ort")]
    row("whole model", "predict", k, o, f"{k / o:10.2f}  {logits_diff:.1e}")
    if args.kernels:
        print_kernel_times(args, parts, kernel_inputs, ms)


def print_kernel_times(args, parts, kernel_inputs, ms):
    """The `--kernels` table: each part's time beside its kernels' (see the docstring)."""
    graph_spans = [kernel_inputs[label][0] for label, where, _ in parts if where == "graph"]
    onednn = onednn_kernel_ms(args.model, args.batch, graph_spans) if graph_spans else {}
    print(
        f"\nkernels, ms per call ({CALLS} calls): oneDNN primitives of our graph parts (both"
        " halves, halved), ONNX Runtime's nodes"
    )
    print(
        f"{'part':28s} {'keras':>8s} {'oneDNN':>8s} {'share':>6s} {'ORT':>8s} {'nodes':>8s} {'share':>6s}"
    )
    for label, where, _ in parts:
        span, onnx_path, x = kernel_inputs[label]
        theirs = ort_kernel_ms(onnx_path, x)
        k, o = ms[(label, "keras")], ms[(label, "ort")]
        ours = (
            f"{onednn[span]:8.2f} {onednn[span] / k:6.0%}"
            if where == "graph"
            else f"{'(XLA)':>8s} {'':6s}"
        )
        print(f"{label:28s} {k:8.2f} {ours} {o:8.2f} {theirs:8.2f} {theirs / o:6.0%}")


if __name__ == "__main__":
    main()
