"""examples/benchmark_cpu.py, the program behind the README's CPU tables: its model patterns,
its ratio arithmetic, and one real run whose printed ratios must follow from its printed rates.
"""

import importlib.util
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, subprocess_env

BENCHMARK = os.path.join(REPO_ROOT, "examples", "benchmark_cpu.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_cpu", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patterns_expand_to_registered_names_in_order(bench):
    assert bench.expand_models(["deit_tiny_patch16_224", "mobilevit_x*", "mobilevit_xs"]) == [
        "deit_tiny_patch16_224",
        "mobilevit_xs",
        "mobilevit_xxs",
    ]
    assert len(bench.expand_models(["mobilevitv2_*"])) == 7  # 0.5, 0.75, ... 2.0
    with pytest.raises(ValueError, match="'mobilevit_q\\*' matches no registered model"):
        bench.expand_models(["mobilevit_q*"])


def test_speed_ratios_formula(bench):
    rates = {"keras_f32": 10.0, "ort_f32": 8.0, "timm_f32": 4.0, "keras_bf16": 12.0}
    rates |= {"keras_int8": 15.0, "timm_bf16": 10.0}
    assert bench.speed_ratios(rates) == {
        "f32/ORT f32": 1.25,
        "f32/timm f32": 2.5,
        "bf16|int8/timm bf16": 1.5,  # the faster of bf16 and int8
    }
    del rates["keras_int8"], rates["ort_f32"]
    assert bench.speed_ratios(rates) == {"f32/timm f32": 2.5, "bf16|int8/timm bf16": 1.2}


def test_run_prints_ratios_of_its_own_rates():
    """A real (tiny) run: a pattern as the model, keras_vit f32 beside timm and ONNX Runtime;
    every rate positive and each printed ratio the quotient of the printed rates."""
    args = ["mobilevit_xx*", "--precisions", "f32", "--refs", "timm_f32,ort_f32"]
    proc = subprocess.run(
        [sys.executable, BENCHMARK, *args, "--rounds", "1", "--batch", "2"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert lines[header].split() == ["model", "GFLOP", "keras_f32", "timm_f32", "ort_f32"]
    name, gflop, keras_f32, timm_f32, ort_f32 = lines[header + 1].split()
    assert name == "mobilevit_xxs" and abs(float(gflop) - 0.66) < 0.02  # timm's FLOP count
    rates = {"keras_f32": float(keras_f32), "timm_f32": float(timm_f32), "ort": float(ort_f32)}
    assert all(v > 0 for v in rates.values()), rates
    start = lines.index("keras_vit / reference, images/s of this run:")
    assert lines[start + 1].split() == ["model", "f32/ORT", "f32", "f32/timm", "f32"]
    name, over_ort, over_timm = lines[start + 2].split()
    assert name == "mobilevit_xxs"
    # the rates are printed to 2 decimals, the ratios from the unrounded ones
    expected = (rates["keras_f32"] / rates["ort"], rates["keras_f32"] / rates["timm_f32"])
    for printed, ratio in zip((over_ort, over_timm), expected):
        assert float(printed) == pytest.approx(ratio, rel=2e-3, abs=6e-3)
