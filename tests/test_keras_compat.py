"""Keras internals live in one module, and a Keras that lacks one fails here, by name."""

import pathlib
import re

import keras
import pytest

from keras_vit import _keras_compat

PACKAGE = pathlib.Path(_keras_compat.__file__).parent


def test_installed_keras_has_every_internal_we_use():
    assert _keras_compat.check_keras() == keras.__version__


def test_another_major_version_is_refused_by_name():
    with pytest.raises(RuntimeError, match=r"Keras 4\.0\.0 is not supported.*major version 4"):
        _keras_compat.check_keras("4.0.0")


def test_a_moved_internal_is_named(monkeypatch):
    monkeypatch.delattr(keras.layers.Layer, "_flatten_layers")
    with pytest.raises(RuntimeError, match=r"Layer\._flatten_layers.*_keras_compat\.py"):
        _keras_compat.check_keras()


def test_no_keras_src_import_or_monkeypatch_outside_the_compat_module():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_keras_compat.py":
            continue
        text = path.read_text()
        if re.search(r"keras\.src\b", text) or re.search(r"tf_trainer\.\w+ =", text):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders, f"Keras internals outside _keras_compat.py: {offenders}"
