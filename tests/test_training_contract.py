"""The model owns its training contract: weight-decay exclusions, a block index for every
variable (layer-wise lr decay), the classifier heads; recipes and the distiller ask it."""

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.convert.timm import timm_entries
from keras_vit.models import VisionTransformer
from keras_vit.training.recipes import Recipe, make_optimizer

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")
from timm.models._manipulate import group_parameters  # noqa: E402

REG = dict(
    image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10,
    reg_tokens=4, no_embed_class=True, global_pool="avg", init_values=1e-5,
)  # fmt: skip


def test_register_token_excluded_from_weight_decay_by_the_model():
    model = VisionTransformer(**REG)
    excluded = {id(v) for v in model.no_weight_decay()}
    for layer in ("reg_token", "cls_token", "pos_embed", "fc_norm"):
        assert all(id(v) in excluded for v in model.get_layer(layer).trainable_weights), layer
    assert id(model.get_layer("head").bias) in excluded  # 1-D
    kernels = [v for v in model.trainable_variables if len(v.shape) == 2]
    assert kernels and not any(id(v) in excluded for v in kernels)
    # and the optimizer built by the recipe really leaves it alone: zero gradients, so only
    # weight decay moves a variable
    opt = make_optimizer(Recipe(lr=0.1, weight_decay=0.5, warmup_epochs=0), 512, 10, 1, model)
    before = {id(v): keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    opt.apply([keras.ops.zeros(v.shape) for v in model.trainable_variables],
              model.trainable_variables)  # fmt: skip
    reg = model.get_layer("reg_token").token
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reg), before[id(reg)])
    qkv = model.get_layer("blocks_0").attn.qkv.kernel
    assert not np.allclose(keras.ops.convert_to_numpy(qkv), before[id(qkv)])


def _timm_layer_ids(ref):
    """timm's layer id of each parameter, as `param_groups_layer_decay` assigns it."""
    layer_map = group_parameters(ref, ref.group_matcher(coarse=False), reverse=True)
    layer_max = max(layer_map.values())
    return {n: layer_map.get(n, layer_max) for n, _ in ref.named_parameters()}


@pytest.mark.parametrize(
    "name,kw",
    [
        ("vit_tiny_patch16_224", dict(depth=3)),
        ("deit_tiny_distilled_patch16_224", dict(depth=2)),
        ("mobilevit_xxs", {}),
    ],
)
def test_block_ids_match_timm_group_matcher(name, kw):
    ref = timm.create_model(name, **kw)
    expected = _timm_layer_ids(ref)
    model = keras_vit.create_model(name, **kw)
    ids = {id(v): i for v, i in model.block_ids()}
    assert len(ids) == len(model.weights)
    ours = {key: ids[id(v)] for key, v, _ in timm_entries(model) if key in expected}
    assert ours == expected
    assert model.num_block_ids == max(expected.values()) + 1
    assert min(ours.values()) == 0


def test_block_ids_of_a_register_model_with_fc_norm():
    model = VisionTransformer(**REG)
    ids = {v.path: i for v, i in model.block_ids()}
    assert ids["reg_token/token"] == ids["patch_embed/proj/kernel"] == 0
    assert ids["blocks_1/attn/qkv/kernel"] == 2
    assert ids["fc_norm/gamma"] == ids["head/kernel"] == 3 == model.num_block_ids - 1


@pytest.mark.parametrize(
    "name,kw",
    [
        ("vit_tiny_patch16_224", dict(depth=1, image_size=32)),
        ("deit_tiny_distilled_patch16_224", dict(depth=1, image_size=32)),
        ("mobilevit_xxs", dict(image_size=64)),
    ],
)
def test_classifier_heads_one_public_view_on_every_model(name, kw):
    model = keras_vit.create_model(name, num_classes=5, **kw)
    heads = model.classifier_heads()
    assert heads is model.classifier_heads()  # cached, not saved
    x = np.random.default_rng(0).uniform(0, 255, (2, kw["image_size"], kw["image_size"], 3))
    out = heads.predict_on_batch(x.astype(np.float32))
    np.testing.assert_allclose(out["logits"], model.predict_on_batch(x), atol=1e-5)
    if "distilled" in name:
        assert set(out) == {"logits", "cls_logits", "dist_logits"}
        np.testing.assert_allclose(
            out["logits"], (out["cls_logits"] + out["dist_logits"]) / 2, atol=1e-6
        )
    else:
        assert set(out) == {"logits"}


def test_recipe_size_comes_from_the_registry_not_the_name():
    from keras_vit.training.recipes import recipe_for

    assert keras_vit.registry.get_spec("vit_large_patch16_224").size == "large"
    assert recipe_for("vit_large_patch16_224.augreg_in21k").drop_path_rate == 0.3
    assert recipe_for("my_small_model").drop_path_rate == Recipe().drop_path_rate  # not ours
