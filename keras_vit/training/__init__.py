"""Training: DeiT's losses and the teacher-student distiller."""

from keras_vit.training import losses
from keras_vit.training.distiller import DeiTDistiller

__all__ = ["DeiTDistiller", "losses"]
