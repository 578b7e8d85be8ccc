"""The same model code runs on Keras's JAX backend, without TensorFlow, and matches timm."""

import json
import subprocess
import sys

import pytest
from helpers import (
    randomize_timm_model,
    save_timm_safetensors,
    structured_images,
    subprocess_env,
    timm_forward,
)

timm = pytest.importorskip("timm")
pytest.importorskip("jax")

SCRIPT = """
import importlib.abc, json, sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    # as on the GPU host: JAX, no TensorFlow; `import keras_vit` must not need it
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"{name} is blocked in this test")


sys.meta_path.insert(0, _NoTensorFlow())
import numpy as np, keras
import keras_vit
assert keras.backend.backend() == "jax", keras.backend.backend()
images = np.load(sys.argv[2])
model = keras_vit.create_model(
    "vit_tiny_patch16_224", depth=2, weights=sys.argv[1], include_preprocessing=False
)
np.save(sys.argv[3], np.asarray(model.predict_on_batch(images)))
assert "tensorflow" not in sys.modules
print(json.dumps({"backend": keras.backend.backend()}))
"""


def test_vit_on_jax_backend_matches_timm(tmp_path):
    import numpy as np

    ref = randomize_timm_model(timm.create_model("vit_tiny_patch16_224", depth=2).eval(), seed=9)
    weights = save_timm_safetensors(ref, tmp_path / "w.safetensors")
    images = structured_images(2, 224, 224)
    np.save(tmp_path / "x.npy", images.transpose(0, 2, 3, 1))
    env = subprocess_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(weights),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["backend"] == "jax"
    ours = np.load(tmp_path / "y.npy")
    assert np.max(np.abs(ours - timm_forward(ref, images))) <= 1e-4
