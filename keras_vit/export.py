"""Export for serving: a SavedModel for TF Serving and a TFLite flatbuffer for phones.

The SavedModel needs nothing but TensorFlow to load and run (TF Serving has no Python, no
Keras): preprocessing, image decoding and the top-k lookup are all TensorFlow ops inside the
graph. Two signatures, both with a dynamic batch:

- `serving_default`: `images` float32 `[N, H, W, 3]`, RGB in 0..255. The model's own
  normalisation is inside (added from its `mean`/`std` when the model was built with
  `include_preprocessing=False`).
- `serve_image_bytes`: `image_bytes` string `[N]`, each an encoded JPEG/PNG/BMP/GIF of any size
  (the first frame of an animated GIF) -> timm's evaluation transform of the checkpoint
  (`keras_vit.data.transform.EvalTransform`: decoded as PIL, resized with Pillow's filter to
  `floor(size / crop_pct)`, centre-cropped to `H x W`; the same pixels as
  `timm.data.create_transform(**resolve_data_config({}, model=m))` on PIL) -> the model.
  The transform comes from `model.pretrained_cfg` (timm's defaults without one: 0.875,
  center, bicubic) unless `export_saved_model(..., transform=...)` gives another. Bytes that
  do not decode fail the request with `InvalidArgumentError`; the server keeps running.

Outputs (a dict, the names TF Serving reports):
- `logits` float32 `[N, C]`; `probabilities` float32 `[N, C]` (softmax of the logits);
- `top_k_ids` int32 `[N, k]`, `top_k_probabilities` float32 `[N, k]`, best first;
- `top_k_class_names` string `[N, k]`, when the model carries class names;
- a headless model (`num_classes=0`) returns `features` float32 `[N, D]` only.

TensorFlow is imported inside the functions, so `import keras_vit` stays backend-neutral.
"""

import os
import tempfile

from keras_vit.models.base import inference_path
from keras_vit.models.batch_halves import run_traced_inference
from keras_vit.models.frozen_kernels import KernelSnapshot

TOP_K = 5
QUANTIZATIONS = (None, "dynamic", "float16", "int8")
CALIBRATION_IMAGES = 100  # digits for the full-integer calibration when none are given


# --- what the model is: input size, normalisation, class names -----------------------------
def input_size(model):
    """`(H, W)` of the model's image input."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] != 3:
        raise ValueError(
            f"Export needs a model with one image input of static shape (N, H, W, 3), got {shape}."
        )
    return int(shape[1]), int(shape[2])


def _num_outputs(model):
    shape = tuple(model.outputs[0].shape)
    if len(model.outputs) != 1 or len(shape) != 2:
        raise ValueError(f"Export needs one output of shape (N, C), got {model.outputs}.")
    return int(shape[1])


def _normalisation(model):
    """`(mean, std)` the export must apply itself, or None when the model does it."""
    if getattr(model, "include_preprocessing", True):
        return None
    return tuple(model.mean), tuple(model.std)


def model_input(model, pixels):
    """numpy pixels `(N, H, W, 3)` in 0..255 -> what `model` takes (normalised here when the
    model was built with `include_preprocessing=False`)."""
    import numpy as np

    from keras_vit.layers.preprocessing import normalize

    x = np.asarray(pixels, np.float32)
    norm = _normalisation(model)
    if norm is None:
        return x
    return normalize(x, np.asarray(norm[0], np.float32), np.asarray(norm[1], np.float32))


def eval_transform(model, transform=None):
    """The evaluation transform of `model` (`EvalTransform.from_model`), or `transform`,
    checked against the model's input size."""
    from keras_vit.data.transform import EvalTransform

    size = input_size(model)
    if transform is None:
        return EvalTransform.from_model(model)
    if not isinstance(transform, EvalTransform):
        raise ValueError(
            f"`transform` must be a keras_vit.data.transform.EvalTransform, got {transform!r}."
        )
    if tuple(transform.input_size) != size:
        raise ValueError(
            f"`transform` makes {transform.input_size} images but the model takes {size}."
        )
    return transform


def resolve_class_names(model, class_names=None):
    """Label names in output order: `class_names` if given, else the model's checkpoint's
    (`model.pretrained_cfg`), else ImageNet-1k's for a 1000-class model; None otherwise."""
    num_classes = _num_outputs(model) if getattr(model, "num_classes", 1) else 0
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(
                f"`class_names` has {len(class_names)} names but the model has "
                f"{num_classes} classes."
            )
        return class_names
    cfg = getattr(model, "pretrained_cfg", None)
    names = getattr(cfg, "class_names", None)
    if names is None and num_classes == 1000:
        try:
            from keras_vit.pretrained import class_names as shipped
        except ImportError:
            return None
        names = shipped("imagenet-1k")
    return list(names) if names is not None and len(names) == num_classes else None


