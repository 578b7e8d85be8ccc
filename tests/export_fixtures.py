"""Shared by the export, TFLite, attention and CLI tests: small models with every weight
randomised (no timm needed: these tests compare keras_vit with its own exports), and uint8
images with structure, so that 1e-4 agreement means something."""

import numpy as np
from helpers import nchw_to_nhwc, structured_images

# The registered names the ONNX and TFLite export tests run, at test size (constructor
# overrides): one of each family, every weight randomised by `randomize_keras_model`
EXPORT_MODELS = {
    "vit_tiny_patch16_224": dict(image_size=32, depth=2),
    "deit_tiny_distilled_patch16_224": dict(image_size=32, depth=2),
    "mobilevit_xxs": dict(image_size=64, transformer_depths=(1, 1, 1)),
    # 80: stages 3 and 4 (5x5, 3x3) take the align-corners resize, as gathers
    "mobilevitv2_050": dict(image_size=80, transformer_depths=(1, 1, 1)),
}


def randomize_keras_model(model, seed=0):
    """Every variable random at a healthy scale: kernels ~ N(0, 1/fan_in) (convolutions a
    little more), LayerNorm/BatchNorm scales around 1, biases and shifts small, BatchNorm
    variances in [0.5, 1.5]. Default init (zero biases, unit scales) would hide mistakes."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape, name = tuple(var.shape), var.path
        if name.endswith(("gamma", "scale")) or "moving_variance" in name:
            value = (
                rng.uniform(0.5, 1.5, shape)
                if "moving_variance" in name
                else 1.0 + 0.1 * rng.standard_normal(shape)
            )
        elif len(shape) >= 2:
            # a depthwise kernel (kh, kw, C, 1) sees kh * kw inputs per output
            depthwise = len(shape) == 4 and shape[-1] == 1
            fan_in = int(np.prod(shape[:2] if depthwise else shape[:-1]))
            gain = 1.3 if len(shape) == 4 else 1.0
            value = gain * rng.standard_normal(shape) / np.sqrt(fan_in)
        else:
            value = 0.1 * rng.standard_normal(shape)
        var.assign(value.astype(np.float32))
    return model


def uint8_images(n, height, width, seed=0):
    """`(n, H, W, 3)` uint8 RGB with low-frequency structure (PNG round trips exactly)."""
    x = nchw_to_nhwc(structured_images(n, height, width, seed=seed))
    return np.clip(127.5 + 60.0 * x, 0, 255).round().astype(np.uint8)


def assert_discriminative(logits, min_gap=1e-2):
    """Two different images must give clearly different outputs, or parity proves nothing."""
    gap = float(np.abs(logits[0] - logits[1]).max())
    assert gap > min_gap, f"outputs barely depend on the input (max gap {gap:.2e})"


def timm_eval_steps(transform=None, timm_model=None):
    """timm's evaluation transform up to `ToTensor` (PIL in, PIL out): from a timm model's
    `resolve_data_config({}, model=m)`, or from an `EvalTransform`'s settings."""
    from timm.data import create_transform, resolve_data_config

    if timm_model is not None:
        t = create_transform(**resolve_data_config({}, model=timm_model))
    else:
        t = create_transform(
            input_size=(3, *transform.input_size),
            crop_pct=transform.crop_pct,
            crop_mode=transform.crop_mode,
            interpolation=transform.interpolation,
            mean=transform.mean,
        )
    steps = t.transforms
    tail = [type(s).__name__ for s in steps[-2:]]
    assert tail in (["ToTensor", "Normalize"], ["MaybeToTensor", "Normalize"]), steps
    return steps[:-2], t


def timm_eval_pixels(data, steps):
    """timm's pipeline on encoded bytes: `Image.open(f).convert("RGB")` then `steps`;
    uint8 `(H, W, 3)`."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        image = im.convert("RGB")
    for step in steps:
        image = step(image)
    return np.asarray(image)


def randomized_export_model(name):
    """`EXPORT_MODELS[name]` built and randomised, the same weights for every export test."""
    import keras_vit

    model = keras_vit.create_model(name, **EXPORT_MODELS[name])
    return randomize_keras_model(model, seed=len(name))
