"""Where a reduced-precision model keeps float32."""

import keras


def classifier_dtype(dtype):
    """The dtype policy of a classifier head in a model of policy `dtype` (a name, a policy,
    or None for Keras's global one): float32 when that computes in bfloat16 or float16, else
    `dtype`. Why: the logits are what users rank and threshold, and a bf16 head rounds them
    to about 3 significant digits (top-1 flips between close classes) to save a matmul that
    is well under 1% of the model's FLOPs. Its input is cast up by Keras."""
    policy = keras.config.dtype_policy() if dtype is None else keras.dtype_policies.get(dtype)
    return "float32" if policy.compute_dtype in ("bfloat16", "float16") else dtype
