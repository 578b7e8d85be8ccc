"""The map between Keras variable paths and timm `state_dict` keys.

Keras layer names mirror timm's module names, with `_N` standing for a `.N` index
(`blocks_3/attn/qkv/kernel` <-> `blocks.3.attn.qkv.weight`), so the map is generic: only the
variable's own name and the tensor layout depend on the owning layer's type.
"""

import re

import keras
import numpy as np

from keras_vit._keras_compat import flatten_layers, own_variables

# variable name -> (timm suffix, axis permutation taking the torch layout to Keras's, or None)
_DENSE = {"kernel": ("weight", (1, 0)), "bias": ("bias", None)}  # (out, in) -> (in, out)
# (out, in, kh, kw) -> (kh, kw, in, out)
_CONV = {"kernel": ("weight", (2, 3, 1, 0)), "bias": ("bias", None)}
# (channels, 1, kh, kw) -> (kh, kw, channels, 1)
_DEPTHWISE = {"kernel": ("weight", (2, 3, 0, 1)), "bias": ("bias", None)}
_NORM = {"gamma": ("weight", None), "beta": ("bias", None)}
_BATCHNORM = {
    **_NORM,
    "moving_mean": ("running_mean", None),
    "moving_variance": ("running_var", None),
}

# timm buffers that carry nothing a Keras model needs
IGNORED_KEY_SUFFIXES = ("num_batches_tracked",)


def _param_table(layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return _DEPTHWISE
    if isinstance(layer, keras.layers.Conv2D):
        return _CONV
    if isinstance(layer, keras.layers.Dense):
        return _DENSE
    if isinstance(layer, keras.layers.BatchNormalization):
        return _BATCHNORM
    if isinstance(layer, (keras.layers.LayerNormalization, keras.layers.GroupNormalization)):
        return _NORM
    custom = getattr(layer, "timm_param_names", None)  # our own layers declare theirs
    if custom is not None:
        return {name: (suffix, None) for name, suffix in custom.items()}
    raise ValueError(
        f"No timm mapping for variables of layer {layer.name!r} ({type(layer).__name__})."
    )


def module_key(layer_path):
    """'stages_2_1/transformer_0/attn' -> 'stages.2.1.transformer.0.attn'."""
    return ".".join(re.sub(r"_(\d+)(?=_|$)", r".\1", part) for part in layer_path.split("/"))


def _variable_owners(model):
    """id(variable) -> the layer that created it (not a parent that merely contains it)."""
    owners = {}
    for layer in flatten_layers(model, include_self=False):
        for variable in own_variables(layer):
            owners[id(variable)] = layer
    return owners


def timm_entries(model):
    """[(timm_key, keras_variable, permutation)] for every weight of `model`."""
    owners = _variable_owners(model)
    entries = []
    for variable in model.weights:
        layer = owners.get(id(variable))
        if layer is None:
            raise ValueError(f"Cannot find the layer that owns variable {variable.path!r}.")
        layer_path, _, var_name = variable.path.rpartition("/")
        table = _param_table(layer)
        if var_name not in table:
            raise ValueError(f"No timm name for variable {variable.path!r}.")
        suffix, perm = table[var_name]
        key = module_key(layer_path)
        entries.append((f"{key}.{suffix}" if suffix else key, variable, perm))
    return entries


def to_keras_layout(value, perm):
    return value if perm is None else np.transpose(value, perm)


def to_timm_layout(value, perm):
    # contiguous: safetensors writes the raw buffer and would ignore a transposed view's strides
    return value if perm is None else np.ascontiguousarray(np.transpose(value, np.argsort(perm)))


def keras_to_timm_state_dict(model):
    """The model's weights as a timm-layout `state_dict` of numpy arrays."""
    return {
        key: to_timm_layout(np.asarray(keras.ops.convert_to_numpy(var)), perm)
        for key, var, perm in timm_entries(model)
    }
