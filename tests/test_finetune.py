"""Fine-tuning a checkpoint with `keras_vit.train(weights=...)` / `keras-vit train --weights`.

The checkpoint is a timm ViT at reduced size (depth 2, width 48) with every parameter
randomised, saved as safetensors. Checked: before the first step the student's backbone is
the file's (the trained model at lr 0 equals `create_model` with the file and matches timm on
the file's weights with the fresh head), its head has the data set's width; one device and
Mirrored over 2 logical CPUs end with the same weights; SIGKILL and rerun ends with the
uninterrupted weights; a linear probe changes only the head; teachers load their weights
(by tag through a local Hub server, a Keras Applications file) and a teacher without weights
is refused.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from helpers import (
    assert_parity,
    nchw_to_nhwc,
    randomize_timm_model,
    save_timm_safetensors,
    structured_images,
    subprocess_env,
    timm_forward,
)
from test_download import NAME as TAG_NAME
from test_download import RESOLVE, server  # noqa: F401  (the local Hub server fixture)

import keras_vit
from keras_vit.training.train import _load_teacher, student_weights

ARCH = dict(depth=2, embed_dim=48, num_heads=3)  # of vit_tiny_patch16_224
MODEL = "vit_tiny_patch16_224"
SIZE = 32  # the checkpoint's 14x14 position grid resampled to 2x2
LR0 = {"lr": 0.0, "warmup_lr": 0.0, "min_lr": 0.0}  # no step moves a weight
TIMEOUT = 300


@pytest.fixture(scope="module")
def timm_ref():
    return randomize_timm_model(timm.create_model(MODEL, **ARCH).eval(), seed=11)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, timm_ref):
    return str(save_timm_safetensors(timm_ref, tmp_path_factory.mktemp("ckpt") / "vit.safetensors"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes x 12 PNGs of 40x40: a class is a colour and a stripe direction, plus noise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    grid = np.arange(40)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir()
        for i in range(12):
            stripes = ((grid[:, None] if c != 1 else grid[None, :]) // 5) % 2  # (40, 40)
            image = rng.uniform(0, 60, (40, 40, 3))
            image[..., c] += 150 * np.broadcast_to(stripes, (40, 40))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return str(root)


def _load(path):
    import keras

    import keras_vit.models  # noqa: F401

    return keras.saving.load_model(path)


def _reference(checkpoint, num_classes):
    """What `create_model` gives with the file at the training size (fresh head)."""
    return keras_vit.create_model(
        MODEL, weights=checkpoint, num_classes=num_classes, image_size=SIZE, **ARCH
    )


def _backbone(model):
    return {v.path: v.numpy() for v in model.weights if not v.path.startswith("head/")}


def _timm_at_size(timm_ref, head):
    """timm's model at SIZE from the same weights (its own pos-embed resampling), with the
    keras model's `head` (kernel (D, C), bias (C,)) as its classifier."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    ref = timm.create_model(MODEL, img_size=SIZE, num_classes=head[1].shape[0], **ARCH).eval()
    state = {k: v for k, v in timm_ref.state_dict().items() if not k.startswith("head.")}
    state = checkpoint_filter_fn(state, ref)
    state["head.weight"] = torch.from_numpy(np.ascontiguousarray(head[0].T))
    state["head.bias"] = torch.from_numpy(head[1])
    ref.load_state_dict(state)
    return ref


