import keras

from keras_vit.layers._validation import positive_int, rate
from keras_vit.layers.attention import MultiHeadSelfAttention
from keras_vit.layers.drop_path import DropPath
from keras_vit.layers.layer_norm import LayerNorm
from keras_vit.layers.layer_scale import LayerScale
from keras_vit.layers.mlp import Mlp
from keras_vit.layers.swiglu import SwiGLUPacked

MLP_LAYERS = ("mlp", "swiglu_packed")


@keras.saving.register_keras_serializable(package="keras_vit")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm transformer block (timm's `Block`), `(B, N, D)` -> `(B, N, D)`:

        x = x + drop_path(ls1(attn(norm1(x))))
        x = x + drop_path(ls2(mlp(norm2(x))))

    Layer scale (`ls1`, `ls2`) exists only when `init_values` is set, as in timm.
    `mlp_layer`: `"mlp"` (timm's `Mlp`, `activation` applies) or `"swiglu_packed"` (timm's
    `SwiGLUPacked`, SiLU-gated, DINOv2 giant); both of hidden width `int(dim * mlp_ratio)`.
    """

    def __init__(
        self,
        dim,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        proj_drop=0.0,
        attn_drop=0.0,
        drop_path=0.0,
        init_values=None,
        norm_epsilon=1e-6,
        activation="gelu",
        mlp_layer="mlp",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = positive_int("dim", dim)
        self.num_heads = positive_int("num_heads", num_heads)
        if not mlp_ratio > 0:
            raise ValueError(f"`mlp_ratio` must be positive, got {mlp_ratio!r}.")
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = qkv_bias
        self.proj_drop = rate("proj_drop", proj_drop)
        self.attn_drop = rate("attn_drop", attn_drop)
        self.drop_path = rate("drop_path", drop_path)
        self.init_values = init_values
        self.norm_epsilon = float(norm_epsilon)
        self.activation = activation
        if mlp_layer not in MLP_LAYERS:
            raise ValueError(f"`mlp_layer` must be one of {MLP_LAYERS}, got {mlp_layer!r}.")
        self.mlp_layer = mlp_layer
        policy = self.dtype_policy
        self.norm1 = LayerNorm(epsilon=norm_epsilon, name="norm1", dtype=policy)
        self.attn = MultiHeadSelfAttention(
            dim, num_heads, qkv_bias, attn_drop, proj_drop, name="attn", dtype=policy
        )
        self.norm2 = LayerNorm(epsilon=norm_epsilon, name="norm2", dtype=policy)
        hidden = int(dim * mlp_ratio)  # timm truncates: 1536 * 5.33334 -> 8192
        if mlp_layer == "swiglu_packed":
            self.mlp = SwiGLUPacked(hidden, drop=proj_drop, name="mlp", dtype=policy)
        else:
            self.mlp = Mlp(hidden, activation=activation, drop=proj_drop, name="mlp", dtype=policy)
        scaled = init_values is not None
        self.ls1 = LayerScale(init_values, name="ls1", dtype=policy) if scaled else None
        self.ls2 = LayerScale(init_values, name="ls2", dtype=policy) if scaled else None
        self.drop_path1 = DropPath(drop_path, name="drop_path1", dtype=policy)
        self.drop_path2 = DropPath(drop_path, name="drop_path2", dtype=policy)

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.norm2, self.mlp, self.ls1, self.ls2):
            if layer is not None:
                layer.build(input_shape)

    def call(self, x, training=None, return_attention_scores=False):
        # With no layer scale and no active drop path, each branch takes the residual and
        # adds it right after its last matmul (fused there on TF's graph: flat_tokens.py).
        direct = self.ls1 is None and not (training and self.drop_path > 0)
        y = self.attn(
            self.norm1(x),
            training=training,
            return_attention_scores=return_attention_scores,
            residual=x if direct else None,
        )
        y, attn = y if return_attention_scores else (y, None)
        x = y if direct else _add_branch(x, y, self.ls1, self.drop_path1, training)
        y = self.mlp(self.norm2(x), training=training, residual=x if direct else None)
        x = y if direct else _add_branch(x, y, self.ls2, self.drop_path2, training)
        return (x, attn) if return_attention_scores else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "proj_drop": self.proj_drop,
            "attn_drop": self.attn_drop,
            "drop_path": self.drop_path,
            "init_values": self.init_values,
            "norm_epsilon": self.norm_epsilon,
            "activation": self.activation,
            "mlp_layer": self.mlp_layer,
        }


def _add_branch(x, y, layer_scale, drop_path, training):
    """`x + drop_path(layer_scale(y))`: a branch added outside its last matmul."""
    if layer_scale is not None:
        y = layer_scale(y)
    return x + drop_path(y, training=training)
