import keras

from keras_vit.layers._validation import positive_int
from keras_vit.layers.mlp import _activation


def make_divisible(value, divisor=8, min_value=None, round_limit=0.9):
    """timm's `make_divisible`: `value` rounded to the nearest multiple of `divisor`, at least
    `min_value` (default `divisor`), and bumped up a step if rounding lost more than
    `1 - round_limit` of it."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


_GATES = {
    "sigmoid": keras.activations.sigmoid,
    # relu6(x + 3) / 6, as torch's `hardsigmoid`
    "hard_sigmoid": keras.activations.hard_sigmoid,
}


@keras.saving.register_keras_serializable(package="keras_vit")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-Excitation (Hu et al., 2018), channels last: `(B, H, W, C)` -> same shape.

        s = mean over H, W of x                  (B, 1, 1, C)
        s = gate(fc2(act(fc1(s))))               fc1: C -> rd, fc2: rd -> C, 1x1 convs with bias
        out = x * s

    Numerically timm's `SqueezeExcite` (`SEModule`): the reduced width is `rd_channels` if
    given, else `make_divisible(C * rd_ratio, rd_divisor, round_limit=0)`, and the 1x1 convs
    are named `fc1`/`fc2`, so timm weights load through the generic map.

    Args:
        rd_ratio: reduction as a fraction of the input channels (timm's default 1/16).
        rd_channels: reduction as a channel count; overrides `rd_ratio`.
        rd_divisor: the reduced width is rounded to a multiple of this (timm's default 8).
        activation: between the two convs: 'relu' (timm's default), 'silu', 'gelu', ...
        gate: 'sigmoid' (default) or 'hard_sigmoid'.
        use_bias: biases in `fc1`/`fc2` (timm's `bias=True`).
    """

    def __init__(
        self,
        rd_ratio=1.0 / 16,
        rd_channels=None,
        rd_divisor=8,
        activation="relu",
        gate="sigmoid",
        use_bias=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if rd_channels is None and not (
            isinstance(rd_ratio, (int, float)) and not isinstance(rd_ratio, bool) and rd_ratio > 0
        ):
            raise ValueError(f"`rd_ratio` must be a positive number, got {rd_ratio!r}.")
        self.rd_ratio = float(rd_ratio)
        self.rd_channels = None if rd_channels is None else positive_int("rd_channels", rd_channels)
        self.rd_divisor = positive_int("rd_divisor", rd_divisor)
        self.activation = activation
        self._act = _activation(activation)
        if gate not in _GATES:
            raise ValueError(f"Unknown `gate` {gate!r}; use one of {sorted(_GATES)}.")
        self.gate = gate
        self.use_bias = bool(use_bias)
        self.fc1 = self.fc2 = None  # widths known at build

    def reduced_channels(self, channels):
        """The width of the squeeze for `channels` input channels (timm's rule)."""
        if self.rd_channels is not None:
            return self.rd_channels
        return make_divisible(channels * self.rd_ratio, self.rd_divisor, round_limit=0.0)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"SqueezeExcite takes (B, H, W, C) with a known C, got shape {input_shape}."
            )
        channels = input_shape[-1]
        reduced = self.reduced_channels(channels)
        policy = self.dtype_policy
        self.fc1 = keras.layers.Conv2D(reduced, 1, use_bias=self.use_bias, name="fc1", dtype=policy)
        self.fc2 = keras.layers.Conv2D(
            channels, 1, use_bias=self.use_bias, name="fc2", dtype=policy
        )
        self.fc1.build((None, 1, 1, channels))
        self.fc2.build((None, 1, 1, reduced))

    def call(self, x):
        s = keras.ops.mean(x, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        s = self.fc2(self._act(self.fc1(s)))  # (B, 1, 1, C)
        return x * _GATES[self.gate](s)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rd_ratio": self.rd_ratio,
            "rd_channels": self.rd_channels,
            "rd_divisor": self.rd_divisor,
            "activation": self.activation,
            "gate": self.gate,
            "use_bias": self.use_bias,
        }
