"""Layer-wise learning-rate decay (BEiT, Bao et al. 2022; timm's `param_groups_layer_decay`):
the blocks near the input, which a pretrained checkpoint got most right, move least.

The model names each variable's block (`KerasViTModel.block_ids()`: 0 the stem, 1..n the
blocks, n + 1 the head, as timm's `group_matcher`). With `L = num_block_ids - 1` the variable of
block id `j` learns at `lr * decay ** (L - j)`: the head at `lr`, block i (0-based, id i + 1)
at `lr * decay ** (depth - i)`, the stem at `lr * decay ** (depth + 1)`. As in timm (each
parameter group's lr feeds torch's AdamW decay `p -= lr * wd * p`), the weight decay of a
variable follows its scaled learning rate.
"""

import keras

from keras_vit._keras_compat import optimizer_variable_index


def layer_lr_scales(model, decay):
    """`{id(variable): decay ** (L - block id)}` for every variable of `model` (a keras_vit
    model: `block_ids()`, `num_block_ids`)."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"Layer decay must be in (0, 1], got {decay!r}.")
    top = model.num_block_ids - 1
    return {id(v): float(decay) ** (top - block) for v, block in model.block_ids()}


class LayerDecayAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate (and so weight decay) is scaled per variable.

    Args:
        lr_scales: `{id(keras variable): scale}` (`layer_lr_scales`); a trainable variable
            missing from it is a ValueError at `build`, so nothing trains at an unintended rate.
        **kwargs: `keras.optimizers.AdamW`'s.

    The scales are Python floats fixed at `build`, so the update stays one XLA program and is
    the same under every `tf.distribute` strategy and on JAX/torch.
    """

    def __init__(self, lr_scales, **kwargs):
        super().__init__(**kwargs)
        self._scale_by_id = dict(lr_scales)
        self._lr_scales = None

    def build(self, var_list):
        missing = [v.path for v in var_list if id(v) not in self._scale_by_id]
        if missing:
            raise ValueError(
                f"Layer-wise lr decay has no block for {missing[:5]} (variables not of the "
                "model the scales were made for)."
            )
        self._lr_scales = [self._scale_by_id[id(v)] for v in var_list]
        super().build(var_list)

    def _scale(self, variable):
        return self._lr_scales[optimizer_variable_index(self, variable)]

    def _apply_weight_decay(self, variables):
        # applied per variable in `update_step`, at the variable's scaled learning rate
        return

    def update_step(self, gradient, variable, learning_rate):
        lr = keras.ops.cast(learning_rate, variable.dtype) * self._scale(variable)
        if self.weight_decay is not None and self._use_weight_decay(variable):
            wd = keras.ops.cast(self.weight_decay, variable.dtype)
            self.assign_sub(variable, variable * wd * lr)  # AdamW: decay, then the Adam step
        super().update_step(gradient, variable, lr)
