"""Model families, one per module; importing them registers their variants."""

from keras_vit.models.vit import VisionTransformer

__all__ = ["VisionTransformer"]
