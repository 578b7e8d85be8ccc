"""Model families, one per module; importing them registers their variants."""

from keras_vit.models import vit_registers  # noqa: F401  (registers only: no class of its own)
from keras_vit.models.deit import DistilledVisionTransformer
from keras_vit.models.mobilevit import MobileViT
from keras_vit.models.mobilevitv2 import MobileViTV2
from keras_vit.models.vit import VisionTransformer

__all__ = ["DistilledVisionTransformer", "MobileViT", "MobileViTV2", "VisionTransformer"]
