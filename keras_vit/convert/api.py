"""`convert`: any supported checkpoint -> a Keras `.weights.h5` or `.keras` file, written only
after the converted model reproduces the source model's outputs (when the source framework is
installed: timm for timm files and `.npz`, transformers for Hugging Face directories).

The check runs at the source's own resolution and classifier width, both read from the
checkpoint (position-embedding length, head shape), on smooth random images; the written model
may then use another `image_size` / `num_classes` (resampled position embedding, fresh head).
"""

import logging
import math
import os
import sys

import numpy as np

logger = logging.getLogger("keras_vit")

_TIMM_SIZE_ARG = {"image_size": "img_size"}
_NOT_FOR_TIMM = ("include_preprocessing", "mean", "std", "name", "dtype")


def detect_format(source):
    """'huggingface', 'big_vision-npz', 'timm-safetensors' or 'timm-pth' (by path and keys)."""
    from keras_vit.convert import huggingface as hf

    path = os.fspath(source)
    if os.path.isdir(path):
        return "huggingface"
    if path.endswith(".npz"):
        return "big_vision-npz"
    if hf.read_config(path) is not None and path.endswith((".safetensors", ".bin")):
        from keras_vit.loading import _read_file

        if hf.looks_like_hf(_read_file(path)):
            return "huggingface"
    if path.endswith(".safetensors"):
        return "timm-safetensors"
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return "timm-pth"
    raise ValueError(f"Unknown checkpoint format for {path!r}.")


def smooth_images(n, height, width, seed=0):
    """(n, height, width, 3) float32: a random low-frequency pattern plus a little noise, so
    different images stay distinguishable after many layers (i.i.d. noise averages out)."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 4, 4, 3))
    ry = np.linspace(0, 3, height)[:, None]
    rx = np.linspace(0, 3, width)[None, :]
    y0, x0 = np.minimum(ry.astype(int), 2), np.minimum(rx.astype(int), 2)
    fy, fx = (ry - y0)[..., None], (rx - x0)[..., None]
    img = (
        coarse[:, y0, x0] * (1 - fy) * (1 - fx)
        + coarse[:, y0 + 1, x0] * fy * (1 - fx)
        + coarse[:, y0, x0 + 1] * (1 - fy) * fx
        + coarse[:, y0 + 1, x0 + 1] * fy * fx
    )
    return (img + 0.1 * rng.standard_normal(img.shape)).astype(np.float32)


def _native(model, state_dict):
    """(image_size, num_classes) the checkpoint was made for."""
    head = state_dict.get("head.weight", state_dict.get("head.fc.weight"))
    num_classes = int(head.shape[0]) if head is not None else 0
    size = getattr(model, "image_size", None)
    pos = state_dict.get("pos_embed")
    if pos is not None and hasattr(model, "patch_size"):
        grid = math.isqrt(pos.shape[1] - model.num_prefix_tokens)
        if grid * grid == pos.shape[1] - model.num_prefix_tokens:
            size = (grid * model.patch_size, grid * model.patch_size)
    return size, num_classes


def _timm_reference(fmt, source, arch, kwargs, size, num_classes):
    """A timm model with `source` loaded by timm's own loaders, or None without timm."""
    if "torch" not in sys.modules and "tensorflow" in sys.modules:
        return None  # importing torch after TensorFlow segfaults in this pairing
    try:
        import timm
        import torch
        from timm.models import load_checkpoint
        from timm.models._registry import model_entrypoint
    except ImportError:
        return None
    timm_kwargs = {_TIMM_SIZE_ARG.get(k, k): v for k, v in kwargs.items() if k not in _NOT_FOR_TIMM}
    timm_kwargs.update(num_classes=num_classes)
    if size is not None:
        timm_kwargs["img_size"] = tuple(size)
    try:
        ref = timm.create_model(arch, pretrained=False, **timm_kwargs).eval()
    except TypeError:  # a family without img_size (MobileViT): leave it to the model
        timm_kwargs.pop("img_size", None)
        ref = timm.create_model(arch, pretrained=False, **timm_kwargs).eval()
    if fmt == "big_vision-npz":
        ref.load_pretrained(os.fspath(source))  # timm's `_load_weights`
    else:
        module = sys.modules[model_entrypoint(arch).__module__]
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        load_checkpoint(ref, os.fspath(source), filter_fn=filter_fn, weights_only=True)

    def forward(nchw):
        with torch.no_grad():
            return ref(torch.from_numpy(nchw)).numpy()

    return forward


