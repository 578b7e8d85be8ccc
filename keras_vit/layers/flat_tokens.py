"""Run a token-wise function on a `(M, C)` matrix instead of `(B, N, C)` tokens.

Why: on TensorFlow's CPU graph (oneDNN), `Dense` on a rank-3 input becomes
Reshape -> MatMul -> Reshape -> BiasAdd, and the reshape between them keeps grappler's
remapper from fusing bias and activation into the matmul (`_MklFusedMatMul`). On a 2-D input
MatMul + BiasAdd (+ GELU) is one oneDNN call; in bfloat16 that removes an elementwise pass
over every activation. XLA fuses either form, so this costs nothing there.
"""

import keras


def apply_flat(fn, x, residual=None, **kwargs):
    """`fn` applied to `x` `(..., C)` seen as `(M, C)`, reshaped back to `(..., C_out)`.

    `residual` (shaped as the output, or None): added to `fn`'s output on the `(M, C_out)`
    matrix, before the reshape back, where grappler's remapper fuses a matmul + bias + add
    of equal shapes into one oneDNN call (the sum as a post-op: one pass over the tokens
    fewer per residual branch, about 6% of DeiT-S bf16's time as a separate `AddV2`)."""
    if len(x.shape) <= 2:
        y = fn(x, **kwargs)
        return y if residual is None else _add(y, residual)
    lead = keras.ops.shape(x)[:-1]  # (B, N) or (B, H, W), dynamic where unknown
    y = fn(keras.ops.reshape(x, (-1, x.shape[-1])), **kwargs)  # (M, C_out)
    if residual is not None:
        y = _add(y, keras.ops.reshape(residual, (-1, y.shape[-1])))
    return keras.ops.reshape(y, (*lead, y.shape[-1]))


def _add(a, b):
    """`a + b` of equal shapes. On TensorFlow an `AddN`: the remapper fuses an `AddV2` into
    the matmul only where grappler proves the shapes equal, which an unknown row count
    (a SavedModel's dynamic batch) defeats, so the same model would round its bf16 sums
    differently in `predict` and in the SavedModel; `AddN` declares them equal."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.math.add_n([a, b])
    return a + b
