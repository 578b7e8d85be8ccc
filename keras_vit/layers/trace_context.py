"""What the layers are being traced for, where they choose between equal forms of one op.

`compiling_with_xla()`: XLA fuses elementwise chains itself and has its own kernels (the
depthwise conv as shifted products, BatchNorm left unfolded). `onednn_graph()`: TensorFlow's
graph on a oneDNN CPU build, where grappler's remapper turns certain op patterns into fused
oneDNN kernels (conv + bias + SiLU, `_MklLayerNorm`) and oneDNN reads bf16 directly.
`standard_ops()`: what the TFLite and ONNX converters trace, Keras's own ops only (their
converters know no backend-specific form).
"""

import contextlib
import threading

import keras

_STATE = threading.local()


@contextlib.contextmanager
def _tracing(flag):
    """Set this thread's `flag` while the block traces (nested uses restore it)."""
    previous = getattr(_STATE, flag, False)
    setattr(_STATE, flag, True)
    try:
        yield
    finally:
        setattr(_STATE, flag, previous)


def standard_ops():
    """Trace with Keras's own ops only (no backend-specific fused forms): for converters."""
    return _tracing("standard")


def tracing_standard_ops():
    """True inside `standard_ops()`."""
    return getattr(_STATE, "standard", False)


def xla_tail():
    """Trace a model's `xla_tail_from` layers on as an XLA program of their own where it
    runs on oneDNN's graph (keras_vit/models/base.py: `KerasViTModel.call`)."""
    return _tracing("xla_tail")


def tracing_xla_tail():
    """True inside `xla_tail()`."""
    return getattr(_STATE, "xla_tail", False)


def compiling_with_xla():
    """True while tracing for XLA: always on JAX; on TF, inside a `jit_compile=True` function."""
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util  # TF has no public form of this test

    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def onednn_graph():
    """True while tracing a TensorFlow graph (not eager, not XLA) that will run on oneDNN:
    a oneDNN build of TensorFlow and no GPU (whose kernels have none of these fusions)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    if tf.executing_eagerly() or compiling_with_xla():
        return False
    return onednn_cpu()


_ONEDNN_CPU = []


def onednn_cpu():
    """True on a oneDNN build of TensorFlow with no GPU visible."""
    if not _ONEDNN_CPU:
        import tensorflow as tf
        from tensorflow.python.util import _pywrap_util_port  # TF has no public form

        onednn = _pywrap_util_port.IsMklEnabled()
        _ONEDNN_CPU.append(onednn and not tf.config.list_logical_devices("GPU"))
    return _ONEDNN_CPU[0]
