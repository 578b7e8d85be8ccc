"""Bad input shapes raise a ValueError naming the expected and the given shape, through
`model(x)`, `predict` and `predict_on_batch`, for every family (a grayscale batch used to
broadcast over the RGB normalisation and return logits)."""

import re

import numpy as np
import pytest

import keras_vit

FAMILIES = [
    ("vit_tiny_patch16_224", dict(depth=1, image_size=32)),
    ("deit_tiny_distilled_patch16_224", dict(depth=1, image_size=32)),
    ("mobilevit_xxs", dict(image_size=32)),
]
BAD = {
    "grayscale": (2, 32, 32, 1),
    "rank_3": (32, 32, 3),
    "other_size": (2, 64, 48, 3),
}


@pytest.fixture(scope="module", params=FAMILIES, ids=[f[0] for f in FAMILIES])
def model(request):
    name, kw = request.param
    return keras_vit.create_model(name, num_classes=4, **kw)


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("entry", ["call", "predict", "predict_on_batch"])
def test_bad_shape_names_expected_and_given(model, bad, entry):
    shape = BAD[bad]
    x = np.zeros(shape, np.float32)
    run = {"call": model, "predict": lambda a: model.predict(a, verbose=0)}.get(
        entry, model.predict_on_batch
    )
    pattern = re.escape("(None, 32, 32, 3)") + ".*" + re.escape(str(shape))
    with pytest.raises(ValueError, match=re.compile(pattern, re.S)):
        run(x)
    # a good batch still runs afterwards (nothing half-traced left behind)
    assert np.asarray(run(np.zeros((2, 32, 32, 3), np.float32))).shape == (2, 4)
