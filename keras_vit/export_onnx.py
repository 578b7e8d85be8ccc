"""Export to ONNX, for ONNX Runtime and the other ONNX servers.

The file takes what the Keras model takes, with a dynamic batch: `images` float32
`[batch, H, W, C]` (NHWC; RGB in 0..255 for a model built with `include_preprocessing=True`,
the default, since the normalisation is part of the graph) and returns `logits` float32
`[batch, num_classes]` (`features` `[batch, D]` for a headless model; `output_0`, ... for a
`features_only` backbone).

On the TensorFlow backend the graph is traced as a plain `tf.function` (no XLA), so MobileViT's
depthwise convolutions are ONNX's grouped `Conv`, not the shift-adds XLA gets, and converted by
tf2onnx (Keras's `model.export(format="onnx")`). One rewrite follows: TensorFlow's exact GELU
is `0.5 x erfc(-x / sqrt 2)` and ONNX has no `Erfc`, so each `Erfc(z)` becomes `1 - Erf(z)`
(the same function; at most 1e-7 apart in float32 where `erfc` is tiny and multiplied by a
large negative `x`, so below the outputs' rounding).

Needs the `onnx` extra (`pip install "keras-vit-zoo[onnx]"`: onnx, tf2onnx, onnxruntime).
"""

import contextlib
import gc
import logging
import os
import tempfile

DEFAULT_OPSET = 17


def _require(module, purpose):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs `{module}` ({purpose}): pip install 'keras-vit-zoo[onnx]'."
        ) from e


@contextlib.contextmanager
def _quiet_converter():
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _output_names(model):
    if len(model.outputs) == 1:
        if getattr(model, "num_classes", None) == 0:
            return ["features"]
        return ["logits"]
    return [f"output_{i}" for i in range(len(model.outputs))]


def _replace_erfc(graph, onnx):
    """`Erfc(z)` -> `Sub(1, Erf(z))` in place (ONNX has `Erf`, not `Erfc`); returns the count."""
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "Erfc":
            nodes.append(node)
            continue
        count += 1
        (z,), (out,) = node.input, node.output
        erf, one = f"{node.name}/erf:0", f"{node.name}/one:0"
        nodes.append(onnx.helper.make_node("Erf", [z], [erf], name=f"{node.name}/Erf"))
        nodes.append(
            onnx.helper.make_node(
                "Constant",
                [],
                [one],
                name=f"{node.name}/One",
                value=onnx.helper.make_tensor("one", onnx.TensorProto.FLOAT, [], [1.0]),
            )
        )
        nodes.append(onnx.helper.make_node("Sub", [one, erf], [out], name=f"{node.name}/Sub"))
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _rename(graph, old, new):
    """Rename tensor `old` to `new` everywhere in `graph` (inputs, outputs, node edges)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new


def _name_batch_axis(value):
    """Name the first axis of a graph input/output `batch` (tf2onnx writes `unk__123`)."""
    dim = value.type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = "batch"


def export_onnx(model, path, opset=DEFAULT_OPSET):
    """Write `model` to the ONNX file `path`; returns `path`.

    Args:
        model: a keras_vit model (or any one-input Keras image model) of static
            `(H, W, C)` input.
        path: the `.onnx` file to write; its folder must exist. Written to a temporary file
            first and moved into place, so a failed export leaves no partial file.
        opset: the ONNX opset (17, the default, is read by ONNX Runtime >= 1.12).

    The file has one input `images` `[batch, H, W, C]` and the output `logits`
    `[batch, num_classes]`, the batch dynamic (see the module docstring).
    """
    import keras

    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= 21:
        raise ValueError(f"`opset` must be an int in 13..21, got {opset!r}.")
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ValueError(f"ONNX export needs one image input (batch, H, W, C), got {model.inputs}.")
    if any(d is None for d in model.inputs[0].shape[1:]):
        raise ValueError(
            f"ONNX export needs a static image size, got {tuple(model.inputs[0].shape)}."
        )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Output folder does not exist: {folder!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder; ONNX export writes one file.")
    from keras_vit.layers.trace_context import standard_ops

    onnx = _require("onnx", "the ONNX format")
    if keras.backend.backend() == "tensorflow":
        _require("tf2onnx", "TensorFlow's converter to ONNX")

    spec = keras.InputSpec(shape=(None,) + tuple(model.inputs[0].shape[1:]), dtype="float32")
    spec.name = "images"
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        # standard_ops: Keras's own LayerNorm, not the oneDNN form (layers/layer_norm.py)
        with _quiet_converter(), standard_ops():  # it reports Erfc "unsupported": rewritten below
            model.export(
                tmp, format="onnx", input_signature=[spec], opset_version=opset, verbose=False
            )
        proto = onnx.load(tmp)
        graph = proto.graph
        _replace_erfc(graph, onnx)
        if len(graph.input) != 1 or len(graph.output) != len(model.outputs):
            raise RuntimeError(
                f"The converter wrote {len(graph.input)} inputs and {len(graph.output)} "
                f"outputs; expected 1 and {len(model.outputs)}."
            )
        _rename(graph, graph.input[0].name, "images")
        for value, name in zip(list(graph.output), _output_names(model)):
            _rename(graph, value.name, name)
        for value in list(graph.input) + list(graph.output):
            _name_batch_axis(value)
        proto.producer_name = "keras_vit"
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        # the converter leaves its frozen graph and constants in reference cycles: ViT-B/16
        # held 14 GB after the export until the next collection (15.5 GB resident, 1.2 after)
        gc.collect()
    return path