def _hf_reference(source):
    """The transformers model of a `save_pretrained` directory, or None without transformers."""
    if "torch" not in sys.modules and "tensorflow" in sys.modules:
        return None
    try:
        import torch
        from transformers import AutoModelForImageClassification
    except ImportError:
        return None
    path = os.fspath(source)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    ref = AutoModelForImageClassification.from_pretrained(folder).eval()
    # HF MobileViT takes BGR (its processor flips RGB); keras_vit's converted model takes RGB
    bgr = ref.config.model_type == "mobilevit"

    def forward(nchw):
        if bgr:
            nchw = np.ascontiguousarray(nchw[:, ::-1])
        with torch.no_grad():
            return ref(pixel_values=torch.from_numpy(nchw)).logits.numpy()

    return forward


def check_against_source(source, name, fmt=None, atol=1e-4, **kwargs):
    """max |logit diff| between keras_vit and the source framework on `source`, or None when
    that framework is not installed. Raises ValueError above `atol`."""
    from keras_vit.loading import read_state_dict
    from keras_vit.registry import create_model, split_name

    fmt = fmt or detect_format(source)
    state_dict = read_state_dict(source)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("image_size", "num_classes")}
    probe = create_model(name, include_preprocessing=False, **kwargs)
    size, num_classes = _native(probe, state_dict)
    if fmt == "huggingface":
        reference = _hf_reference(source)
    else:
        reference = _timm_reference(fmt, source, split_name(name)[0], kwargs, size, num_classes)
    if reference is None:
        return None
    twin = create_model(
        name,
        weights=source,
        include_preprocessing=False,
        image_size=size,
        num_classes=num_classes,
        **kwargs,
    )
    height, width = twin.input_shape[1:3]
    images = smooth_images(2, height, width, seed=height + width)
    ours = np.asarray(twin.predict_on_batch(images))
    ref = reference(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    if ours.shape != ref.shape:
        raise ValueError(f"keras_vit output {ours.shape} but the source model gives {ref.shape}.")
    diff = float(np.max(np.abs(ours - ref)))
    if not diff <= atol:
        raise ValueError(
            f"Converted {name} differs from the source model by max |diff| {diff:.3g} > {atol} "
            f"on {os.fspath(source)!r}; nothing was written."
        )
    return diff


def convert(source, model, output, check=True, atol=1e-4, **kwargs):
    """Convert checkpoint `source` into registered model `model` (name[.tag]) and write
    `output` (`.weights.h5`: weights only; `.keras`: the whole model).

    The file is written only after every tensor loaded (all or nothing) and, with `check`
    and the source framework installed, the outputs matched it within `atol`; the write goes
    through a temporary file, so a failure leaves no output. `kwargs` go to `create_model`
    (`num_classes`, `image_size`, architecture overrides). Returns a dict report.
    """
    from keras_vit.registry import create_model

    output = os.fspath(output)
    if not output.endswith((".weights.h5", ".keras")):
        raise ValueError(f"Output {output!r} must end in .weights.h5 or .keras.")
    fmt = detect_format(source)
    keras_model = create_model(model, weights=source, **kwargs)  # raises before any write
    diff = check_against_source(source, model, fmt, atol, **kwargs) if check else None
    if check and diff is None:
        logger.warning("%s: source framework not installed; outputs not compared.", source)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    suffix = ".weights.h5" if output.endswith(".weights.h5") else ".keras"
    tmp = os.path.join(folder, f".{os.path.basename(output)}.partial{suffix}")
    try:
        if suffix == ".keras":
            keras_model.save(tmp)
        else:
            keras_model.save_weights(tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"output": output, "format": fmt, "max_abs_diff": diff, "model": model}
