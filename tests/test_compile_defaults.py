"""Models default to XLA on TF/JAX (Keras's "auto" would turn it off on CPU), same numbers."""

import keras
import numpy as np

import keras_vit


def test_xla_by_default_and_same_outputs_as_graph_mode():
    model = keras_vit.create_model("vit_tiny_patch16_224", depth=2, image_size=64)
    assert model.jit_compile is True  # uncompiled model: predict runs under XLA
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    with_xla = model.predict_on_batch(images)
    model.compile(jit_compile=False)  # explicit choice wins
    assert model.jit_compile is False
    without_xla = model.predict_on_batch(images)
    np.testing.assert_allclose(with_xla, without_xla, atol=1e-5)
    model.compile()
    assert model.jit_compile is (keras.backend.backend() in ("tensorflow", "jax"))


def test_auto_keeps_keras_choice_under_a_strategy():
    import tensorflow as tf

    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = keras_vit.create_model("vit_tiny_patch16_224", depth=1, image_size=32)
        model.compile(optimizer="sgd", loss="mse")
    assert model.jit_compile is False  # XLA + MirroredStrategy fails on logical CPU replicas