# --- TensorFlow pieces of the graph --------------------------------------------------------
def decode_images(image_bytes, transform):
    """string `[N]` of encoded images -> float32 `[N, H, W, 3]` RGB in 0..255, through
    `transform` (an `EvalTransform`). Undecodable bytes raise `InvalidArgumentError`."""
    return transform.batch_from_bytes(image_bytes)


def serving_function(
    model,
    top_k=TOP_K,
    class_names=None,
    jit_compile=False,
    freeze_kernels=False,
    halves=False,
    small_parts_jit=False,
):
    """pixels float32 `[N, H, W, 3]` in 0..255 -> the output dict (see the module doc).

    `jit_compile`: run the model itself (not the decoding around it) as one XLA cluster,
    as `predict` does where XLA is the model's path (float32, int8); a SavedModel keeps the
    cluster, so TF Serving runs it compiled too. `freeze_kernels`: trace the model with its
    matmul kernels as graph constants, as `predict` does on TF's oneDNN graph in bfloat16
    (keras_vit/models/frozen_kernels.py); the kernels are those of the moment of tracing.
    `halves`: run the batch as two halves side by side, as `predict` does on TF's oneDNN
    CPU (keras_vit/models/batch_halves.py; with `jit_compile`, each half its own XLA
    program). `small_parts_jit`: parts of up to two images (a batch of one) each as an XLA
    program, as `predict` does for float32 on a CPU's graph
    (`keras_vit.models.base.small_parts_xla`)."""
    import tensorflow as tf

    from keras_vit.layers.preprocessing import normalize

    norm = _normalisation(model)
    headless = getattr(model, "num_classes", 1) == 0
    num_classes = _num_outputs(model)
    k = min(top_k, num_classes)
    names = None if class_names is None else tf.constant(class_names, tf.string)
    snapshot = KernelSnapshot(model) if freeze_kernels and not jit_compile else None
    whole = lambda x: model(x, training=False)  # noqa: E731

    def run_model(x):
        return run_traced_inference(whole, x, snapshot, halves, jit_compile, small_parts_jit)

    def forward(pixels):
        x = pixels
        if norm is not None:  # the model takes normalised input: apply its mean/std here
            x = normalize(x, tf.constant(norm[0], tf.float32), tf.constant(norm[1], tf.float32))
        out = tf.cast(run_model(x), tf.float32)  # (N, C), float32 whatever the compute dtype
        if headless:
            return {"features": out}
        probs = tf.nn.softmax(out, axis=-1)
        top_probs, top_ids = tf.math.top_k(probs, k=k)  # (N, k), best first
        outputs = {
            "logits": out,
            "probabilities": probs,
            "top_k_ids": top_ids,
            "top_k_probabilities": top_probs,
        }
        if names is not None:
            outputs["top_k_class_names"] = tf.gather(names, top_ids)  # (N, k) string
        return outputs

    return forward


def bytes_function(
    model,
    transform=None,
    top_k=TOP_K,
    class_names=None,
    **inference,
):
    """string `[N]` of encoded images -> the output dict: `serve_image_bytes`, and what
    `keras-vit predict` runs, so both give the same answer. `inference`: `serving_function`'s
    compile-path keywords (`jit_compile`, `freeze_kernels`, `halves`, `small_parts_jit`)."""
    forward = serving_function(model, top_k, class_names, **inference)
    transform = eval_transform(model, transform)

    def serve(image_bytes):
        return forward(decode_images(image_bytes, transform))

    return serve


