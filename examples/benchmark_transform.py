"""Throughput of the evaluation transform: keras_vit's (TensorFlow ops in tf.data) beside timm's
(PIL in a torch DataLoader), on the same generated JPEG files, with the same number of
workers/threads, decode + resize + crop only (no model).

    python examples/benchmark_transform.py [--images 400] [--workers 2]
        [--checkpoint deit_small_patch16_224.fb_in1k]

Prints images/s of both and the CPU. Needs timm (and torch); torch is imported before
TensorFlow (the other order crashes this TF/torch pairing).
"""

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import timm  # noqa: F401  (timm and torch first: before TensorFlow)
import torch
from PIL import Image


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_files(root, n, seed=0):
    """ImageNet-like JPEGs: 4:2:0, quality 90, sizes around 500x375, both orientations."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "class0"), exist_ok=True)
    paths = []
    for i in range(n):
        h, w = (375, 500) if i % 3 else (500, 333)
        h, w = h + int(rng.integers(-40, 40)), w + int(rng.integers(-40, 40))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        f = rng.uniform(2, 12, 3)
        base = np.stack([np.sin(f[0] * xx + 3 * yy), np.cos(f[1] * yy), np.sin(f[2] * xx * yy)], -1)
        pixels = np.clip(127.5 + 90 * base + 20 * rng.standard_normal((h, w, 3)), 0, 255)
        paths.append(os.path.join(root, "class0", f"{i:05d}.jpg"))
        Image.fromarray(pixels.astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def bench_timm(root, cfg, workers, batch_size, repeats):
    from timm.data import create_dataset, create_transform

    transform = create_transform(
        input_size=(3, *cfg.input_size),
        crop_pct=cfg.crop_pct,
        crop_mode=cfg.crop_mode,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )
    dataset = create_dataset(root=root, name="", split="validation", transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=True,
        # fresh worker processes: a fork of a process that has loaded TensorFlow crashes
        multiprocessing_context="spawn",
    )
    for _ in loader:  # warm-up: workers started, files in the page cache
        pass
    start = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - start)


def bench_keras_vit(paths, cfg, threads, batch_size, repeats):
    import tensorflow as tf

    from keras_vit.data.transform import EvalTransform

    transform = EvalTransform.from_cfg(cfg)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(
        lambda p: tf.cast(transform.from_bytes(tf.io.read_file(p)), tf.float32),
        num_parallel_calls=threads,
    )
    ds = ds.batch(batch_size).prefetch(2).with_options(options)
    for _ in ds:  # warm-up: the graph traced
        pass
    start = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for x in ds:
            n += int(x.shape[0])
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers / tf.data threads"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--checkpoint", default="deit_small_patch16_224.fb_in1k")
    args = parser.parse_args()

    from keras_vit.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(args.checkpoint)
    with tempfile.TemporaryDirectory() as root:
        paths = make_files(root, args.images)
        print(
            f"{args.images} JPEGs (~500x375, 4:2:0) -> {args.checkpoint}'s eval transform "
            f"({cfg.input_size[0]}x{cfg.input_size[1]}, crop_pct {cfg.crop_pct}, "
            f"{cfg.interpolation}); {args.workers} workers/threads; CPU: {cpu_name()}, "
            f"{os.cpu_count()} cores visible"
        )
        timm_ips = bench_timm(root, cfg, args.workers, args.batch_size, args.repeats)
        print(f"  timm (PIL, torch DataLoader, {args.workers} workers): {timm_ips:8.1f} images/s")
        ours = bench_keras_vit(paths, cfg, args.workers, args.batch_size, args.repeats)
        print(f"  keras_vit (TF ops, tf.data, {args.workers} threads): {ours:8.1f} images/s")
        print(f"  ratio keras_vit / timm: {ours / timm_ips:.2f}")


if __name__ == "__main__":
    main()
