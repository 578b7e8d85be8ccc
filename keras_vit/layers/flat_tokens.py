"""Run a token-wise function on a `(M, C)` matrix instead of `(B, N, C)` tokens.

Why: on TensorFlow's CPU graph (oneDNN), `Dense` on a rank-3 input becomes
Reshape -> MatMul -> Reshape -> BiasAdd, and the reshape between them keeps grappler's
remapper from fusing bias and activation into the matmul (`_MklFusedMatMul`). On a 2-D input
MatMul + BiasAdd (+ GELU) is one oneDNN call; in bfloat16 that removes an elementwise pass
over every activation. XLA fuses either form, so this costs nothing there.
"""

import keras


def apply_flat(fn, x, **kwargs):
    """`fn` applied to `x` `(..., C)` seen as `(M, C)`, reshaped back to `(..., C_out)`."""
    if len(x.shape) <= 2:
        return fn(x, **kwargs)
    lead = keras.ops.shape(x)[:-1]  # (B, N) or (B, H, W), dynamic where unknown
    y = fn(keras.ops.reshape(x, (-1, x.shape[-1])), **kwargs)  # (M, C_out)
    return keras.ops.reshape(y, (*lead, y.shape[-1]))
