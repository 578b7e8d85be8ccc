"""The checkpoint registry (keras_vit/pretrained/checkpoints.json) against timm's own
pretrained configs, and the tag's config travelling with the model."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest

import keras_vit
from keras_vit.cli import main as cli_main
from keras_vit.pretrained import class_names, get_pretrained_cfg, list_pretrained

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")
from timm.models import get_pretrained_cfg as timm_cfg  # noqa: E402

CLASSIC_VIT = re.compile(r"vit_(tiny|small|base|large|huge)_patch(8|14|16|32)_(224|384)$")
# timm's published ImageNet figures: the reference table beside the checkout (the source),
# else the unchanged copy in weights/ that the registry generator reads.
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "timm-imagenet-top1.csv"
_RESULTS = (
    _SHARED
    if _SHARED.exists()
    else Path(__file__).parents[1] / "weights" / "timm-results-imagenet.csv"
)
with open(_RESULTS, newline="") as _f:
    TIMM_RESULTS = {r["model"]: (float(r["top1"]), float(r["top5"])) for r in csv.DictReader(_f)}


def _timm_checkpoints(pattern, keep=lambda arch: True):
    return sorted(n for n in timm.list_pretrained(pattern) if keep(n.split(".")[0]))


@pytest.mark.parametrize(
    "family,pattern,keep",
    [
        ("vit", "vit_*", CLASSIC_VIT.match),
        ("deit", "deit_*", lambda a: True),
        ("mobilevit", "mobilevit_*", lambda a: True),
        ("mobilevitv2", "mobilevitv2_*", lambda a: True),
        ("deit3", "deit3_*", lambda a: True),
        (
            "vit_reg",
            "vit_*_reg4_gap_*",
            re.compile(
                r"vit_(little|medium|mediumd|betwixt|base)_patch16_reg4_gap_(256|384)$"
            ).match,
        ),
        (
            "dinov2",
            "vit_*_dinov2*",
            re.compile(r"vit_(small|base|large|giant)_patch14_(reg4_)?dinov2$").match,
        ),
        ("flexivit", "flexivit_*", lambda a: True),
    ],
)
def test_registry_lists_every_timm_checkpoint_of_the_family(family, pattern, keep):
    expected = _timm_checkpoints(pattern, keep)
    ours = [n for n in list_pretrained(pattern) if get_pretrained_cfg(n).family == family]
    counts = {"vit": 46, "deit": 8, "mobilevit": 3, "mobilevitv2": 13}
    counts.update({"deit3": 16, "vit_reg": 15, "dinov2": 8, "flexivit": 13})
    assert ours == expected and len(ours) == counts[family]
    # every checkpoint's architecture is registered here, once its family has landed
    if keras_vit.list_models(pattern):
        missing = {n.split(".")[0] for n in ours} - set(keras_vit.list_models(pattern))
        assert not missing


@pytest.mark.parametrize("name", list_pretrained())
def test_checkpoint_cfg_matches_timm(name):
    ours, ref = get_pretrained_cfg(name), timm_cfg(name).to_dict()
    assert ours.url == f"https://huggingface.co/{ref['hf_hub_id']}/resolve/main/model.safetensors"
    assert ours.origin_url == (ref["url"] or None)
    assert ours.input_size == tuple(ref["input_size"][1:])
    np.testing.assert_array_equal(ours.mean, ref["mean"])
    np.testing.assert_array_equal(ours.std, ref["std"])
    assert (ours.crop_pct, ours.interpolation) == (ref["crop_pct"], ref["interpolation"])
    assert (ours.num_classes, ours.license) == (ref["num_classes"], ref.get("license"))
    assert ours.default == (timm_cfg(ours.architecture).tag == ours.tag)
    published = TIMM_RESULTS.get(name)  # timm's results-imagenet.csv row, if it has one
    assert (ours.top1, ours.top5) == (published or (None, None))
    one_k_families = ("deit", "mobilevit", "mobilevitv2", "deit3", "vit_reg")
    if ours.label_set == "imagenet-1k" and ours.family in one_k_families:
        assert published is not None, f"timm publishes ImageNet figures for {name}"


@pytest.mark.parametrize(
    "name", [n for n in list_pretrained() if get_pretrained_cfg(n).params < 30_000_000]
)
def test_param_count_is_the_keras_models(name):
    """`params` (shown by `keras-vit list --pretrained`) is what create_model builds."""
    model = keras_vit.create_model(name)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)  # no BN statistics
    assert trainable == get_pretrained_cfg(name).params


def test_tag_config_travels_with_the_model():
    m = keras_vit.create_model("vit_tiny_patch16_224.augreg_in21k", depth=1, image_size=32)
    assert m.output_shape == (None, 21843) and m.mean == (0.5, 0.5, 0.5)
    assert m.pretrained_cfg.name == "vit_tiny_patch16_224.augreg_in21k"
    # the default tag (timm's first) sets the defaults: DINO is headless, ImageNet mean/std
    m = keras_vit.create_model("vit_small_patch8_224", depth=1, image_size=32)
    assert m.output_shape == (None, 384) and m.pretrained_cfg.tag == "dino"
    np.testing.assert_allclose(m.mean, (0.485, 0.456, 0.406))
    # explicit arguments win over the tag
    m = keras_vit.create_model("vit_small_patch8_224", depth=1, image_size=32, num_classes=3)
    assert m.output_shape == (None, 3)
    # an architecture without published weights has no pretrained config
    m = keras_vit.create_model("vit_large_patch14_224", depth=1, image_size=28)
    assert m.pretrained_cfg is None


def test_deit_and_mobilevit_tags_set_their_normalisation():
    for name, mean in [
        ("deit_tiny_patch16_224.fb_in1k", (0.485, 0.456, 0.406)),
        ("mobilevit_xxs.cvnets_in1k", (0.0, 0.0, 0.0)),
    ]:
        if name.split(".")[0] not in keras_vit.list_models():
            continue
        model = keras_vit.create_model(name)
        np.testing.assert_allclose(model.mean, mean)
        assert model.pretrained_cfg.class_names[0] == "tench, Tinca tinca"


def test_imagenet_class_names_are_timms():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = class_names("imagenet-1k")
    assert len(names) == 1000
    assert names == [info.index_to_description(i) for i in range(1000)]
    with pytest.raises(ValueError, match="imagenet-21k"):
        class_names("imagenet-21k")


def test_list_pretrained_pattern_and_cli_table(capsys):
    assert list_pretrained("deit_tiny*") == [
        "deit_tiny_distilled_patch16_224.fb_in1k",
        "deit_tiny_patch16_224.fb_in1k",
    ]
    with pytest.raises(ValueError):
        list_pretrained(3)
    assert cli_main(["list", "--pretrained"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if "." in r.split(" ")[0]]
    assert len(rows) == len(list_pretrained()) == 122
    for row in rows:  # name, params, size, top-1, top-5, classes, input, licence
        name, params, size, top1, top5, classes, _, licence = row.split()
        cfg = get_pretrained_cfg(name)
        assert params == f"{cfg.params / 1e6:.1f}M" and size == f"{cfg.size_mb:.1f}MB"
        shown = (f"{cfg.top1:.2f}", f"{cfg.top5:.2f}") if cfg.top1 is not None else ("n/a",) * 2
        assert (top1, top5) == shown and int(classes) == cfg.num_classes
        assert licence == (cfg.license or "unknown")
    assert cli_main(["list", "--pretrained", "nothing*"]) == 2
