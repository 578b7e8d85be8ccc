"""`convert`: any supported checkpoint -> a Keras `.weights.h5` or `.keras` file, written only
after the converted model reproduces the source model's outputs.

The comparison runs whenever the source framework is installed (timm for timm files and
`.npz`, transformers for Hugging Face directories), whatever this process imported first: the
source model runs in a child Python that imports torch before anything else
(`keras_vit/convert/reference.py`), writes its logits to a temporary `.npy`, and this process
compares. A missing framework is said plainly; `require_check=True` makes it an error.

The check runs at the source's own resolution and classifier width, both read from the
checkpoint (position-embedding length, the model's `head_keys`), on smooth random images; the
written model may then use another `image_size` / `num_classes` (resampled position
embedding, fresh head). The checkpoint is read once; at most two models are built: the one
written and the one compared.
"""

import json
import logging
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

logger = logging.getLogger("keras_vit")

# keras_vit-only constructor arguments that timm's models do not take
_NOT_FOR_TIMM = ("include_preprocessing", "mean", "std", "name", "dtype", "image_size")
_REFERENCE_TIMEOUT_S = 900


class ReferenceUnavailable(RuntimeError):
    """The source framework (timm / transformers) is not installed: nothing to compare with."""


def detect_format(source):
    """'huggingface', 'big_vision-npz', 'timm-safetensors' or 'timm-pth', from the path (and a
    `.safetensors` header): which framework made the file. Reading the tensors is
    `keras_vit.loading.read_state_dict`'s job, not this one's."""
    from keras_vit.convert import huggingface as hf

    path = os.fspath(source)
    if os.path.isdir(path):
        return "huggingface"
    if path.endswith(".npz"):
        return "big_vision-npz"
    if path.endswith(".safetensors"):
        if hf.read_config(path) is not None and hf.looks_like_hf(_safetensors_keys(path)):
            return "huggingface"
        return "timm-safetensors"
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        config = hf.read_config(path)
        # a save_pretrained `pytorch_model.bin`: config.json with HF's `model_type` beside it
        return "huggingface" if config and "model_type" in config else "timm-pth"
    raise ValueError(f"Unknown checkpoint format for {path!r}.")


def _safetensors_keys(path):
    """The tensor names in a `.safetensors` header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return list(f.keys())
    except Exception:  # unreadable: the reader will say why, with the path
        return []


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
    """(image_size, num_classes) the checkpoint was made for: the classifier width from the
    model's own `head_keys`, the grid from the position-embedding length."""
    head = next(
        (state_dict[k] for k in model.head_keys if k.endswith(".weight") and k in state_dict),
        None,
    )
    num_classes = int(head.shape[0]) if head is not None else 0
    size = getattr(model, "image_size", None)
    pos = state_dict.get("pos_embed")
    if pos is not None and hasattr(model, "patch_size"):
        # the prefix tokens inside pos_embed: none with `no_embed_class` (DeiT III, FlexiViT)
        cells = pos.shape[1] - getattr(model, "pos_embed_prefix_tokens", model.num_prefix_tokens)
        grid = math.isqrt(cells)
        if grid * grid == cells:
            patch = model.patch_size
            ph, pw = (patch, patch) if isinstance(patch, int) else patch
            size = (grid * ph, grid * pw)
    return size, num_classes


def reference_logits(source, fmt, arch, images_nchw, timm_kwargs=None, img_size=None):
    """The source model's logits on `images_nchw` (float32 NCHW), computed in a child Python
    that imports torch first. Raises ReferenceUnavailable when the framework is missing."""
    from keras_vit.convert import reference

    kind = "huggingface" if fmt == "huggingface" else "timm"
    with tempfile.TemporaryDirectory(prefix="keras_vit_reference_") as tmp:
        job = {
            "kind": kind,
            "format": fmt,
            "source": os.path.abspath(os.fspath(source)),
            "arch": arch,
            "timm_kwargs": timm_kwargs or {},
            "img_size": list(img_size) if img_size is not None else None,
            "images": os.path.join(tmp, "images.npy"),
            "output": os.path.join(tmp, "logits.npy"),
        }
        np.save(job["images"], np.ascontiguousarray(images_nchw, np.float32))
        with open(os.path.join(tmp, "job.json"), "w") as f:
            json.dump(job, f)
        env = dict(os.environ, USE_TF="0")
        proc = subprocess.run(
            [sys.executable, reference.__file__, os.path.join(tmp, "job.json")],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            timeout=_REFERENCE_TIMEOUT_S,
        )
        if proc.returncode == reference.MISSING_EXIT:
            why = proc.stderr.strip().splitlines()[-1]
            raise ReferenceUnavailable(f"{why.removeprefix('MISSING ')} (in {sys.executable})")
        if proc.returncode != 0 or not os.path.isfile(job["output"]):
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise ValueError(
                f"The {kind} reference model for {os.fspath(source)!r} failed (exit "
                f"{proc.returncode}):\n{tail}\nPass check=False (--no-check) to convert "
                "without comparing."
            )
        return np.load(job["output"])


