"""Every checkpoint format converts to the same outputs as its origin (max |diff| <= 1e-4).

timm safetensors and .pth vs timm; Hugging Face ViT / DeiT (and MobileViT when the family is
registered) vs the transformers PyTorch model; Google's ViT .npz vs timm's own npz loader.
All on small configs whose every parameter is randomised.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from parity import (
    assert_parity,
    nchw_to_nhwc,
    randomize_timm_model,
    save_timm_safetensors,
    structured_images,
    structured_pixels,
    subprocess_env,
    timm,
    timm_forward,
    torch,
)

import keras_vit
from keras_vit.convert.big_vision import timm_to_npz

VIT = "vit_tiny_patch16_224"
SMALL = dict(depth=2, image_size=64)  # keras_vit kwargs; timm takes img_size


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    ref = timm.create_model(VIT, depth=2, img_size=64, num_classes=10).eval()
    randomize_timm_model(ref, seed=11)
    folder = tmp_path_factory.mktemp("timm")
    return ref, save_timm_safetensors(ref, folder / "vit.safetensors"), structured_images(2, 64, 64)


def _ours(source, name=VIT, **kwargs):
    model = keras_vit.create_model(name, weights=source, include_preprocessing=False, **kwargs)
    return model


def _run(model, images_nchw):
    return model.predict_on_batch(nchw_to_nhwc(images_nchw))


def test_timm_safetensors_matches_timm(timm_vit):
    ref, path, images = timm_vit
    ours = _run(_ours(path, num_classes=10, **SMALL), images)
    diff = assert_parity(ours, timm_forward(ref, images))
    print(f"timm safetensors: max |diff| {diff:.2e}")


@pytest.mark.parametrize("wrap", ["plain", "model", "module_prefix"])
def test_timm_pth_through_weights_only_matches_timm(timm_vit, tmp_path, wrap):
    ref, _, images = timm_vit
    sd = ref.state_dict()
    obj = {
        "plain": sd,
        "model": {"model": sd, "epoch": 3},  # a training checkpoint (DeiT's published .pth)
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},  # DataParallel
    }[wrap]
    path = tmp_path / "vit.pth"
    torch.save(obj, path)
    diff = assert_parity(
        _run(_ours(path, num_classes=10, **SMALL), images), timm_forward(ref, images)
    )
    print(f"timm .pth ({wrap}): max |diff| {diff:.2e}")


def _write_npz(ref, path, num_heads, extra=None):
    arrays = timm_to_npz({k: v.numpy() for k, v in ref.state_dict().items()}, num_heads)
    np.savez(path, **arrays, **(extra or {}))
    return path


def test_npz_matches_timm_npz_loader(timm_vit, tmp_path):
    ref, _, images = timm_vit
    path = _write_npz(ref, tmp_path / "vit.npz", num_heads=3)
    # timm's own loader reads the file back into a fresh model: the writer is right ...
    timm_npz = timm.create_model(VIT, depth=2, img_size=64, num_classes=10).eval()
    timm_npz.load_pretrained(str(path))
    expected = timm_forward(timm_npz, images)
    np.testing.assert_allclose(expected, timm_forward(ref, images), atol=1e-5)
    # ... and keras_vit's converter gives what timm's npz loader gives
    diff = assert_parity(_run(_ours(path, num_classes=10, **SMALL), images), expected)
    print(f"big_vision .npz: max |diff| {diff:.2e}")


def test_npz_feature_only_with_pre_logits_matches_timm(tmp_path):
    """Original in21k .npz: a `pre_logits` layer timm drops, and no head: num_classes=0."""
    ref = timm.create_model(VIT, depth=1, img_size=32, num_classes=0).eval()
    randomize_timm_model(ref, seed=4)
    extra = {"pre_logits/kernel": np.ones((192, 192), np.float32), "pre_logits/bias": np.ones(192)}
    path = _write_npz(ref, tmp_path / "feat.npz", num_heads=3, extra=extra)
    timm_npz = timm.create_model(VIT, depth=1, img_size=32, num_classes=0).eval()
    timm_npz.load_pretrained(str(path))
    images = structured_images(2, 32, 32, seed=5)
    ours = _ours(path, num_classes=0, depth=1, image_size=32)
    assert_parity(_run(ours, images), timm_forward(timm_npz, images))


def _randomised_hf(model, seed):
    randomize_timm_model(model, seed=seed)  # every parameter, any torch module
    return model.eval()


def _hf_forward(model, images):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(images)).logits.numpy()


HF_ARCH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
OURS_ARCH = dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, image_size=32)


def test_hf_vit_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(**HF_ARCH, image_size=32, patch_size=16, num_labels=7)
    hf = _randomised_hf(transformers.ViTForImageClassification(config), seed=21)
    hf.save_pretrained(tmp_path / "hf_vit")  # config.json + model.safetensors
    images = structured_images(2, 32, 32, seed=1)
    ours = _ours(tmp_path / "hf_vit", num_classes=7, **OURS_ARCH)
    diff = assert_parity(_run(ours, images), _hf_forward(hf, images))
    print(f"HF ViTForImageClassification: max |diff| {diff:.2e}")


def test_hf_deit_with_teacher_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.DeiTConfig(**HF_ARCH, image_size=32, patch_size=16, num_labels=5)
    hf = transformers.DeiTForImageClassificationWithTeacher(config)
    hf = _randomised_hf(hf, seed=22)
    hf.save_pretrained(tmp_path / "hf_deit")
    images = structured_images(2, 32, 32, seed=2)
    ours = _ours(
        tmp_path / "hf_deit", "deit_tiny_distilled_patch16_224", num_classes=5, **OURS_ARCH
    )
    diff = assert_parity(_run(ours, images), _hf_forward(hf, images))
    print(f"HF DeiTForImageClassificationWithTeacher: max |diff| {diff:.2e}")
    # the same file through `pytorch_model.bin` (torch weights_only) gives the same model
    sd = hf.state_dict()
    os.rename(tmp_path / "hf_deit" / "model.safetensors", tmp_path / "model.safetensors")
    torch.save(sd, tmp_path / "hf_deit" / "pytorch_model.bin")
    ours_bin = _ours(
        tmp_path / "hf_deit", "deit_tiny_distilled_patch16_224", num_classes=5, **OURS_ARCH
    )
    np.testing.assert_array_equal(_run(ours_bin, images), _run(ours, images))


def test_hf_mobilevit_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.MobileViTConfig(  # mobilevit_xxs widths, 64 px
        hidden_sizes=[64, 80, 96],
        neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
        expand_ratio=2.0,
        num_labels=6,
        image_size=64,
    )
    hf = _randomised_hf(transformers.MobileViTForImageClassification(config), seed=23)
    hf.save_pretrained(tmp_path / "hf_mv")
    images = structured_images(2, 64, 64, seed=4)
    # HF MobileViT takes BGR (its processor flips RGB); the converted model takes RGB
    expected = _hf_forward(hf, np.ascontiguousarray(images[:, ::-1]))
    ours = _ours(tmp_path / "hf_mv", "mobilevit_xxs", num_classes=6, image_size=64)
    diff = assert_parity(_run(ours, images), expected)
    print(f"HF MobileViTForImageClassification: max |diff| {diff:.2e}")
    report = keras_vit.convert(
        tmp_path / "hf_mv",
        "mobilevit_xxs",
        tmp_path / "mv.weights.h5",
        num_classes=6,
        image_size=64,
    )
    assert report["format"] == "huggingface" and report["max_abs_diff"] <= 1e-4


def test_convert_writes_after_checking_and_reloads(timm_vit, tmp_path):
    ref, path, images = timm_vit
    out = tmp_path / "vit.weights.h5"
    report = keras_vit.convert(path, VIT, out, num_classes=10, **SMALL)
    assert report["format"] == "timm-safetensors"
    assert report["max_abs_diff"] is not None and report["max_abs_diff"] <= 1e-4
    reloaded = _ours(out, num_classes=10, **SMALL)
    assert_parity(_run(reloaded, images), timm_forward(ref, images))

    keras_file = tmp_path / "vit.keras"
    keras_vit.convert(path, VIT, keras_file, num_classes=10, **SMALL)
    import keras

    model = keras.saving.load_model(keras_file)
    pixels = structured_pixels(2, 64, 64)
    normalised = (pixels / 255.0 - 0.5) / 0.5  # the checkpoint's preprocessing travelled
    expected = timm_forward(ref, np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))
    assert_parity(model.predict_on_batch(pixels), expected)


def test_convert_refuses_to_write_when_outputs_differ(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from keras_vit.convert import huggingface

    config = transformers.ViTConfig(**HF_ARCH, image_size=32, patch_size=16, num_labels=3)
    _randomised_hf(transformers.ViTForImageClassification(config), seed=5).save_pretrained(
        tmp_path / "hf"
    )
    # a converter bug: q and k swapped. Every shape still fits; only the check can tell.
    swapped = {**huggingface._QKV, "attention.attention.query": 1, "attention.attention.key": 0}
    monkeypatch.setattr(huggingface, "_QKV", swapped)
    out = tmp_path / "bad.weights.h5"
    with pytest.raises(ValueError, match="differs from the source model.*nothing was written"):
        keras_vit.convert(tmp_path / "hf", VIT, out, num_classes=3, **OURS_ARCH)
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def _python(args, tmp_path, **env):
    """A child Python (nothing imported first: `keras_vit` loads TensorFlow before any torch)."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(**env),
        cwd=tmp_path,
        timeout=600,
    )


