"""One shared helper for every family's parity tests against timm.

Parity on random weights only proves something when *every* parameter and buffer is
randomised at a scale that keeps activations alive, and the inputs have structure: see
DESIGN.md ("How correctness is shown").
"""

import math
import os
import textwrap

import numpy as np

ATOL = 1e-4


def randomize_timm_model(model, seed=0):
    """Randomise every parameter and buffer of a timm model in place, at useful scales.

    Linear/conv weights ~ N(0, 1/fan_in) (conv 1.3x), norm weights ~ 1 + N(0, 0.1^2), biases
    and norm shifts ~ N(0, 0.1^2), BatchNorm running mean ~ N(0, 0.1^2), running var in
    [0.5, 1.5], everything else (tokens, position embedding, layer scale) ~ N(0, 0.2^2).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        return mean + std * torch.randn(t.shape, generator=gen, dtype=t.dtype)

    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
    with torch.no_grad():
        done = set()
        for module in model.modules():
            params = dict(module.named_parameters(recurse=False))
            buffers = dict(module.named_buffers(recurse=False))
            if isinstance(module, norm_types):
                for name, p in params.items():
                    p.copy_(normal(p, 0.1, 1.0 if name == "weight" else 0.0))
                if "running_mean" in buffers:
                    buffers["running_mean"].copy_(normal(buffers["running_mean"], 0.1))
                    var = buffers["running_var"]
                    var.copy_(0.5 + torch.rand(var.shape, generator=gen, dtype=var.dtype))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                w = params["weight"]
                fan_in = math.prod(w.shape[1:])
                gain = 1.3 if isinstance(module, torch.nn.Conv2d) else 1.0
                w.copy_(normal(w, gain / math.sqrt(fan_in)))
                if params.get("bias") is not None:
                    params["bias"].copy_(normal(params["bias"], 0.1))
            else:
                for p in params.values():
                    p.copy_(normal(p, 0.2))
            done.update(id(p) for p in params.values())
        missed = [n for n, p in model.named_parameters() if id(p) not in done]
        assert not missed, f"parameters left at their init: {missed}"
    return model


def structured_images(n, height, width, seed=0, channels=3):
    """NCHW float32 images: a random low-frequency pattern plus a little noise, ~N(0, 1).

    Smooth structure keeps the inputs distinguishable after many layers, where i.i.d. noise
    averages out and every image gives almost the same logits.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, channels, 4, 4))
    ys = np.linspace(0, 3, height)
    xs = np.linspace(0, 3, width)
    y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    c = coarse
    img = (
        c[:, :, y0][:, :, :, x0] * (1 - fy) * (1 - fx)
        + c[:, :, y0 + 1][:, :, :, x0] * fy * (1 - fx)
        + c[:, :, y0][:, :, :, x0 + 1] * (1 - fy) * fx
        + c[:, :, y0 + 1][:, :, :, x0 + 1] * fy * fx
    )
    img = img + 0.1 * rng.standard_normal(img.shape)
    return img.astype(np.float32)


def structured_pixels(n, height, width, seed=0):
    """NHWC float32 RGB pixel values in 0..255 with the structure of `structured_images`: for
    tests of the 0..255 preprocessing path (uniform noise pixels give near-identical logits)."""
    images = nchw_to_nhwc(structured_images(n, height, width, seed=seed))
    return np.clip(127.5 + 60.0 * images, 0.0, 255.0).astype(np.float32)


def nchw_to_nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def save_timm_safetensors(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def timm_forward(model, images_nchw):
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(images_nchw))
    if isinstance(out, (tuple, list)):
        return [o.numpy() for o in out]
    return out.numpy()


def assert_parity(ours, reference, atol=ATOL, discriminative=True):
    """max |ours - reference| <= atol, and (if asked) the reference separates the images."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    diff = float(np.max(np.abs(ours - reference)))
    assert diff <= atol, f"max |diff| {diff:.3g} > {atol}"
    if discriminative and reference.shape[0] > 1:
        spread = float(np.max(np.abs(reference[0] - reference[1])))
        assert spread > 0.05, f"test inputs give near-identical outputs (spread {spread:.3g})"
    return diff


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(REPO_ROOT, "tests")


def agreement(out, reference):
    """(correlation of the logits, top-1 agreement as a fraction) of `out` against `reference`,
    both (N, classes): what a reduced-precision model keeps of its float32 model's answers."""
    corr = float(np.corrcoef(out.ravel(), reference.ravel())[0, 1])
    top1 = float(np.mean(out.argmax(-1) == reference.argmax(-1)))
    return corr, top1


