import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# torch (via timm/torchvision) must load its shared libraries before TensorFlow does: the
# other order segfaults in this TF 2.21 / torch 2.14 pairing.
try:
    import timm  # noqa: F401
    import torch  # noqa: F401
except ImportError:
    pass
