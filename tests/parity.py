"""The one parity harness: a family's parity test is a list of cases that call `run_parity`.

Like keras-hub's `run_backbone_test`, every family goes through the same steps:

1. build the timm model (`timm.create_model(timm_name, **timm_kwargs)`) and randomise every
   parameter and buffer (`helpers.randomize_timm_model`);
2. save its `state_dict` as `.safetensors`;
3. load that file with `keras_vit.create_model(name, weights=file, include_preprocessing=False,
   image_size=size, **kwargs)` (public API only);
4. at each requested size, compare logits on structured images with
   `assert_parity(..., discriminative=True)`: max |diff| <= `atol` and the reference tells the
   two images apart. For a fixed-size timm model (one with `patch_embed.img_size`) the reference
   at another size is a new timm model loaded through its module's `checkpoint_filter_fn` (timm's
   own position-embedding resampling); a model that takes any size (MobileViT) is reused;
5. with `heads=True` (distilled DeiT), also compare `(cls_logits, dist_logits)` of
   `model.heads_model` with timm's distilled-training output.

`run_parity` returns `{(height, width): [max |diff| of the output, (cls, dist) if heads]}`.
`assert_param_count` compares parameter (and buffer) counts with timm, in one place.

A new family's parity test is a list of cases and one line per test:

    CASES = [ParityCase("mobilevitv2_050", image_sizes=(None, 192))]
    test_parity = parity_test(CASES)
    test_param_count_matches_timm = param_count_test(["mobilevitv2_050"])

A parity file imports everything from here: the harness, the helpers of `helpers.py`
(re-exported) and the reference frameworks `timm` and `torch` (imported here, after
conftest.py imported torch before TensorFlow; a missing one fails collection, never skips).
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import timm
import torch
from helpers import (
    ATOL,
    assert_parity,
    nchw_to_nhwc,
    randomize_timm_model,
    save_timm_safetensors,
    structured_images,
    structured_pixels,
    subprocess_env,
    timm_forward,
)

__all__ = [  # the helpers a parity file takes from here, beside the harness
    "ATOL",
    "assert_parity",
    "nchw_to_nhwc",
    "randomize_timm_model",
    "save_timm_safetensors",
    "structured_images",
    "structured_pixels",
    "subprocess_env",
    "timm",
    "timm_forward",
    "torch",
]


@dataclass(frozen=True)
class ParityCase:
    """One comparison with timm.

    timm_name:    timm's model name (also keras_vit's unless `name` is given)
    kwargs:       architecture overrides given to both (`depth=2`); keras_vit spellings are
                  translated for timm (`image_size` -> `img_size`)
    name:         keras_vit's registered name, if it differs from timm's
    timm_kwargs:  extra arguments for timm only
    ours_kwargs:  extra arguments for keras_vit only
    image_sizes:  sizes to compare at: None (the checkpoint's own), an int, or (height, width)
    heads:        also compare both heads of a distilled model (`heads_model`)
    seed:         weight seed (default: len(timm_name)); images use height + width
    batch:        images per comparison (>= 2: the input-dependence check needs two)
    atol:         max |logit diff|
    timm_builder: a callable building the timm model instead of `timm.create_model(timm_name)`
                  (a modified architecture timm registers no name for, e.g. a reduced-depth
                  `ByobNet`); it gets the case's timm arguments
    """

    timm_name: str
    kwargs: dict = field(default_factory=dict)
    name: str | None = None
    timm_kwargs: dict = field(default_factory=dict)
    ours_kwargs: dict = field(default_factory=dict)
    image_sizes: tuple = (None,)
    heads: bool = False
    seed: int | None = None
    batch: int = 2
    atol: float = ATOL
    timm_builder: Callable | None = None

    def __str__(self):
        extra = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.timm_name}[{extra}]" if extra else self.timm_name

    @property
    def keras_name(self):
        return self.name or self.timm_name


_TIMM_ARG = {"image_size": "img_size"}


def timm_arguments(case, **more):
    """The case's architecture arguments in timm's spelling."""
    out = {_TIMM_ARG.get(k, k): v for k, v in case.kwargs.items()}
    out.update(case.timm_kwargs, **more)
    return out


def create_timm(case, **more):
    """The case's timm model (default init) in eval mode: its builder's, or timm's by name."""
    if case.timm_builder is not None:
        return case.timm_builder(**timm_arguments(case, **more)).eval()
    return timm.create_model(case.timm_name, **timm_arguments(case, **more)).eval()


def other_size(name, taller, wider=None):
    """An image size on the patch grid of registered `name`, `taller` (`wider`) patches from
    its native grid (at least 2): an int for a square, (h, w) when `wider` is given."""
    import keras_vit

    arch = keras_vit.registry.get_spec(name).arch
    p, grid = arch["patch_size"], arch["image_size"] // arch["patch_size"]
    if wider is None:
        return p * max(grid + taller, 2)
    return (p * max(grid + taller, 2), p * max(grid + wider, 2))


def build_reference(case):
    """The randomised timm model of `case`, in eval mode."""
    ref = create_timm(case)
    seed = len(case.timm_name) if case.seed is None else case.seed
    return randomize_timm_model(ref, seed=seed)


def _size_pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def reference_at(case, ref, size):
    """(timm model, (h, w)) that computes the reference at `size` (None: native)."""
    from timm.models._registry import model_entrypoint

    fixed = getattr(getattr(ref, "patch_embed", None), "img_size", None)
    if size is None:  # the checkpoint's own size
        return ref, tuple(fixed if fixed is not None else ref.pretrained_cfg["input_size"][1:])
    h, w = _size_pair(size)
    if fixed is None or tuple(fixed) == (h, w):
        return ref, (h, w)  # any input size: the same model
    # a fixed-size timm model: a new one, loaded through timm's own filter (pos_embed resampled)
    module = sys.modules[model_entrypoint(case.timm_name).__module__]
    other = create_timm(case, img_size=(h, w))
    other.load_state_dict(module.checkpoint_filter_fn(ref.state_dict(), other))
    return other, (h, w)


def timm_heads(model, images):
    """(cls_logits, dist_logits) from timm: the tuple it returns in distilled training mode."""
    model.set_distilled_training(True)
    model.train()  # every dropout rate is 0, so train mode changes only the head's output
    try:
        return timm_forward(model, images)
    finally:
        model.eval()
        model.set_distilled_training(False)


def load_ours(case, path, size):
    """keras_vit's model of `case` from the timm file at `path` (public API only)."""
    import keras_vit

    return keras_vit.create_model(
        case.keras_name,
        weights=path,
        image_size=size,
        include_preprocessing=False,
        **case.kwargs,
        **case.ours_kwargs,
    )


def run_parity(case, tmp_path, check_model=None):
    """Compare keras_vit with timm on `case`; returns {(h, w): [diff, (cls diff, dist diff)]}.

    `check_model(case, model, path)`, if given, is called on each keras_vit model (e.g. its
    class), `path` the timm `.safetensors` file it was loaded from.
    """
    ref = build_reference(case)
    path = save_timm_safetensors(ref, tmp_path / f"{case.timm_name}.safetensors")
    diffs = {}
    for size in case.image_sizes:
        tm, (h, w) = reference_at(case, ref, size)
        images = structured_images(case.batch, h, w, seed=h + w)
        model = load_ours(case, path, size)
        if check_model is not None:
            check_model(case, model, path)
        x = nchw_to_nhwc(images)
        out = model.predict_on_batch(x)
        diffs[(h, w)] = [assert_parity(out, timm_forward(tm, images), atol=case.atol)]
        if case.heads:
            ours = model.heads_model.predict_on_batch(x)
            for a, b in zip(ours, timm_heads(tm, images), strict=True):
                diffs[(h, w)].append(assert_parity(a, b, atol=case.atol))
    shown = {f"{h}x{w}": ", ".join(f"{d:.2g}" for d in ds) for (h, w), ds in diffs.items()}
    print(f"{case}: max |diff| per size (output[, cls, dist]) {shown}")
    return diffs


def assert_param_count(timm_name, name=None, **kwargs):
    """keras_vit's trainable weights count timm's parameters, and its non-trainable weights
    (BatchNorm moving statistics) timm's persistent buffers (less `num_batches_tracked`)."""
    import keras_vit

    with torch.device("meta"):
        ref = timm.create_model(timm_name, **kwargs)
    params = sum(p.numel() for p in ref.parameters())
    param_keys = {k for k, _ in ref.named_parameters()}
    buffers = sum(
        v.numel()
        for k, v in ref.state_dict().items()
        if k not in param_keys and not k.endswith("num_batches_tracked")
    )
    model = keras_vit.create_model(name or timm_name, **kwargs)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert (trainable, frozen) == (params, buffers), (timm_name, trainable, frozen, params, buffers)
    return params


def assert_defaults_match_timm_cfg(name):
    """The registered defaults of `name` (mean, std, classes, native size) are timm's."""
    import keras_vit

    cfg = timm.models.get_pretrained_cfg(name)
    spec = keras_vit.registry.get_spec(name)
    assert spec.defaults["mean"] == cfg.mean and spec.defaults["std"] == cfg.std, name
    assert spec.defaults["num_classes"] == cfg.num_classes, name
    assert (3, spec.arch["image_size"], spec.arch["image_size"]) == cfg.input_size, name


def parity_test(cases, slow=False, check_model=None):
    """A pytest test running `run_parity` on each case (bind it to a `test_*` name)."""

    @pytest.mark.parametrize("case", list(cases), ids=str)
    def test(case, tmp_path):
        run_parity(case, tmp_path, check_model=check_model)

    return pytest.mark.slow(test) if slow else test


def param_count_test(names, slow=False, depths=None):
    """A pytest test running `assert_param_count` on each timm name (bind it to `test_*`).

    `depths=(1, 2)`: at those depths instead of the full one. Both counts are affine in the
    depth (stem + head + depth x block): equal at two depths, they are equal at every depth,
    the full one included, without building the full model."""
    if depths is None:

        @pytest.mark.parametrize("name", list(names))
        def test(name):
            assert_param_count(name)

    else:

        @pytest.mark.parametrize("depth", list(depths))
        @pytest.mark.parametrize("name", list(names))
        def test(name, depth):
            assert_param_count(name, depth=depth)

    return pytest.mark.slow(test) if slow else test