def tflite_logits(run, images):
    """`logits` (N, classes) of a batch-1 TFLite signature runner, one image per call."""
    return np.concatenate([run(images=images[i : i + 1])["logits"] for i in range(len(images))])


def subprocess_env(*, keep_tf_log_level=True, **overrides):
    """The environment for a test's child Python: this checkout's `keras_vit` and `tests/` on
    PYTHONPATH, TensorFlow's start-up logging quiet, no inherited TF_CONFIG.

    `keep_tf_log_level=False` removes TF_CPP_MIN_LOG_LEVEL (the CLI sets its own); every
    keyword sets one variable (None removes it), e.g. `CUDA_VISIBLE_DEVICES=""`.
    """
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    path = [REPO_ROOT, TESTS_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    if keep_tf_log_level:
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    else:
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def local_workers(n):
    """`n` "127.0.0.1:PORT" addresses on ports free right now (a cluster on this machine)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return [f"127.0.0.1:{p}" for p in ports]


def launch_train_workers(workers, args, outputs, tmpdirs=None):
    """One `python -m keras_vit train *args --output outputs[i]` per address of `workers`, as
    task i of a TF_CONFIG cluster of those workers (CPU only; `tmpdirs[i]`, if given, as its
    TMPDIR: a machine of its own). Started, not waited for: see `finish_processes`."""
    import json
    import subprocess
    import sys

    procs = []
    for index in range(len(workers)):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = subprocess_env(CUDA_VISIBLE_DEVICES="", TF_CONFIG=json.dumps(config))
        if tmpdirs is not None:
            env["TMPDIR"] = str(tmpdirs[index])
        cmd = [sys.executable, "-m", "keras_vit", "train", *args, "--output", str(outputs[index])]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


def finish_processes(procs, timeout):
    """[(stdout, stderr)] of each process, waiting up to `timeout` s for each; whatever is
    still running afterwards (a timeout, an assertion) is killed, so no worker outlives its
    test."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def without_packages_prelude(*packages):
    """The first lines of a script run in a fresh interpreter as on a host where `packages`
    (top-level names) are not installed: a meta-path finder wrapping every other one refuses
    them, so importing one raises ModuleNotFoundError, and the script stops if the first can
    still be imported."""
    return textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Without(importlib.abc.MetaPathFinder):
            def __init__(self, finders):
                self.finders = finders

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {packages!r}:
                    return None
                for finder in self.finders:
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        return spec
                return None

        sys.meta_path[:] = [Without(list(sys.meta_path))]
        try:
            import {packages[0]}  # noqa: F401
            raise SystemExit("{packages[0]} is still importable")
        except ModuleNotFoundError:
            pass
        """
    )


# A TF Serving host: TensorFlow alone, no keras, keras_vit or tf_keras.
WITHOUT_KERAS_PRELUDE = (
    without_packages_prelude("keras", "keras_vit", "tf_keras") + "import tensorflow as tf\n"
)
# The GPU host: JAX, torch and timm, no TensorFlow (../shared/gpu/README.md).
WITHOUT_TENSORFLOW_PRELUDE = without_packages_prelude("tensorflow", "tf_keras")


def require_onednn_graph():
    """Skip unless the backend is TensorFlow on a oneDNN CPU build: the fused oneDNN kernels
    that the graph-form tests look for exist nowhere else."""
    import keras
    import pytest

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's graph only")
    from keras_vit.layers.trace_context import onednn_cpu

    if not onednn_cpu():
        pytest.skip("this TensorFlow build has no oneDNN: there is no fused kernel to run")


def executed_ops(fn, x, logdir):
    """Op types that ran in one call of the tf.function `fn`, from TF's profiler trace."""
    import glob

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    fn(x)  # traced and optimised before the profile
    tf.profiler.experimental.start(str(logdir))
    fn(x)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb")[-1], "rb") as f:
        space.ParseFromString(f.read())
    ops = []
    for plane in space.planes:
        for line in plane.lines:
            if line.name.startswith("tf_Compute"):
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    ops.append(name.split(":")[-1])
    return ops
