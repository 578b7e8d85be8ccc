"""Reusable Keras 3 layers (keras.ops only; every backend), one concept per module."""

from keras_vit.layers.attention import MultiHeadSelfAttention
from keras_vit.layers.drop_path import DropPath
from keras_vit.layers.layer_scale import LayerScale
from keras_vit.layers.mlp import Mlp
from keras_vit.layers.patch_embedding import PatchEmbedding
from keras_vit.layers.position_embedding import PositionEmbedding, resample_abs_pos_embed
from keras_vit.layers.preprocessing import ImageNormalization
from keras_vit.layers.tokens import PrependToken
from keras_vit.layers.transformer_block import TransformerBlock

__all__ = [
    "DropPath",
    "ImageNormalization",
    "LayerScale",
    "Mlp",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "PositionEmbedding",
    "PrependToken",
    "TransformerBlock",
    "resample_abs_pos_embed",
]
