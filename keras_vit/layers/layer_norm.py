"""LayerNorm that runs as oneDNN's fused kernel on TensorFlow's CPU graph.

Why: Keras 3's `LayerNormalization` is about nine elementwise and reduction ops (in float32 for
a bf16 model, with a cast each way). On TensorFlow's graph, outside XLA (the bf16 CPU path, the
SavedModel), each is a pass over the tokens: about 0.65 ms per norm of DeiT-S's (8, 197, 384),
a tenth of its bf16 inference over 25 norms. TensorFlow's grappler remaps one form of layer
norm into `_MklLayerNorm` (oneDNN's kernel, statistics in float32, one pass): Keras 2's, a
`FusedBatchNormV3` in training mode over the tokens laid out as `(1, tokens, C, 1)` NCHW (each
token a "channel"), unit scale and zero offset built by `Fill`, then `* gamma + beta`.
`fused_layer_norm` writes exactly that form (0.15 ms per norm, measured in a chain of 25).

Everywhere else (training, XLA, eager, JAX / torch, a GPU, a TensorFlow without oneDNN,
float16, other axes, and inside `standard_ops()`, which the TFLite and ONNX exports enter:
their converters read only inference-mode batch norm) it is Keras's own
`LayerNormalization`, with the same weights, config and checkpoints.
"""

import contextlib
import threading

import keras

from keras_vit.layers.depthwise_conv import _compiling_with_xla

_STATE = threading.local()


@contextlib.contextmanager
def standard_ops():
    """Trace with Keras's own ops only (no backend-specific fused forms): for converters."""
    previous = getattr(_STATE, "standard", False)
    _STATE.standard = True
    try:
        yield
    finally:
        _STATE.standard = previous


@keras.saving.register_keras_serializable(package="keras_vit")
class LayerNorm(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` (same config and weights); see the module doc."""

    def call(self, inputs, training=None):
        if self._fused_here(inputs, training):
            gamma = keras.ops.cast(self.gamma, inputs.dtype)
            beta = keras.ops.cast(self.beta, inputs.dtype)
            return fused_layer_norm(inputs, gamma, beta, self.epsilon)
        return super().call(inputs)

    def _fused_here(self, inputs, training):
        if keras.backend.backend() != "tensorflow" or training or self.rms_scaling:
            return False
        if getattr(_STATE, "standard", False) or not (self.center and self.scale):
            return False
        rank = len(inputs.shape)
        # _MklLayerNorm: float32 / bfloat16 inputs of rank 2 or 3, normalised over the last axis
        if rank not in (2, 3) or [a % rank for a in self.axis] != [rank - 1]:
            return False
        if keras.backend.standardize_dtype(inputs.dtype) not in ("float32", "bfloat16"):
            return False
        import tensorflow as tf

        if tf.executing_eagerly() or _compiling_with_xla():
            return False
        return _fusable_here()


def fused_layer_norm(x, gamma, beta, epsilon):
    """LayerNorm of `x` `(..., C)` over its last axis, as remapper's `_MklLayerNorm` pattern."""
    import tensorflow as tf

    shape = tf.shape(x)
    rows = tf.reduce_prod(shape[:-1])
    # Behind PlaceholderWithDefault (an identity grappler never constant-folds), the Fills
    # stay Fills when the shape is static, as the pattern requires.
    rows = tf.compat.v1.placeholder_with_default(rows, shape=[])
    tokens = tf.reshape(x, tf.stack([1, rows, shape[-1], 1]))  # (1, rows, C, 1): NCHW
    ones = tf.fill(tf.stack([rows]), 1.0)  # float32 scale and offset, per "channel" (token)
    zeros = tf.fill(tf.stack([rows]), 0.0)
    empty = tf.constant([], tf.float32)  # no moving statistics: training-mode batch norm
    normed = tf.raw_ops.FusedBatchNormV3(
        x=tokens,
        scale=ones,
        offset=zeros,
        mean=empty,
        variance=empty,
        epsilon=float(epsilon),
        data_format="NCHW",
        is_training=True,
    )[0]
    return tf.reshape(normed, shape) * gamma + beta


_FUSABLE = []


def _fusable_here():
    """oneDNN in this TensorFlow build (else the form is a slower, bf16-rounded batch norm)
    and no GPU (cuDNN's batch norm rejects an epsilon under 1e-5, and has no such fusion)."""
    if not _FUSABLE:
        import tensorflow as tf
        from tensorflow.python.util import _pywrap_util_port  # TF has no public form

        onednn = _pywrap_util_port.IsMklEnabled()
        _FUSABLE.append(onednn and not tf.config.list_logical_devices("GPU"))
    return _FUSABLE[0]
