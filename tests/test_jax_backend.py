"""The same model code runs on Keras's JAX backend, without TensorFlow, and matches timm; the
GPU benchmark (examples/benchmark_gpu.py) runs there at toy size."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import (
    WITHOUT_TENSORFLOW_PRELUDE,
    randomize_timm_model,
    save_timm_safetensors,
    structured_images,
    subprocess_env,
    timm_forward,
)

timm = pytest.importorskip("timm")
pytest.importorskip("jax")

# as on the GPU host: JAX, no TensorFlow; `import keras_vit` must not need it
SCRIPT = (
    WITHOUT_TENSORFLOW_PRELUDE
    + """
import json
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
)


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


GPU_BENCHMARK = os.path.join(os.path.dirname(__file__), "..", "examples", "benchmark_gpu.py")
# (model, mode) rows the GPU benchmark prints by default; timm has no compiled distill row
GPU_ROWS = {
    ("vit_base_patch16_224", "inference"),
    ("vit_base_patch16_224", "train step"),
    ("deit_small_distilled_patch16_224", "inference"),
    ("deit_small_distilled_patch16_224", "train step"),
    ("deit_small_distilled_patch16_224", "distill (resnet50)"),
    ("mobilevit_s", "inference"),
    ("mobilevit_s", "train step"),
}


def test_gpu_benchmark_runs_without_tensorflow():
    """examples/benchmark_gpu.py --smoke on CPU JAX, TensorFlow uninstalled as on the GPU
    host: every row of the GPU table comes out with positive, finite images/s. Device time
    is scarce (minutes a session); a program that breaks there wastes it."""
    script = WITHOUT_TENSORFLOW_PRELUDE + textwrap.dedent(
        f"""
        import runpy
        sys.argv = [{GPU_BENCHMARK!r}, "--smoke"]
        runpy.run_path({GPU_BENCHMARK!r}, run_name="__main__")
        """
    )
    env = subprocess_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {(r["model"], r["mode"]) for r in rows} == GPU_ROWS and len(rows) == len(GPU_ROWS)
    for row in rows:
        compiled_expected = not row["mode"].startswith("distill")
        rates = [row["keras_device"], row["keras_host"], row["timm_eager"]]
        rates += [row["timm_compiled"]] if compiled_expected else []
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in rates), row
        assert compiled_expected or row["timm_compiled"] is None, row
    assert "tensorflow imported: no" in proc.stdout
