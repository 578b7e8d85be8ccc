"""tf.data pipelines: the digits split, folders, TFDS (mocked), preprocessing from a model,
and shuffling that depends on (seed, epoch) only."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_vit.data import (  # noqa: E402
    Preprocessing,
    eval_dataset,
    load_splits,
    preprocessing_for,
    train_dataset,
)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits")


def test_digits_split_is_fixed_disjoint_and_complete(digits):
    assert (digits.num_train, digits.num_val, digits.num_classes) == (1438, 359, 10)
    train = np.stack([x.numpy() for x, _ in digits.train])
    val = np.stack([x.numpy() for x, _ in digits.val])
    assert train.shape == (1438, 8, 8, 3) and val.shape == (359, 8, 8, 3)
    assert train.min() == 0 and train.max() == 255  # 0..16 scaled to 0..255
    # no held-out image is a training image (digits has no exact duplicates across the split)
    train_set = {t.tobytes() for t in train}
    assert sum(v.tobytes() in train_set for v in val) == 0
    again = load_splits("digits")
    np.testing.assert_array_equal([y.numpy() for _, y in again.val], [y for _, y in digits.val])


def test_epoch_order_depends_on_seed_and_epoch_only(digits):
    prep = Preprocessing((16, 16))
    full, steps = train_dataset(digits, prep, batch_size=100, seed=3, epochs=3)
    full = _batches(full)
    assert steps == 14 and len(full) == 3 * 14
    assert full[0][0].shape == (100, 16, 16, 3)
    # resuming at epoch 2 yields exactly the last epoch of the uninterrupted run
    resumed, _ = train_dataset(digits, prep, batch_size=100, seed=3, epochs=3, initial_epoch=2)
    resumed = _batches(resumed)
    assert len(resumed) == 14
    for (xa, ya), (xb, yb) in zip(full[28:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # each epoch is a different permutation, and another seed another order
    assert not np.array_equal(full[0][1], full[14][1])
    other, _ = train_dataset(digits, prep, batch_size=100, seed=4, epochs=1)
    assert not np.array_equal(full[0][1], next(iter(other))[1].numpy())
    # each epoch draws 1400 of the 1438 training images without replacement: none twice (the
    # training images are all different, so a repeat would show), no class more often than
    # the training split holds it
    train_images = {x.numpy().tobytes() for x, _ in digits.train}
    assert len(train_images) == digits.num_train
    train_counts = np.bincount([int(y.numpy()) for _, y in digits.train], minlength=10)
    for epoch in range(3):
        batches = full[14 * epoch : 14 * (epoch + 1)]
        images = np.concatenate([x for x, _ in batches])
        assert len({im.tobytes() for im in images}) == 1400
        labels = np.concatenate([y for _, y in batches])
        assert np.all(np.bincount(labels, minlength=10) <= train_counts)


def test_augmentation_is_stateless_per_batch(digits):
    from keras_vit.training.recipes import make_augmentation, recipe_for

    recipe = recipe_for("deit_small_patch16_224", rand_augment_ops=1, erasing_prob=0.5)
    aug = make_augmentation(recipe, digits.num_classes)
    prep = Preprocessing((16, 16))
    kwargs = dict(batch_size=64, seed=1, epochs=2, augment=aug, one_hot=True)
    a = _batches(train_dataset(digits, prep, **kwargs)[0])
    b = _batches(train_dataset(digits, prep, initial_epoch=1, **kwargs)[0])
    for (xa, ya), (xb, yb) in zip(a[len(a) - len(b) :], b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # labels are mixtures (MixUp/CutMix): rows sum to 1, and some rows mix two classes
    labels = np.concatenate([y for _, y in a])
    np.testing.assert_allclose(labels.sum(-1), 1.0, atol=1e-5)
    assert (labels.max(-1) < 0.999).mean() > 0.5


def test_preprocessing_from_model_config():
    import keras_vit

    kw = dict(image_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    inside = keras_vit.create_model("deit_tiny_patch16_224", **kw)
    assert preprocessing_for(inside) == Preprocessing((32, 32))
    outside = keras_vit.create_model("deit_tiny_patch16_224", include_preprocessing=False, **kw)
    prep = preprocessing_for(outside)
    assert prep.mean == (0.485, 0.456, 0.406) and prep.std == (0.229, 0.224, 0.225)
    image = np.full((1, 4, 4, 3), 127.5, np.float32)
    splits = _splits_of(image, np.array([1]))
    x, _ = next(iter(eval_dataset(splits, prep, 1)))
    expected = (0.5 - np.array(prep.mean)) / np.array(prep.std)
    np.testing.assert_allclose(x.numpy()[0, 10, 10], expected, rtol=1e-5)
    assert x.shape == (1, 32, 32, 3)


def _splits_of(images, labels):
    from keras_vit.data import DataSplits

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    return DataSplits(ds, ds, len(labels), len(labels), ("a", "b", "c"))


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    for cls, count in (("cat", 6), ("dog", 4)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            pixels = rng.randint(0, 256, (10 + i, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not a class")
    splits = load_splits(str(tmp_path), val_fraction=0.2)
    assert splits.class_names == ("cat", "dog")
    assert (splits.num_train, splits.num_val) == (8, 2)
    ds, steps = train_dataset(splits, Preprocessing((8, 8)), batch_size=4, seed=0, epochs=1)
    (x, y), _ = _batches(ds)
    assert steps == 2 and x.shape == (4, 8, 8, 3) and x.dtype == np.float32
    labels = [int(v) for _, v in splits.train] + [int(v) for _, v in splits.val]
    assert sorted(labels) == [0] * 6 + [1] * 4


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_splits(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no class subfolders"):
        load_splits(str(tmp_path))
    with pytest.raises(ValueError, match="val_fraction"):
        load_splits("digits", val_fraction=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        train_dataset(load_splits("digits"), Preprocessing((8, 8)), 5000, seed=0, epochs=1)


def test_tfds_by_name_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        splits = load_splits("cifar10")
        # (mock metadata has no label names: TFDS numbers them)
        assert splits.num_classes == 10 and (splits.num_train, splits.num_val) == (12, 12)
        x, y = next(iter(eval_dataset(splits, Preprocessing((16, 16)), 4)))
        assert x.shape == (4, 16, 16, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
        assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255
        assert set(y.numpy()) <= set(range(10))


def test_training_evaluates_images_as_it_trains_them(digits):
    """`keras_vit.train` evaluates on whole images resized as its training pipeline resizes
    them (no random crop in training), even for a model whose checkpoint cfg has a centre
    crop: the 0.875 crop of a 32x32 digit cost 2-40 points of validation accuracy."""
    import keras_vit
    from keras_vit.training.train import training_preprocessing

    model = keras_vit.create_model(
        "deit_tiny_patch16_224", image_size=32, patch_size=4, depth=1, num_classes=10
    )
    assert model.pretrained_cfg.crop_pct < 1  # the checkpoint has a centre crop (DeiT: 0.9)
    prep = training_preprocessing(model)
    images, _ = next(iter(eval_dataset(digits, prep, 16)))
    raw = np.stack([x for x, _ in digits.val.take(16).as_numpy_iterator()])
    trained_on = tf.image.resize(raw, (32, 32), method="bilinear").numpy()  # the train resize
    assert float(np.max(np.abs(images.numpy() - trained_on))) < 1e-3
    cropped, _ = next(iter(eval_dataset(digits, preprocessing_for(model), 16)))
    assert float(np.max(np.abs(cropped.numpy() - trained_on))) > 10  # timm's crop differs
