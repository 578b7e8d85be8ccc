"""Reusable Keras 3 layers (keras.ops only; every backend), one concept per module."""

from keras_vit.layers.attention import MultiHeadSelfAttention
from keras_vit.layers.depthwise_conv import ShiftAddDepthwiseConv2D
from keras_vit.layers.drop_path import DropPath
from keras_vit.layers.layer_scale import LayerScale
from keras_vit.layers.linear_attention import LinearSelfAttention
from keras_vit.layers.mlp import Mlp
from keras_vit.layers.mobilevit_blocks import (
    ClassifierHead,
    ConvNormAct,
    InvertedResidual,
    MobileViTBlock,
    fold_patches,
    unfold_patches,
)
from keras_vit.layers.mobilevitv2_blocks import LinearTransformerBlock, MobileViTV2Block
from keras_vit.layers.patch_embedding import PatchEmbedding, resample_patch_embed
from keras_vit.layers.position_embedding import (
    PositionEmbedding,
    interpolation_matrix,
    resample_abs_pos_embed,
)
from keras_vit.layers.preprocessing import ImageNormalization
from keras_vit.layers.squeeze_excite import SqueezeExcite
from keras_vit.layers.swiglu import SwiGLUPacked
from keras_vit.layers.tokens import PrependToken
from keras_vit.layers.transformer_block import TransformerBlock

__all__ = [
    "ClassifierHead",
    "ConvNormAct",
    "DropPath",
    "ImageNormalization",
    "InvertedResidual",
    "LayerScale",
    "LinearSelfAttention",
    "LinearTransformerBlock",
    "Mlp",
    "MobileViTBlock",
    "MobileViTV2Block",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "PositionEmbedding",
    "PrependToken",
    "ShiftAddDepthwiseConv2D",
    "SqueezeExcite",
    "SwiGLUPacked",
    "TransformerBlock",
    "fold_patches",
    "interpolation_matrix",
    "resample_abs_pos_embed",
    "resample_patch_embed",
    "unfold_patches",
]
