"""`keras_vit.validate` / `keras-vit validate` on a generated folder (63 images, 3 classes
whose natural order differs from plain sorting) give the same per-image predictions, top-1,
top-5 and loss as timm's validate.py logic (ImageDataset + create_loader's eval transform +
the timm model) with the same random weights, for a ViT, a distilled DeiT and a MobileViT; the
CLI writes timm's result columns, and a corrupt file is a one-line error naming it."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from export_fixtures import uint8_images
from PIL import Image

import keras_vit
from keras_vit.evaluation import RESULT_COLUMNS, find_images_and_targets

CLASSES = ("cat2", "cat10", "Dog")  # natural order: cat2, cat10, dog (sorted(): cat10 first)
CHECKPOINTS = [
    ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", {"depth": 2}),
    ("deit_tiny_distilled_patch16_224.fb_in1k", {"depth": 2}),
    ("mobilevit_xxs.cvnets_in1k", {}),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    sizes = [(120, 160), (200, 150), (96, 96), (300, 240), (64, 48), (180, 320), (250, 250)]
    n = 0
    for c, name in enumerate(CLASSES):
        os.makedirs(root / name)
        for i in range(21):
            h, w = sizes[(i + c) % len(sizes)]
            image = Image.fromarray(uint8_images(1, h, w, seed=100 * c + i)[0])
            ext, kw = [("jpg", dict(quality=90)), ("png", {}), ("jpeg", dict(quality=70))][i % 3]
            image.save(root / name / f"img{i}.{ext}", **kw)
            n += 1
    (root / CLASSES[0] / "notes.txt").write_text("not an image")  # ignored, as by timm
    assert n >= 60
    return root


def _timm_validate(timm_model, root):
    """timm's validate.py, on CPU without the prefetcher: per-image top-1, labels, top-5
    accuracy and mean cross-entropy."""
    import torch
    from timm.data import create_dataset, create_loader, resolve_data_config

    cfg = resolve_data_config({}, model=timm_model)
    dataset = create_dataset(root=str(root), name="", split="validation")
    loader = create_loader(
        dataset,
        input_size=cfg["input_size"],
        batch_size=16,
        use_prefetcher=False,
        interpolation=cfg["interpolation"],
        mean=cfg["mean"],
        std=cfg["std"],
        num_workers=0,
        crop_pct=cfg["crop_pct"],
        crop_mode=cfg["crop_mode"],
    )
    logits, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            logits.append(timm_model(x).numpy())
            labels.append(y.numpy())
    logits, labels = np.concatenate(logits).astype(np.float64), np.concatenate(labels)
    top5 = np.argsort(-logits, 1)[:, :5]
    lse = logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
    loss = float(np.mean(lse - logits[np.arange(len(labels)), labels]))
    return logits.argmax(1), labels, 100 * float((top5 == labels[:, None]).any(1).mean()), loss


def test_folder_order_is_timms(folder):
    from timm.data.readers.reader_image_folder import find_images_and_targets as timm_find

    paths, labels, classes = find_images_and_targets(str(folder))
    samples, class_to_idx = timm_find(str(folder))
    assert classes == ("cat2", "cat10", "Dog") and len(paths) == 63
    assert [class_to_idx[c] for c in classes] == [0, 1, 2]
    assert paths == [p for p, _ in samples] and labels == [t for _, t in samples]


@pytest.mark.parametrize("checkpoint,overrides", CHECKPOINTS, ids=[c for c, _ in CHECKPOINTS])
def test_predictions_equal_timm_validate(folder, tmp_path, checkpoint, overrides):
    import timm
    from helpers import randomize_timm_model, save_timm_safetensors

    ref_model = timm.create_model(checkpoint, pretrained=False, **overrides).eval()
    randomize_timm_model(ref_model, seed=3)
    weights = save_timm_safetensors(ref_model, tmp_path / "w.safetensors")
    ref_pred, ref_labels, ref_top5, ref_loss = _timm_validate(ref_model, folder)
    assert len(set(ref_pred.tolist())) >= 3  # the random model tells the images apart

    model = keras_vit.create_model(checkpoint, weights=str(weights), **overrides)
    result = keras_vit.validate(model, data=str(folder), batch_size=10, return_predictions=True)
    _, labels, _ = find_images_and_targets(str(folder))
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(result["predictions"], ref_pred)
    top1 = 100 * float(np.mean(ref_pred == ref_labels))
    assert result["top1"] == pytest.approx(top1, abs=1e-4)
    assert result["top5"] == pytest.approx(ref_top5, abs=1e-4)
    assert result["loss"] == pytest.approx(ref_loss, abs=1e-4)
    cfg = ref_model.pretrained_cfg
    assert result["model"] == checkpoint and result["num_images"] == 63
    assert result["img_size"] == cfg["input_size"][-1]
    assert result["crop_pct"] == cfg["crop_pct"] and result["interpolation"] == cfg["interpolation"]
    params = sum(p.numel() for p in ref_model.parameters())
    assert result["param_count"] == round(params / 1e6, 2)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "keras_vit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    from export_fixtures import randomize_keras_model

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model = keras_vit.create_model(
        "deit_tiny_distilled_patch16_224", image_size=32, depth=1, num_classes=10
    )
    randomize_keras_model(model, seed=2)
    model.save(path)
    return path


def test_cli_writes_timms_columns(folder, tmp_path, tiny_keras):
    import keras

    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    proc = _cli("validate", "--weights", tiny_keras, "--data", folder, "--results-file", out_json)
    assert proc.returncode == 0, proc.stderr
    assert "Acc@1" in proc.stdout
    row = json.loads(out_json.read_text())
    assert list(row)[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    expected = keras_vit.validate(keras.saving.load_model(tiny_keras), data=str(folder))
    for key in ("top1", "top5", "img_size", "crop_pct", "interpolation", "param_count"):
        assert row[key] == expected[key], key
    assert row["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    # the .keras file keeps the checkpoint cfg: its crop, not timm's default 0.875
    cfg = keras_vit.get_pretrained_cfg("deit_tiny_distilled_patch16_224")
    assert row["img_size"] == 32 and row["crop_pct"] == cfg.crop_pct
    proc = _cli("validate", "--weights", tiny_keras, "--data", folder, "--results-file", out_csv)
    assert proc.returncode == 0, proc.stderr
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and list(rows[0]) == list(RESULT_COLUMNS)
    assert float(rows[0]["top1"]) == row["top1"]


def test_cli_corrupt_file_is_one_line_naming_it(folder, tmp_path, tiny_keras):
    import shutil

    root = tmp_path / "val"
    shutil.copytree(folder, root)
    good = (root / "cat10" / "img4.png").read_bytes()
    (root / "cat10" / "img5.png").write_bytes(good[: len(good) // 3])  # truncated
    proc = _cli("validate", "--weights", tiny_keras, "--data", root)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "img5.png" in lines[0] and lines[0].startswith("keras-vit validate: error:")


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        keras_vit.validate("deit_tiny_patch16_224", weights=None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        keras_vit.validate(
            keras_vit.create_model("deit_tiny_patch16_224", depth=1), data="/nowhere"
        )


def test_tfds_source_reads_encoded_bytes():
    """A TFDS name (mocked: TFDS's `mock_data` writes PNG-encoded images): the encoded bytes
    go through the same transform, so the predictions are the model's on timm's pixels."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from export_fixtures import randomize_keras_model, timm_eval_steps

    from keras_vit.data.transform import EvalTransform

    model = keras_vit.create_model("deit_tiny_patch16_224", image_size=32, depth=1)
    randomize_keras_model(model, seed=4)
    steps, _ = timm_eval_steps(EvalTransform.from_model(model))
    with tfds.testing.mock_data(num_examples=12):
        result = keras_vit.validate(
            model, dataset="cifar10", split="test", batch_size=5, return_predictions=True
        )
        decoded = tfds.load("cifar10", split="test", as_supervised=True, shuffle_files=False)
        pixels, labels = [], []
        for image, label in decoded:
            picture = Image.fromarray(image.numpy())
            for step in steps:
                picture = step(picture)
            pixels.append(np.asarray(picture, np.float32))
            labels.append(int(label))
    logits = np.asarray(model.predict_on_batch(np.stack(pixels)))
    assert result["num_images"] == 12
    assert np.ptp(logits, axis=0).max() > 0.1  # the images give different logits
    np.testing.assert_array_equal(result["predictions"], logits.argmax(1))
    assert result["top1"] == pytest.approx(100 * np.mean(logits.argmax(1) == labels), abs=1e-4)
