"""Attention maps: per-block weights equal the softmax computed by hand, rollout follows
Abnar & Zuidema (uniform attention -> uniform map with the closed-form value; a single
attended patch lands at its grid position), and the overlay keeps the image's size."""

import numpy as np
import pytest
from export_fixtures import randomize_keras_model, uint8_images

import keras_vit
from keras_vit.attention import attention_rollout, attention_weights, overlay, rollout_map

SIZE = 48  # 3x3 patches


@pytest.fixture(scope="module")
def vit():
    model = keras_vit.create_model("vit_tiny_patch16_224", image_size=SIZE, depth=2)
    return randomize_keras_model(model, seed=1)


def _layer_norm(x, gamma, beta, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def test_block_attention_matches_formula(vit):
    images = uint8_images(2, SIZE, SIZE, seed=2).astype(np.float32)
    attns = attention_weights(vit, images)
    assert [a.shape for a in attns] == [(2, 3, 10, 10)] * 2
    np.testing.assert_allclose(attns[1].sum(-1), 1.0, atol=1e-5)
    # block 1 by hand, from block 0's output tokens
    tokens = vit.forward_intermediates(images, [0])[0]  # (B, N, D)
    block = vit.get_layer("blocks_1")
    h = _layer_norm(tokens, block.norm1.gamma.numpy(), block.norm1.beta.numpy())
    qkv = h @ block.attn.qkv.kernel.numpy() + block.attn.qkv.bias.numpy()
    qkv = qkv.reshape(2, 10, 3, 3, 64)  # (B, N, qkv, heads, head_dim)
    q, k = qkv[:, :, 0].transpose(0, 2, 1, 3), qkv[:, :, 1].transpose(0, 2, 1, 3)
    logits = q @ k.transpose(0, 1, 3, 2) / 8.0
    e = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(attns[1], e / e.sum(-1, keepdims=True), atol=1e-5)
    assert np.abs(attns[1][0] - attns[1][1]).max() > 1e-3  # depends on the image


def _make_uniform(model):
    """Zero the query and key parts of every qkv: all logits 0, every row 1/N."""
    for block in keras_vit.attention.transformer_blocks(model):
        dim = block.dim
        kernel, bias = block.attn.qkv.kernel, block.attn.qkv.bias
        kernel.assign(np.concatenate([np.zeros((dim, 2 * dim)), kernel.numpy()[:, 2 * dim :]], 1))
        bias.assign(np.concatenate([np.zeros(2 * dim), bias.numpy()[2 * dim :]]))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_uniform_attention_gives_uniform_rollout(name):
    model = keras_vit.create_model(name, image_size=SIZE, depth=2)
    randomize_keras_model(model, seed=4)
    _make_uniform(model)
    images = uint8_images(2, SIZE, SIZE, seed=3).astype(np.float32)
    maps = rollout_map(model, images)
    assert maps.shape == (2, 3, 3)
    # (J/N + I)/2 squared = (3J/N + I)/4: each patch gets 3 / (4N) of the class token's row
    n = model.num_prefix_tokens + 9
    np.testing.assert_allclose(maps, 3.0 / (4 * n), rtol=1e-5)


def test_rollout_places_the_attended_patch():
    """The class token attends only to patch 5 (row 1, col 2 of a 2x3 grid), every other
    token to itself: after L layers patch 5 holds 1 - 2^-L, every other patch 0."""
    n, target, layers = 7, 1 + 5, 3
    attn = np.tile(np.eye(n), (1, 2, 1, 1))  # (1, heads=2, N, N)
    attn[:, :, 0] = 0.0
    attn[:, :, 0, target] = 1.0
    maps = attention_rollout([attn] * layers, num_prefix_tokens=1, grid_size=(2, 3))
    expected = np.zeros((1, 2, 3))
    expected[0, 1, 2] = 1 - 0.5**layers
    np.testing.assert_allclose(maps, expected, atol=1e-7)


def test_rollout_rejects_bad_input():
    with pytest.raises(ValueError, match="grid"):
        attention_rollout([np.ones((1, 1, 11, 11)) / 11], grid_size=(3, 3))
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([np.ones((1, 1, 10, 10))], head_fusion="median")
    with pytest.raises(ValueError, match="empty"):
        attention_rollout([])


def test_mobilevit_has_no_attention_maps():
    model = keras_vit.create_model("mobilevit_xxs", image_size=64, transformer_depths=(1, 1, 1))
    with pytest.raises(ValueError, match="TransformerBlock"):
        keras_vit.attention.attention_model(model)


def test_overlay_keeps_image_size_and_blends():
    image = uint8_images(1, 50, 70, seed=0)[0]
    heat = np.zeros((3, 3), np.float32)
    heat[0, 0] = 1.0
    out = overlay(image, heat, alpha=0.5)
    assert out.size == (70, 50) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(overlay(image, heat, alpha=0.0)), image)
    pure = np.asarray(overlay(image, heat, alpha=1.0)).astype(int)
    assert pure[0, 0, 0] > 100 and pure[0, 0, 1:].max() < 50  # hot corner: (dark) red
    assert pure[-1, -1, 2] > 100 and pure[-1, -1, 0] < 50  # cold corner: blue