# --- SavedModel ----------------------------------------------------------------------------
def export_saved_model(model, path, class_names=None, top_k=TOP_K, transform=None):
    """Write `model` as a SavedModel with the `serving_default` (pixels) and
    `serve_image_bytes` (encoded images) signatures described in this module's doc.

    Args:
        model: a keras_vit model (or any Keras model with one `(N, H, W, 3)` input and one
            `(N, C)` output), TensorFlow backend.
        path: output directory.
        class_names: label names in output order; default: the model's checkpoint's, or
            ImageNet-1k's for a 1000-class model, else no `top_k_class_names` output.
        top_k: how many best classes `top_k_*` report (capped at the number of classes).
        transform: the `keras_vit.data.transform.EvalTransform` of `serve_image_bytes`;
            default: the model's checkpoint's (`model.pretrained_cfg`), timm's defaults for a
            model without one.
    Returns: `path`.
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"SavedModel export needs the TensorFlow backend, got {keras.backend.backend()!r} "
            "(set KERAS_BACKEND=tensorflow)."
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int, got {top_k!r}.")
    size = input_size(model)
    names = resolve_class_names(model, class_names)
    # the compile path `predict` takes (keras_vit/models/base.py: XLA or TensorFlow's oneDNN
    # graph by family, dtype and device), so the export serves at its speed
    inference = inference_path(model)._asdict()
    forward = serving_function(model, top_k, names, **inference)
    serve_bytes = bytes_function(model, transform, top_k, names, **inference)

    def serve_pixels(images):
        return forward(images)

    def serve_image_bytes(image_bytes):
        return serve_bytes(image_bytes)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        serve_pixels,
        input_signature=[tf.TensorSpec((None, *size, 3), tf.float32, name="images")],
    )
    archive.add_endpoint(
        "serve_image_bytes",
        serve_image_bytes,
        input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")],
    )
    archive.write_out(os.fspath(path), verbose=False)
    return path


# --- TFLite --------------------------------------------------------------------------------
def calibration_digits(size, count=CALIBRATION_IMAGES, offset=0):
    """`count` of the built-in digits from `offset`, upscaled (bilinear) to `size` `(H, W)`:
    float32 `(count, H, W, 3)` in 0..255, for full-integer calibration without user data."""
    import tensorflow as tf

    from keras_vit.data.digits import load_digits_arrays

    images, _ = load_digits_arrays()
    if not 0 < count <= len(images) - offset:
        raise ValueError(f"`count` must be in 1..{len(images) - offset}, got {count!r}.")
    chosen = images[offset : offset + count]
    return tf.image.resize(chosen, size, method="bilinear").numpy().astype("float32")


def _calibration_set(calibration_images, size):
    """User images `(N, H, W, 3)` 0..255 (checked) or the built-in digits."""
    import numpy as np

    if calibration_images is None:
        return calibration_digits(size)
    images = np.asarray(calibration_images, np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != (*size, 3) or len(images) == 0:
        raise ValueError(
            f"`calibration_images` must be a non-empty (N, {size[0]}, {size[1]}, 3) array of "
            f"0..255 pixels, got shape {images.shape}."
        )
    return images


def export_tflite(model, path, quantization=None, batch_size=1, calibration_images=None):
    """Write `model` as a TFLite flatbuffer with builtin ops only (no SELECT_TF_OPS / Flex).

    The signature `serving_default` takes `images` float32 `[batch_size, H, W, 3]` in 0..255
    (normalisation inside) and returns `logits` and `probabilities` `[batch_size, C]`
    (`features` for a headless model).

    Args:
        quantization: None (float32 weights), "dynamic" (int8 weights, float activations),
            "float16" (float16 weights) or "int8" (full-integer post-training quantization:
            int8 weights and activations, every op an int8 builtin, float32 input and output
            through QUANTIZE / DEQUANTIZE at the edges).
        batch_size: static batch of the flatbuffer (1 for on-device use; None: dynamic).
        calibration_images: for "int8", the representative data set: `(N, H, W, 3)` pixels in
            0..255 (a few hundred images of the deployment's kind); default: 100 of the
            built-in digits (`calibration_digits`).
    Returns: `path`.
    """
    import keras
    import tensorflow as tf

    from keras_vit.layers.trace_context import standard_ops

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}.")
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"TFLite export needs the TensorFlow backend, got {keras.backend.backend()!r}."
        )
    size = input_size(model)
    calibration = _calibration_set(calibration_images, size) if quantization == "int8" else None
    forward = serving_function(model, 1, None)

    def serve(images):
        out = forward(images)
        return {k: v for k, v in out.items() if k in ("logits", "probabilities", "features")}

    # Through a SavedModel, as Keras's own LiteRT export: `from_saved_model` freezes the
    # variables into constants (`from_concrete_functions` kept them as resource variables).
    # Traced with Keras's own ops (standard_ops): the converter has no training-mode batch
    # norm, the form of the oneDNN LayerNorm (keras_vit/layers/layer_norm.py).
    with tempfile.TemporaryDirectory() as tmp, standard_ops():
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serving_default",
            serve,
            input_signature=[tf.TensorSpec((batch_size, *size, 3), tf.float32, name="images")],
        )
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            tmp, signature_keys=["serving_default"]
        )
        # Builtin ops only: a phone runtime without the Flex delegate must run the file.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization == "int8":
            # int8 kernels only: a float op left over fails the conversion instead of
            # running as float in the middle of the model
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            batch = batch_size or 1

            def representative_dataset():
                for start in range(0, len(calibration) - batch + 1, batch):
                    yield [calibration[start : start + batch]]

            converter.representative_dataset = representative_dataset
        flatbuffer = converter.convert()
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path


def tflite_op_names(path):
    """Sorted names of the operators in a TFLite file (Flex ops show as `Flex...`)."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=os.fspath(path))
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def select_ops(path):
    """Operators of a TFLite file that are not TFLite builtins (SELECT_TF_OPS / custom)."""
    return [n for n in tflite_op_names(path) if n.startswith("Flex") or n == "CUSTOM"]