def _timm_kwargs(kwargs):
    out = {k: v for k, v in kwargs.items() if k not in _NOT_FOR_TIMM}
    json.dumps(out)  # the child takes them as JSON: tuples become lists, anything else raises
    return out


def _compare(source, fmt, name, state_dict, written, atol, kwargs):
    """max |logit diff| between keras_vit and the source framework; ValueError above `atol`,
    ReferenceUnavailable without the framework."""
    from keras_vit.registry import create_model, split_name

    size, num_classes = _native(written, state_dict)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("image_size", "num_classes")}
    twin = create_model(
        name,
        weights=state_dict,
        include_preprocessing=False,
        image_size=size,
        num_classes=num_classes,
        **kwargs,
    )
    height, width = twin.input_shape[1:3]
    images = smooth_images(2, height, width, seed=height + width)
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    timm_kwargs = {**_timm_kwargs(kwargs), "num_classes": num_classes}
    ref = reference_logits(source, fmt, split_name(name)[0], nchw, timm_kwargs, (height, width))
    ours = np.asarray(twin.predict_on_batch(images))
    if ours.shape != ref.shape:
        raise ValueError(f"keras_vit output {ours.shape} but the source model gives {ref.shape}.")
    diff = float(np.max(np.abs(ours - ref)))
    if not diff <= atol:
        raise ValueError(
            f"Converted {name} differs from the source model by max |diff| {diff:.3g} > {atol} "
            f"on {os.fspath(source)!r}; nothing was written."
        )
    return diff


def check_against_source(source, name, fmt=None, atol=1e-4, **kwargs):
    """max |logit diff| between keras_vit and the source framework on `source`. Raises
    ValueError above `atol`, ReferenceUnavailable when the framework is not installed."""
    from keras_vit.loading import read_state_dict
    from keras_vit.registry import create_model

    fmt = fmt or detect_format(source)
    state_dict = read_state_dict(source)
    probe = create_model(name, weights=state_dict, include_preprocessing=False, **kwargs)
    return _compare(source, fmt, name, state_dict, probe, atol, kwargs)


def convert(source, model, output, check=True, atol=1e-4, require_check=False, **kwargs):
    """Convert checkpoint `source` into registered model `model` (name[.tag]) and write
    `output` (`.weights.h5`: weights only; `.keras`: the whole model).

    The file is written only after every tensor loaded (all or nothing) and, with `check`,
    the outputs matched the source framework's within `atol` (the source model runs in a
    child process, so this works whatever was imported first). Without the framework the
    check is skipped with a warning that says so, or, with `require_check=True`, refused.
    The write goes through a temporary file, so a failure leaves no output. `kwargs` go to
    `create_model` (`num_classes`, `image_size`, architecture overrides).

    Returns {"output", "format", "model", "max_abs_diff" (None: not compared),
    "not_compared" (why, or None)}.
    """
    from keras_vit.loading import read_state_dict
    from keras_vit.registry import create_model

    output = os.fspath(output)
    if not output.endswith((".weights.h5", ".keras")):
        raise ValueError(f"Output {output!r} must end in .weights.h5 or .keras.")
    if require_check and not check:
        raise ValueError("require_check=True needs check=True.")
    fmt = detect_format(source)
    state_dict = read_state_dict(source)  # the one read of the checkpoint
    keras_model = create_model(model, weights=state_dict, **kwargs)  # raises before any write
    diff, not_compared = None, None
    if check:
        try:
            diff = _compare(source, fmt, model, state_dict, keras_model, atol, kwargs)
        except ReferenceUnavailable as err:
            if require_check:
                raise ValueError(
                    f"Cannot check {os.fspath(source)!r} against its source framework: {err}. "
                    "Install it (pip install 'keras-vit-zoo[torch]' for timm, '[hf]' for "
                    "transformers) or drop require_check; nothing was written."
                ) from err
            not_compared = f"source framework not installed: {err}"
            logger.warning("%s: outputs not compared (%s).", os.fspath(source), not_compared)
    else:
        not_compared = "check=False"
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
    return {
        "output": output,
        "format": fmt,
        "max_abs_diff": diff,
        "not_compared": not_compared,
        "model": model,
    }