def _measured(text):
    """The max |logit diff| a `keras-vit convert` line reports."""
    match = re.search(r"max \|logit diff\| vs source ([0-9.e+-]+)", text)
    assert match, f"no measured difference in: {text!r}"
    return float(match.group(1))


def test_cli_convert_in_a_fresh_process_measures_the_difference(tmp_path):
    """`keras-vit convert` as users run it: a new process that imports TensorFlow first (it used
    to crash, exit 139, when it imported torch/timm afterwards for the check)."""
    ref = timm.create_model(VIT, img_size=64, num_classes=4).eval()  # full depth: no --depth
    randomize_timm_model(ref, seed=8)
    path = save_timm_safetensors(ref, tmp_path / "full.safetensors")
    out = tmp_path / "cli.weights.h5"
    proc = _python(
        ["-m", "keras_vit", "convert", path, "--model", VIT, "--output", out,
         "--num-classes", 4, "--image-size", 64, "--require-check"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    assert "not compared" not in proc.stdout
    assert 0 < _measured(proc.stdout) <= 1e-4
    images = structured_images(2, 64, 64, seed=3)
    model = _ours(out, num_classes=4, image_size=64)
    assert_parity(_run(model, images), timm_forward(ref, images))
    bad = _python(
        ["-m", "keras_vit", "convert", path, "--model", VIT, "--output", "x.h5"], tmp_path
    )
    assert bad.returncode == 2 and "must end in .weights.h5 or .keras" in bad.stderr


def test_api_convert_after_tensorflow_measures_the_difference(timm_vit, tmp_path):
    """`import keras_vit; keras_vit.convert(...)` in a process where TensorFlow came first."""
    _, path, _ = timm_vit
    script = (
        "import json, sys\n"
        "import keras_vit\n"
        "assert 'tensorflow' in sys.modules and 'torch' not in sys.modules\n"
        "report = keras_vit.convert(sys.argv[1], sys.argv[2], sys.argv[3], num_classes=10,\n"
        "                           depth=2, image_size=64, require_check=True)\n"
        "print('REPORT', json.dumps(report))\n"
    )
    proc = _python(["-c", script, path, VIT, tmp_path / "api.weights.h5"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert report["not_compared"] is None and 0 < report["max_abs_diff"] <= 1e-4


_HIDE = """
import importlib.abc, sys


class _Hide(importlib.abc.MetaPathFinder):  # as if timm and transformers were uninstalled
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("timm", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, _Hide())
"""


def test_missing_framework_is_said_plainly_and_require_check_refuses(
    timm_vit, tmp_path, monkeypatch
):
    """The reference process cannot import timm: the report says so; require_check refuses."""
    _, path, _ = timm_vit
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(_HIDE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "hide"), *sys.path]))
    out = tmp_path / "unchecked.weights.h5"
    report = keras_vit.convert(path, VIT, out, num_classes=10, **SMALL)
    assert report["max_abs_diff"] is None and out.exists()
    assert "not installed" in report["not_compared"] and "timm" in report["not_compared"]
    refused = tmp_path / "refused.weights.h5"
    with pytest.raises(ValueError, match="timm.*nothing was written"):
        keras_vit.convert(path, VIT, refused, num_classes=10, require_check=True, **SMALL)
    assert not refused.exists() and not list(tmp_path.glob("*.partial*"))


def test_convert_reads_the_checkpoint_once_and_builds_two_models(timm_vit, tmp_path, monkeypatch):
    from keras_vit import loading, registry

    _, path, _ = timm_vit
    reads, builds = [], []
    read, build = loading.read_state_dict, registry.create_model
    monkeypatch.setattr(loading, "read_state_dict", lambda *a: reads.append(a) or read(*a))
    monkeypatch.setattr(
        registry, "create_model", lambda *a, **k: builds.append(a) or build(*a, **k)
    )
    report = keras_vit.convert(path, VIT, tmp_path / "o.weights.h5", num_classes=10, **SMALL)
    assert report["max_abs_diff"] <= 1e-4
    assert (len(reads), len(builds)) == (1, 2)


def test_new_num_classes_resets_both_distilled_heads(tmp_path, caplog):
    name = "deit_tiny_distilled_patch16_224"
    ref = randomize_timm_model(timm.create_model(name, depth=1, img_size=32).eval(), seed=9)
    path = save_timm_safetensors(ref, tmp_path / "deit.safetensors")
    with caplog.at_level("INFO", logger="keras_vit"):
        model = keras_vit.create_model(name, weights=path, depth=1, image_size=32, num_classes=6)
    assert "new classifier head" in caplog.text
    assert model.get_layer("head").kernel.shape == (192, 6)
    assert model.get_layer("head_dist").kernel.shape == (192, 6)
    np.testing.assert_array_equal(
        model.get_layer("dist_token").get_weights()[0], ref.dist_token.detach().numpy()
    )
