"""`.keras` save/load round trips: same class, identical outputs."""

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.models import VisionTransformer


def test_vit_keras_round_trip_with_non_default_arguments(tmp_path):
    model = keras_vit.create_model(
        "vit_tiny_patch16_224",
        depth=2,
        num_classes=7,
        image_size=(64, 96),
        global_pool="avg",
        init_values=0.1,
        drop_rate=0.1,
        drop_path_rate=0.2,
        qkv_bias=False,
    )
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 96, 3)).astype(np.float32)
    expected = model.predict_on_batch(images)
    path = tmp_path / "vit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is VisionTransformer
    assert loaded.get_config() == model.get_config()
    assert loaded.image_size == (64, 96) and loaded.num_classes == 7
    np.testing.assert_array_equal(loaded.predict_on_batch(images), expected)


def test_weights_h5_round_trip(tmp_path):
    model = keras_vit.create_model("vit_tiny_patch16_224", depth=1, image_size=32)
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    other = keras_vit.create_model("vit_tiny_patch16_224", depth=1, image_size=32, weights=path)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(other.predict_on_batch(x), model.predict_on_batch(x))


def test_keras_file_keeps_the_checkpoint_config(tmp_path):
    """A reloaded model keeps its tag's config, so its eval transform (crop 0.888, 256 px for
    MobileViT v2 0.5) is the checkpoint's and not timm's defaults (0.875)."""
    from keras_vit.data.transform import EvalTransform

    model = keras_vit.create_model("mobilevitv2_050", image_size=64)
    assert model.pretrained_cfg.name == "mobilevitv2_050.cvnets_in1k"
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.pretrained_cfg == model.pretrained_cfg
    assert EvalTransform.from_model(loaded).crop_pct == 0.888
    # a non-default tag survives too, and a bare model stays bare
    tagged = keras_vit.create_model("vit_tiny_patch16_224.augreg_in21k", depth=1, image_size=32)
    tagged.save(tmp_path / "t.keras")
    assert keras.saving.load_model(tmp_path / "t.keras").pretrained_cfg.tag == "augreg_in21k"
    bare = VisionTransformer(image_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    assert "pretrained_cfg" not in bare.get_config()
    bare.save(tmp_path / "b.keras")
    assert keras.saving.load_model(tmp_path / "b.keras").pretrained_cfg is None


def test_keras_file_naming_an_unregistered_checkpoint_config_fails_clearly():
    config = keras_vit.create_model("vit_tiny_patch16_224", depth=1, image_size=32).get_config()
    config["pretrained_cfg"] = "vit_tiny_patch16_224.not_a_tag"
    with pytest.raises(ValueError, match="vit_tiny_patch16_224.not_a_tag"):
        VisionTransformer.from_config(config)