@pytest.mark.parametrize("dataset", ["digits", "folder"])
def test_finetune_starts_from_the_checkpoint_with_a_head_of_the_data_set(
    dataset, checkpoint, timm_ref, image_folder, tmp_path
):
    data = image_folder if dataset == "folder" else "digits"
    classes = 3 if dataset == "folder" else 10
    metrics = keras_vit.train(
        model=MODEL, weights=checkpoint, model_kwargs=ARCH, dataset=data, image_size=SIZE,
        epochs=1, batch_size=16, recipe=LR0, strategy="one", output=str(tmp_path), verbose=0,
    )  # fmt: skip
    assert metrics["epochs"] == 1 and metrics["num_train"] > 0
    model = _load(str(tmp_path / "model.keras"))
    head = model.get_layer("head")
    assert tuple(head.kernel.shape) == (48, classes)
    import keras

    keras.utils.set_random_seed(0)  # train()'s seed: the fresh head is the one it starts from
    np.testing.assert_array_equal(
        head.kernel.numpy(), _reference(checkpoint, classes).get_layer("head").kernel.numpy()
    )
    # the backbone is the file's, exactly as create_model loads it (pos embed resampled)
    ours, ref = _backbone(model), _backbone(_reference(checkpoint, classes))
    assert ours.keys() == ref.keys() and len(ours) > 10
    for path in ours:
        np.testing.assert_array_equal(ours[path], ref[path], err_msg=path)
    # ... which is timm's model on the file's weights (with our fresh head)
    images = structured_images(2, SIZE, SIZE, seed=5)
    theirs = timm_forward(_timm_at_size(timm_ref, (head.kernel.numpy(), head.bias.numpy())), images)
    normalised = keras_vit.create_model(
        MODEL, weights=checkpoint, num_classes=classes, image_size=SIZE,
        include_preprocessing=False, **ARCH,
    )  # fmt: skip
    normalised.get_layer("head").set_weights(head.get_weights())
    diff = assert_parity(normalised.predict_on_batch(nchw_to_nhwc(images)), theirs)
    print(f"fine-tune start vs timm: max |logit diff| = {diff:.3g}")


def test_tagged_student_starts_from_the_published_checkpoint(server, tmp_path):  # noqa: F811
    """`train(model=NAME.TAG)`: downloaded from the (local) Hub, verified, loaded, new head."""
    from safetensors.torch import save

    ref = randomize_timm_model(timm.create_model(MODEL, depth=1).eval(), seed=4)
    body = save({k: v.contiguous() for k, v in ref.state_dict().items()})
    server.publish(RESOLVE, body)
    keras_vit.train(
        model=TAG_NAME, model_kwargs={"depth": 1}, dataset="digits", image_size=SIZE, epochs=1,
        batch_size=64, recipe=LR0, strategy="one", output=str(tmp_path / "run"), verbose=0,
    )  # fmt: skip
    assert len(server.gets()) == 1
    model = _load(str(tmp_path / "run" / "model.keras"))
    assert tuple(model.get_layer("head").kernel.shape) == (192, 10)
    (tmp_path / "file.safetensors").write_bytes(body)
    expected = keras_vit.create_model(
        MODEL, weights=str(tmp_path / "file.safetensors"), num_classes=10, image_size=SIZE, depth=1
    )
    ours, ref_w = _backbone(model), _backbone(expected)
    assert ours.keys() == ref_w.keys()
    for path in ours:
        np.testing.assert_array_equal(ours[path], ref_w[path], err_msg=path)


def test_tagged_name_defaults_to_its_checkpoint_and_a_bare_name_to_random():
    assert student_weights("deit_small_patch16_224.fb_in1k", None) == "pretrained"
    assert student_weights("deit_small_patch16_224", None) is None
    assert student_weights("deit_small_patch16_224.fb_in1k", "random") is None
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        student_weights(MODEL, "nope.safetensors")


def test_linear_probe_changes_only_the_head(checkpoint, tmp_path):
    import keras

    metrics = keras_vit.train(
        model=MODEL, weights=checkpoint, model_kwargs=ARCH, dataset="digits", image_size=SIZE,
        epochs=1, batch_size=32, freeze_backbone=True, strategy="one", output=str(tmp_path),
        verbose=0,
    )  # fmt: skip
    model = _load(str(tmp_path / "model.keras"))
    ours, ref = _backbone(model), _backbone(_reference(checkpoint, 10))
    for path in ours:
        np.testing.assert_array_equal(ours[path], ref[path], err_msg=path)
    keras.utils.set_random_seed(0)  # train()'s seed: the head it starts from
    fresh = _reference(checkpoint, 10).get_layer("head").kernel.numpy()
    moved = float(np.max(np.abs(model.get_layer("head").kernel.numpy() - fresh)))
    print(f"linear probe: head moved by max {moved:.3g}, backbone by 0")
    assert moved > 1e-4  # one epoch of warmup at 1e-3 x 32/512
    assert metrics["epochs"] == 1


