"""Published checkpoints as data: `checkpoints.json`, generated from timm's pretrained configs
by `weights/generate_checkpoints.py` (see `weights/README.md`).

Each `name.tag` carries its source address, file format, input size, mean/std, crop fraction,
interpolation, number of classes, label set, licence, parameter count, timm's published ImageNet top-1/top-5
(null where timm publishes none) and sha256 (null where not pinned: then the sha256 the Hub
publishes for the file is checked). `checkpoint_path(name)` downloads into the Hugging Face
cache, verifies and returns the path (`download.py`).
"""

import fnmatch
import functools
import json
from dataclasses import dataclass
from importlib import resources

from keras_vit.pretrained.download import cache_dir, fetch

__all__ = [
    "PretrainedCfg",
    "cache_dir",
    "checkpoint_path",
    "class_names",
    "get_pretrained_cfg",
    "list_pretrained",
    "resolve_cfg",
]


@dataclass(frozen=True)
class PretrainedCfg:
    """One published checkpoint (a row of `checkpoints.json`)."""

    name: str
    architecture: str
    tag: str
    family: str
    default: bool
    url: str
    format: str
    hf_hub_id: str | None
    origin_url: str | None
    origin_format: str | None
    sha256: str | None
    input_size: tuple
    fixed_input_size: bool
    mean: tuple
    std: tuple
    crop_pct: float
    crop_mode: str
    interpolation: str
    num_classes: int
    label_set: str | None
    license: str | None
    paper_ids: object
    params: int
    size_mb: float
    top1: float | None
    top5: float | None

    @property
    def filename(self):
        """Cache file name: `<name>.safetensors` (or the origin's extension)."""
        ext = self.url.rsplit(".", 1)[-1] if "." in self.url.rsplit("/", 1)[-1] else "bin"
        return f"{self.name}.{ext}"

    @property
    def class_names(self):
        """Label names in output order, or None where not shipped (only ImageNet-1k is)."""
        return class_names(self.label_set) if self.label_set == "imagenet-1k" else None

    def model_defaults(self):
        """Constructor defaults this checkpoint brings: classes and normalisation, and for a
        fully convolutional family (timm's `fixed_input_size=False`: MobileViT) the size it
        was trained at (`mobilevitv2_150.cvnets_in22k_ft_in1k_384` builds a 384 model)."""
        defaults = {"num_classes": self.num_classes, "mean": self.mean, "std": self.std}
        if not self.fixed_input_size:
            defaults["image_size"] = tuple(self.input_size)
        return defaults


@functools.lru_cache(maxsize=1)
def _registry():
    text = resources.files(__name__).joinpath("checkpoints.json").read_text()
    rows = json.loads(text)["checkpoints"]
    out = {}
    for row in rows:
        for key in ("input_size", "mean", "std"):
            row[key] = tuple(row[key])
        out[row["name"]] = PretrainedCfg(**row)
    return out


def list_pretrained(pattern="*"):
    """Registered checkpoint names (`arch.tag`) matching a shell-style pattern, sorted."""
    if not isinstance(pattern, str):
        raise ValueError(f"`pattern` must be a string, got {pattern!r}.")
    return sorted(n for n in _registry() if fnmatch.fnmatchcase(n, pattern))


def _tags_of(arch):
    return [c for c in _registry().values() if c.architecture == arch]


def resolve_cfg(arch, tag=None):
    """The checkpoint config of `arch.tag`, or of `arch`'s default tag when `tag` is None.

    Returns None for an architecture with no published checkpoint and no tag; raises
    ValueError for a tag that is not registered, listing the ones that are.
    """
    cfgs = _tags_of(arch)
    if tag is None:
        defaults = [c for c in cfgs if c.default]
        return defaults[0] if defaults else None
    for cfg in cfgs:
        if cfg.tag == tag:
            return cfg
    known = ", ".join(c.tag for c in cfgs) or "none"
    raise ValueError(
        f"Unknown pretrained tag {tag!r} for {arch!r}; registered tags: {known}. "
        "See keras_vit.list_pretrained()."
    )


def get_pretrained_cfg(name):
    """`'deit_small_patch16_224.fb_in1k'` (or a bare architecture: its default tag) -> cfg."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"A checkpoint name must be a non-empty string, got {name!r}.")
    arch, _, tag = name.partition(".")
    cfg = resolve_cfg(arch, tag or None)
    if cfg is None:
        raise ValueError(f"No pretrained checkpoint is registered for {arch!r}.")
    return cfg


def checkpoint_path(name, progress=True):
    """Local path of checkpoint `name` in the Hugging Face cache: downloaded on first use, and
    verified (pinned sha256, else the Hub's) every time before it is returned."""
    cfg = name if isinstance(name, PretrainedCfg) else get_pretrained_cfg(name)
    return fetch(cfg.url, sha256=cfg.sha256, progress=progress)


@functools.lru_cache(maxsize=4)
def class_names(label_set="imagenet-1k"):
    """Label names of a shipped label set, in output order (`'imagenet-1k'`: 1000 names)."""
    if label_set != "imagenet-1k":
        raise ValueError(f"Only 'imagenet-1k' label names are shipped, not {label_set!r}.")
    text = resources.files(__name__).joinpath("imagenet1k_classes.txt").read_text()
    return [line.split("\t", 1)[1] for line in text.splitlines() if line]
