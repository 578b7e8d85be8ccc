"""`.keras` save/load round trips: same class, identical outputs."""

import keras
import numpy as np

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
