"""CPU inference throughput of keras_vit (TF backend) beside timm eager, in one process.

Usage: python examples/benchmark_cpu.py [MODEL ...] [--batch 8] [--seconds 20]

keras_vit is used as a user would: `create_model(...)` then `predict_on_batch`, nothing else
(the models default to XLA, see keras_vit/models/base.py). timm runs eager in `torch.inference_mode()`. Both float32, same
batch, warmed up first; each side is timed for about `--seconds` and the median batch time
gives images/s.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import timm  # noqa: E402  (torch before TensorFlow: the other import order crashes)
import torch  # noqa: E402

import keras_vit  # noqa: E402

# every model of the README table
DEFAULT_MODELS = ["vit_small_patch16_224", "vit_base_patch16_224", "mobilevit_xxs", "mobilevit_s"]


def _time(step, seconds, warmup=3):
    for _ in range(warmup):
        step()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(name, batch, seconds):
    import numpy as np

    spec = keras_vit.registry.get_spec(name)
    size = spec.arch.get("image_size", 224)
    h, w = (size, size) if isinstance(size, int) else size
    images = np.random.default_rng(0).uniform(0, 255, (batch, h, w, 3)).astype("float32")

    model = keras_vit.create_model(name)
    ours = _time(lambda: model.predict_on_batch(images), seconds)

    ref = timm.create_model(name).eval()
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def timm_step():
        with torch.inference_mode():
            ref(x)

    theirs = _time(timm_step, seconds)
    return batch / ours, batch / theirs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch}, float32, CPU")
    print(f"{'model':32s} {'keras_vit img/s':>16s} {'timm eager img/s':>17s} {'ratio':>7s}")
    for name in args.models:
        ours, theirs = bench(name, args.batch, args.seconds)
        print(f"{name:32s} {ours:16.2f} {theirs:17.2f} {ours / theirs:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
