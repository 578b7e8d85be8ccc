"""LayerNorm (and GroupNorm with one group) that run as oneDNN's fused kernel on
TensorFlow's CPU graph.

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

import math

import keras

from keras_vit.layers.trace_context import onednn_graph, tracing_standard_ops


@keras.saving.register_keras_serializable(package="keras_vit")
class LayerNorm(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` (same config and weights); see the module doc."""

    def call(self, inputs, training=None):
        rank = len(inputs.shape)
        # _MklLayerNorm: inputs of rank 2 or 3, normalised over the last axis
        last_axis = [a % rank for a in self.axis] == [rank - 1]
        if last_axis and not self.rms_scaling and _fused_here(self, inputs, training):
            gamma = keras.ops.cast(self.gamma, inputs.dtype)
            beta = keras.ops.cast(self.beta, inputs.dtype)
            return fused_layer_norm(inputs, gamma, beta, self.epsilon)
        return super().call(inputs)


@keras.saving.register_keras_serializable(package="keras_vit")
class GroupNorm1(keras.layers.GroupNormalization):
    """`GroupNormalization(groups=1)` (timm's `GroupNorm1`, MobileViT v2's norm): statistics
    over every axis but the batch, scale and offset per channel (last axis). At bfloat16
    inference on TensorFlow's graph, oneDNN's LayerNorm kernel over the flattened sample
    `(B, H*W*C)`, gamma and beta tiled to `H*W*C`; elsewhere Keras's layer (see the module doc).

    Float32 keeps Keras's layer on the graph too: oneDNN's kernel over rows that long (a few
    rows of P*N*C, e.g. 4 x 24,576) ran slower than Keras's reductions and multiply-add, and
    the tiling of gamma and beta is two more ops a call. Measured (2-core AMD EPYC, batch 8,
    `predict_on_batch`, in-process A/B): float32 v2 0.5 167.7 -> 178.9 img/s, v2 1.0 74.0 ->
    79.5; bfloat16 v2 0.5 250.7 with the kernel against 248.2 without (kept: Keras's layer
    computes bf16 statistics in float32 with a cast each way)."""

    def __init__(self, **kwargs):
        kwargs.pop("groups", None)
        super().__init__(groups=1, **kwargs)

    def call(self, inputs, training=None):
        sample = inputs.shape[1:]  # (H, W, C) or (P, N, C): static, for the fused form
        static = all(d is not None for d in sample)
        if (
            static
            and self.axis in (-1, len(inputs.shape) - 1)
            and keras.backend.standardize_dtype(inputs.dtype) == "bfloat16"
            and _fused_here(self, inputs, training, 4)
        ):
            import tensorflow as tf

            repeats = math.prod(sample[:-1])  # gamma and beta repeat at each position
            gamma = tf.tile(keras.ops.cast(self.gamma, inputs.dtype), [repeats])  # (H*W*C,)
            beta = tf.tile(keras.ops.cast(self.beta, inputs.dtype), [repeats])
            flat = tf.reshape(inputs, (-1, repeats * sample[-1]))  # (B, H*W*C), C fastest
            # grappler would merge this reshape with the next one (the pattern's input would
            # then be rank 4, which the kernel does not take); PlaceholderWithDefault, a
            # no-copy identity it keeps, holds them apart
            flat = tf.compat.v1.placeholder_with_default(flat, flat.shape)
            return tf.reshape(fused_layer_norm(flat, gamma, beta, self.epsilon), tf.shape(inputs))
        return super().call(inputs)

    def get_config(self):
        config = super().get_config()
        config.pop("groups", None)
        return config


def _fused_here(layer, inputs, training, max_rank=3):
    """The fused form applies: inference on TF's CPU graph (oneDNN, no XLA, no GPU), not
    inside `standard_ops()`, float32 / bfloat16 (its kernel's types), scale and offset on."""
    if keras.backend.backend() != "tensorflow" or training:
        return False
    if tracing_standard_ops() or not (layer.center and layer.scale):
        return False
    if not 2 <= len(inputs.shape) <= max_rank:
        return False
    if keras.backend.standardize_dtype(inputs.dtype) not in ("float32", "bfloat16"):
        return False
    return onednn_graph()


def fused_layer_norm(x, gamma, beta, epsilon):
    """LayerNorm of `x` `(..., C)` over its last axis, as remapper's `_MklLayerNorm` pattern."""
    import tensorflow as tf

    # The pattern also needs its input shaped as its output: behind this identity grappler
    # cannot merge the reshape below with one before it (a residual added on the flat
    # (M, C) tokens, flat_tokens.py), which would leave a rank-2 input to a rank-3 norm.
    x = tf.compat.v1.placeholder_with_default(x, shape=x.shape)
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
