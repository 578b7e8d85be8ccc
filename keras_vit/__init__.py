"""keras_vit: a Keras 3 model zoo for vision transformers, numerically identical to timm."""

from keras_vit.loading import load_weights
from keras_vit.registry import create_model, list_models

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "load_weights", "__version__"]
