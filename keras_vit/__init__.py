"""keras_vit: a Keras 3 model zoo for vision transformers, numerically identical to timm."""

# isort: off
from keras_vit import _quiet_start  # noqa: F401  (first: quiet backend start under `keras-vit`)

# isort: on
from keras_vit.attention import attention_rollout, attention_weights, rollout_map
from keras_vit.convert.api import convert
from keras_vit.evaluation import validate
from keras_vit.export import export_saved_model, export_tflite
from keras_vit.export_onnx import export_onnx
from keras_vit.loading import load_weights
from keras_vit.pretrained import get_pretrained_cfg, list_pretrained
from keras_vit.registry import create_model, list_models
from keras_vit.training import DeiTDistiller
from keras_vit.training.train import train

__version__ = "0.1.0"

__all__ = [
    "DeiTDistiller",
    "attention_rollout",
    "attention_weights",
    "convert",
    "create_model",
    "export_onnx",
    "export_saved_model",
    "export_tflite",
    "get_pretrained_cfg",
    "list_models",
    "list_pretrained",
    "load_weights",
    "rollout_map",
    "train",
    "validate",
    "__version__",
]
