"""The built-in offline data set: scikit-learn's 1,797 handwritten digits (8x8, 0..16).

It ships inside scikit-learn, so it needs no network. Images come out as RGB 0..255 at 8x8;
the pipeline upscales them to the model's input size.
"""

import numpy as np

NUM_CLASSES = 10
CLASS_NAMES = tuple(str(i) for i in range(NUM_CLASSES))


def load_digits_arrays():
    """`(images (1797, 8, 8, 3) float32 in 0..255, labels (1797,) int32)`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is an install requirement
        raise ImportError(
            "The `digits` data set needs scikit-learn: pip install scikit-learn"
        ) from err
    bunch = load_digits()
    gray = bunch.images.astype(np.float32) * (255.0 / 16.0)  # (N, 8, 8), 0..16 -> 0..255
    images = np.repeat(gray[..., None], 3, axis=-1)  # (N, 8, 8, 3) grey as RGB
    return images, bunch.target.astype(np.int32)
