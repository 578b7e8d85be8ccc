"""The one choke point that builds every model: `name[.tag]` -> architecture + weights config.

Families register their variants here when `keras_vit.models` is imported; architecture
(constructor arguments) is kept apart from weight metadata (pretrained tags), as in timm.
"""

import difflib
import fnmatch
import inspect
import logging
from dataclasses import dataclass, field

logger = logging.getLogger("keras_vit")


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: its class and the constructor arguments of the variant."""

    name: str
    family: str
    cls: type
    arch: dict
    # Weight-free defaults a checkpoint would bring (mean/std, classes), overridden by tags.
    defaults: dict = field(default_factory=dict)
    # The paper's size word ("tiny", "small", "base", ...) that training recipes key on.
    size: str | None = None


_MODELS: dict[str, ModelSpec] = {}


def register_model(name, cls, family, arch, size=None, **defaults):
    """Register variant `name`: its class, constructor arguments (`arch`), the size word
    recipes use (`size`, e.g. "small"), and weight-free `defaults`."""
    if name in _MODELS:
        raise ValueError(f"Model {name!r} is already registered.")
    _MODELS[name] = ModelSpec(name, family, cls, dict(arch), dict(defaults), size)


def register_variants(family, cls, variants, **defaults):
    """Register a family's variants at once: each `(name, arch)` or `(name, arch, size)` of
    `variants` as `register_model(name, cls, family, arch, size, **defaults)`, the weight-free
    `defaults` (num_classes, mean, std) shared by the family."""
    for name, arch, *size in variants:
        register_model(name, cls, family, arch, *size, **defaults)


def _ensure_registered():
    import keras_vit.models  # noqa: F401  (importing a family registers its variants)


def list_models(pattern="*"):
    """Registered architecture names matching a shell-style `pattern`, sorted."""
    _ensure_registered()
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def split_name(name):
    """`'vit_base_patch16_224.augreg_in1k'` -> `('vit_base_patch16_224', 'augreg_in1k')`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"A model name must be a non-empty string, got {name!r}.")
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def get_spec(name):
    """The `ModelSpec` of `name` (a tag is ignored); unknown names list the closest ones."""
    _ensure_registered()
    arch, _ = split_name(name)
    if arch not in _MODELS:
        close = difflib.get_close_matches(arch, list(_MODELS), n=5, cutoff=0.5)
        hint = f" Closest registered names: {', '.join(close)}." if close else ""
        raise ValueError(f"Unknown model {arch!r}.{hint} See keras_vit.list_models().")
    return _MODELS[arch]


def find_spec(name):
    """The `ModelSpec` of a registered `name[.tag]`, or None for any other string."""
    _ensure_registered()
    if not isinstance(name, str) or not name:
        return None
    return _MODELS.get(split_name(name)[0])


def create_model(
    name,
    weights=None,
    num_classes=None,
    image_size=None,
    include_preprocessing=True,
    drop_rate=0.0,
    drop_path_rate=0.0,
    global_pool=None,
    **kwargs,
):
    """Build a registered model, optionally loading weights.

    Args:
        name: a registered name (`keras_vit.list_models()`), with an optional `.tag`.
        weights: None (random init); `"pretrained"`: the published checkpoint of `name`'s tag
            (its default tag without one; `keras_vit.list_pretrained()`), downloaded,
            verified and cached on first use (`keras_vit.pretrained.download`); or a local
            checkpoint: timm `.safetensors` / `.pth` (torch `weights_only` only), a Hugging
            Face `save_pretrained` directory, a ViT `.npz`, or Keras `.weights.h5`.
            The tag (or the default tag) sets `num_classes`, `mean` and `std` unless given,
            and the model keeps it as `model.pretrained_cfg`.
        num_classes: classifier width; 0 returns the pooled features (timm's pre-logits).
            When it differs from the checkpoint's, the backbone loads and the head starts fresh.
        image_size: int or (height, width), a multiple of the patch size; checkpoints made for
            another size have their position embedding resampled (timm's bicubic).
        include_preprocessing: take 0..255 RGB and apply the checkpoint's normalisation.
        drop_rate, drop_path_rate: head dropout and stochastic depth (linear over the blocks).
        global_pool: `"token"` or `"avg"` for the transformer families.
        **kwargs: any other constructor argument of the family's class.
    """
    spec = get_spec(name)
    pretrained_cfg = _pretrained_cfg(spec, split_name(name)[1])
    config = {**spec.arch, **spec.defaults}
    if pretrained_cfg is not None:  # the tag's classes and normalisation, where the class has them
        params = _init_params(spec.cls)
        config.update({k: v for k, v in pretrained_cfg.model_defaults().items() if k in params})
    overrides = dict(kwargs)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if image_size is not None:
        overrides["image_size"] = image_size
    if global_pool is not None:
        overrides["global_pool"] = global_pool
    if drop_rate:
        overrides["drop_rate"] = drop_rate
    if drop_path_rate:
        overrides["drop_path_rate"] = drop_path_rate
    config.update(overrides)
    config["include_preprocessing"] = include_preprocessing
    if weights == "pretrained":
        if pretrained_cfg is None:
            raise ValueError(
                f"No pretrained checkpoint is registered for {spec.name!r}; see "
                "keras_vit.list_pretrained()."
            )
        from keras_vit.pretrained import checkpoint_path

        weights = checkpoint_path(pretrained_cfg)  # before building: a failure costs nothing
    model = spec.cls(**config, name=spec.name)
    if weights is not None:
        from keras_vit.loading import load_weights

        load_weights(model, weights, reset_head=num_classes is not None)
    model.pretrained_cfg = pretrained_cfg
    return model


def _init_params(cls):
    """Names the constructor accepts, following `**kwargs` up the class hierarchy."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names.update(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _pretrained_cfg(spec, tag):
    """The tag's checkpoint config (the default tag's if None); None if nothing is published."""
    from keras_vit.pretrained import resolve_cfg

    return resolve_cfg(spec.name, tag)
