"""Regenerate keras_vit/pretrained/checkpoints.json, imagenet1k_classes.txt and
weights/manifest.csv from timm.

The checkpoint registry is data taken from timm's own pretrained configs (`timm.list_pretrained`,
`timm.models.get_pretrained_cfg`), for the architectures keras_vit registers: the 18 classic
`vit_*` variants, `deit_*`, `mobilevit_*`, `mobilevitv2_*`, `deit3_*`, the `vit_*_reg4_gap_*` register
ViTs, DINOv2 (`vit_*_patch14[_reg4]_dinov2`) and `flexivit_*`. Run from the repository root:

    .venv/bin/python weights/generate_checkpoints.py

Nothing is downloaded. Published top-1/top-5 accuracy comes from timm's results table
(`results/results-imagenet.csv` in the timm repository, which the timm wheel does not ship);
the rows for our families are copied unchanged in `weights/timm-results-imagenet.csv`. sha256 digests are not
pinned by timm for these files; they stay null here, and every download is verified against
the sha256 the Hugging Face Hub publishes for the file (keras_vit/pretrained/download.py).
"""

import argparse
import csv
import json
import os
import re
from pathlib import Path

import timm  # noqa: I001  (torch before anything TensorFlow; nothing here imports TF)
import torch
from timm.models import get_pretrained_cfg

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "keras_vit" / "pretrained"
CLASSIC_VIT = re.compile(r"vit_(tiny|small|base|large|huge)_patch(8|14|16|32)_(224|384)$")
FAMILIES = {
    "vit": "vit_*",
    "deit": "deit_*",
    "mobilevit": "mobilevit_*",
    "mobilevitv2": "mobilevitv2_*",
    "deit3": "deit3_*",
    "vit_reg": "vit_*_reg4_gap_*",
    "dinov2": "vit_*_dinov2*",
    "flexivit": "flexivit_*",
}
# timm names more architectures under these patterns than keras_vit registers (RoPE, so150m)
FILTERS = {
    "vit": CLASSIC_VIT,
    "vit_reg": re.compile(r"vit_(little|medium|mediumd|betwixt|base)_patch16_reg4_gap_(256|384)$"),
    "dinov2": re.compile(r"vit_(small|base|large|giant)_patch14_(reg4_)?dinov2$"),
}


def architectures(family, pattern):
    names = timm.list_models(pattern)
    if family in FILTERS:
        names = [n for n in names if FILTERS[family].match(n)]
    return sorted(names)


def label_set(num_classes, tag):
    if num_classes == 1000:
        return "imagenet-1k"
    if num_classes == 21843:
        return "imagenet-21k-goog"
    if num_classes == 0:
        return None  # feature extractor, no classifier
    return f"{tag}-{num_classes}"


def param_count(arch, num_classes):
    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())


def read_results(path):
    """timm's results CSV -> {name.tag: (top1, top5)} (percent, as timm prints them)."""
    if not path:
        return {}
    with open(path, newline="") as f:
        return {r["model"]: (float(r["top1"]), float(r["top5"])) for r in csv.DictReader(f)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results",
        default=str(ROOT / "weights" / "timm-results-imagenet.csv"),
        help="timm's results-imagenet.csv rows for published top-1/top-5 (default: the copy "
        "in weights/)",
    )
    args = parser.parse_args()
    results = read_results(args.results)
    checkpoints = []
    for family, pattern in FAMILIES.items():
        for arch in architectures(family, pattern):
            tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
            default = get_pretrained_cfg(arch).tag if tags else None
            for tag in tags:
                cfg = get_pretrained_cfg(f"{arch}.{tag}").to_dict()
                hub = cfg.get("hf_hub_id")
                num_classes = int(cfg["num_classes"])
                params = param_count(arch, num_classes)
                checkpoints.append(
                    {
                        "name": f"{arch}.{tag}",
                        "architecture": arch,
                        "tag": tag,
                        "family": family,
                        "default": tag == default,
                        # timm's Hub copy: a timm state_dict in safetensors
                        "url": f"https://huggingface.co/{hub}/resolve/main/model.safetensors"
                        if hub
                        else cfg["url"],
                        "format": "timm-safetensors" if hub else _format_of(cfg["url"]),
                        "hf_hub_id": hub,
                        # where the weights were first published (.npz, .pth), if timm says
                        "origin_url": cfg.get("url") or None,
                        "origin_format": _format_of(cfg.get("url")),
                        "sha256": None,
                        "input_size": list(cfg["input_size"][1:]),
                        "fixed_input_size": bool(cfg.get("fixed_input_size", False)),
                        "mean": list(cfg["mean"]),
                        "std": list(cfg["std"]),
                        "crop_pct": cfg["crop_pct"],
                        "crop_mode": cfg.get("crop_mode", "center"),
                        "interpolation": cfg["interpolation"],
                        "num_classes": num_classes,
                        "label_set": label_set(num_classes, tag),
                        "license": cfg.get("license"),
                        "paper_ids": cfg.get("paper_ids"),
                        "params": params,
                        "size_mb": round(params * 4 / 2**20, 1),  # float32 weights
                        "top1": results.get(f"{arch}.{tag}", (None, None))[0],
                        "top5": results.get(f"{arch}.{tag}", (None, None))[1],
                    }
                )
    data = {
        "generated_by": "weights/generate_checkpoints.py",
        "timm_version": timm.__version__,
        "top1_source": args.results and os.path.basename(args.results),
        "checkpoints": checkpoints,
    }
    # one checkpoint per line: readable, and a regenerated file diffs line by line
    rows = ",\n  ".join(json.dumps(c) for c in checkpoints)
    head = json.dumps({k: v for k, v in data.items() if k != "checkpoints"})[:-1]
    (OUT / "checkpoints.json").write_text(f'{head}, "checkpoints": [\n  {rows}\n]}}\n')
    write_classes()
    write_manifest(checkpoints)
    counts = {f: sum(c["family"] == f for c in checkpoints) for f in FAMILIES}
    print(f"{len(checkpoints)} checkpoints: {counts}")


def _format_of(url):
    if not url:
        return None
    for ext, fmt in ((".npz", "big_vision-npz"), (".pth", "timm-pth"), (".bin", "timm-pth")):
        if url.endswith(ext):
            return fmt
    return "timm-safetensors" if url.endswith(".safetensors") else None


def write_manifest(checkpoints):
    """weights/manifest.csv: one row per checkpoint, for people (the package reads the JSON)."""
    cols = ["name", "params", "size_mb", "top1", "top5", "num_classes", "license", "url", "origin_url",
            "sha256"]  # fmt: skip
    with open(ROOT / "weights" / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        for c in checkpoints:
            writer.writerow(["" if c[k] is None else c[k] for k in cols])


def write_classes():
    """ImageNet-1k labels in timm's class order: `synset<TAB>lemma`, one per line."""
    info = Path(timm.__file__).parent / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(
        line.split("\t", 1)
        for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    )
    lines = [f"{s}\t{lemmas[s]}" for s in synsets]
    (OUT / "imagenet1k_classes.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