_MIRRORED = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, keras_vit
ckpt, out = sys.argv[1], sys.argv[2]
weights = {}
for name in ("one", "mirrored"):
    m = keras_vit.train(model="vit_tiny_patch16_224", weights=ckpt,
                        model_kwargs=dict(depth=2, embed_dim=48, num_heads=3), dataset="digits",
                        image_size=32, epochs=1, batch_size=64, seed=3, strategy=name,
                        output=out + "/" + name, verbose=0, jit_compile=False,
                        recipe={"layer_decay": 0.75})  # per-replica variables, scaled lr
    assert m["replicas"] == (1 if name == "one" else 2), m
    weights[name] = [v.numpy() for v in keras.saving.load_model(out + "/" + name + "/model.keras").weights]
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights["one"], weights["mirrored"]))
ref = keras_vit.create_model("vit_tiny_patch16_224", weights=ckpt, num_classes=10, image_size=32,
                             depth=2, embed_dim=48, num_heads=3)
moved = max(float(np.max(np.abs(a - b.numpy()))) for a, b in zip(weights["one"], ref.weights))
print(json.dumps(dict(weight_diff=diff, moved=moved)))
"""


def test_mirrored_two_cpus_equals_one_device_from_a_checkpoint(checkpoint, tmp_path):
    """The fine-tune preset with layer-wise decay, 1 epoch (23 steps) from the file."""
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED, checkpoint, str(tmp_path)],
        env=subprocess_env(CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"fine-tune Mirrored(2 CPUs) vs one device: max |weight diff| = {result['weight_diff']:.3g}"
    )
    assert result["moved"] > 1e-4  # training moved the weights (not two copies of the file)
    assert result["weight_diff"] <= 1e-5


# drop path, MixUp/CutMix on every batch and random erasing on top of the fine-tune preset: the
# data order, the augmentation and the dropout generators must all be restored
AUGMENTED = [
    "--recipe", "drop_path_rate=0.2", "--recipe", "mixup_alpha=0.8", "--recipe", "cutmix_alpha=1.0",
    "--recipe", "mix_prob=1.0", "--recipe", "erasing_prob=0.25",
]  # fmt: skip


def test_sigkill_then_rerun_of_a_finetune_equals_uninterrupted(checkpoint, tmp_path):
    from test_train_resume import _kill_during_epoch_2, _run

    def cmd(output):
        return [
            sys.executable, "-m", "keras_vit", "train", "--model", MODEL, "--weights", checkpoint,
            "--model-kwargs", "depth=2", "--model-kwargs", "embed_dim=48",
            "--model-kwargs", "num_heads=3", "--dataset", "digits", "--image-size", str(SIZE),
            "--epochs", "3", "--batch-size", "32", "--seed", "5", "--strategy", "one",
            *AUGMENTED, "--output", str(output),
        ]  # fmt: skip

    straight = _run(tmp_path / "straight", cmd(tmp_path / "straight"))
    crashed = tmp_path / "crashed"
    assert _kill_during_epoch_2(crashed, cmd(crashed))["epoch"] == 1
    assert not (crashed / "model.keras").exists()
    resumed = _run(crashed, cmd(crashed))
    assert (straight["resumed_from_epoch"], resumed["resumed_from_epoch"]) == (0, 1)
    straight_model = _load(str(tmp_path / "straight" / "model.keras"))
    a = [v.numpy() for v in straight_model.weights]
    b = [v.numpy() for v in _load(str(crashed / "model.keras")).weights]
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    print(f"fine-tune resume: max |weight diff| = {diff:.3g}")
    assert len(a) == len(b) > 10 and diff <= 1e-5
    assert resumed["val_accuracy"] == pytest.approx(straight["val_accuracy"], abs=1e-6)
    # ... and training moved the weights (the comparison is not between two copies of the file)
    ours, start = _backbone(straight_model), _backbone(_reference(checkpoint, 10))
    moved = max(float(np.max(np.abs(ours[path] - start[path]))) for path in start)
    print(f"fine-tune resume: backbone moved by max {moved:.3g} from the file")
    assert moved > 1e-4


# --- teachers -----------------------------------------------------------------------------
def test_teacher_by_tag_loads_its_published_weights(server, tmp_path):  # noqa: F811
    from safetensors.torch import save

    ref = randomize_timm_model(timm.create_model(MODEL).eval(), seed=3)  # the tag's full model
    server.publish(RESOLVE, save({k: v.contiguous() for k, v in ref.state_dict().items()}))
    teacher, adapter = _load_teacher(TAG_NAME, num_classes=1000, image_size=SIZE)
    assert adapter is None and len(server.gets()) == 1
    assert teacher.pretrained_cfg.name == TAG_NAME and teacher.output_shape[-1] == 1000
    pixels = np.clip(127.5 + 60 * nchw_to_nhwc(structured_images(2, 224, 224, seed=2)), 0, 255)
    normalised = np.ascontiguousarray(((pixels / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2))
    diff = assert_parity(teacher.predict_on_batch(pixels.astype("float32")),
                         timm_forward(ref, normalised.astype("float32")))  # fmt: skip
    print(f"teacher by tag vs timm: max |logit diff| = {diff:.3g}")


def test_a_teacher_without_weights_is_refused_unless_asked_for():
    with pytest.raises(ValueError, match="vit_large_patch14_224.*no published checkpoint"):
        _load_teacher("vit_large_patch14_224", 10, SIZE)
    with pytest.raises(ValueError, match="needs --teacher-model"):
        _load_teacher(__file__, 10, SIZE)  # a file that is not a .keras model
    # every Keras Applications constructor finds its preprocess_input (MobileNetV3Small is
    # exported only at the top of keras.applications)
    from keras_vit.training.teachers import _application

    assert _application("keras:MobileNetV3Small")[2].__name__.endswith("mobilenet_v3")
    assert _application("keras:EfficientNetV2B0")[2].__name__.endswith("efficientnet_v2")
    with pytest.raises(ValueError, match="Unknown Keras Applications model 'EfficientNetV9'"):
        _load_teacher("keras:EfficientNetV9", 10, SIZE)
    with pytest.raises(ValueError, match="teacher_weights"):
        _load_teacher(MODEL, 10, SIZE, teacher_weights="none")
    teacher, _ = _load_teacher("deit_tiny_patch16_224", 10, SIZE, teacher_weights="random")
    assert teacher.output_shape[-1] == 10  # asked for: built, at the data set's classes


def test_keras_application_teacher_without_its_imagenet_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache, and no network here
    with pytest.raises(OSError, match="ImageNet weights of Keras Applications MobileNetV2"):
        _load_teacher("keras:MobileNetV2", 1000, SIZE)


def test_keras_application_teacher_from_a_file_with_its_own_preprocessing(image_folder, tmp_path):
    import keras

    made = keras.applications.MobileNetV2(weights=None, classes=3)
    rng = np.random.default_rng(0)
    for v in made.weights:  # not the constructor's init: a file to recognise
        v.assign(v.numpy() + rng.normal(0, 0.01, v.shape).astype(v.dtype))
    path = str(tmp_path / "mnv2.weights.h5")
    made.save_weights(path)
    teacher, adapter = _load_teacher(path, 3, SIZE, teacher_model="keras:MobileNetV2")
    for a, b in zip(teacher.weights, made.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the adapter: student pixels (0..255, 32x32) -> 224x224 -> MobileNetV2's [-1, 1]
    pixels = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    expected = keras.ops.image.resize(pixels, (224, 224), interpolation="bilinear") / 127.5 - 1
    np.testing.assert_allclose(adapter(pixels), expected, atol=1e-5)
    # and it distils through train(): the teacher is run on what the adapter makes
    metrics = keras_vit.train(
        model="deit_tiny_distilled_patch16_224", weights="random", model_kwargs=ARCH,
        dataset=image_folder, image_size=SIZE, epochs=1, batch_size=8, teacher=path,
        teacher_model="keras:MobileNetV2", distillation="hard", strategy="one",
        output=str(tmp_path / "run"), verbose=0,
    )  # fmt: skip
    assert metrics["teacher"] == teacher.name and metrics["distillation"] == "hard"
    assert 0.0 <= metrics["val_teacher_agreement"] <= 1.0
