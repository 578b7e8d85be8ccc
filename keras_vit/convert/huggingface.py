"""Hugging Face transformers checkpoints -> timm-layout state_dicts.

Reads a `save_pretrained` directory (`config.json` + `model.safetensors`, or
`pytorch_model.bin` through `torch.load(weights_only=True)`) and renames its keys into timm's,
one rename table per family, so the rest of loading is the timm path.

- ViT (`ViTForImageClassification`) and DeiT (`DeiTForImageClassification[WithTeacher]`): HF
  keeps q, k and v as three Linear layers; timm fuses them into one `qkv` Linear whose output
  rows are [q; k; v], so the three are concatenated in that order. Both the published
  (transformers 4) names (`encoder.layer.N.attention.attention.query`) and the transformers 5
  in-memory names (`layers.N.attention.q_proj`) are accepted.
- HF ViT's LayerNorm epsilon defaults to 1e-12 where timm uses 1e-6; on these activations the
  difference is below 1e-6 in the logits, far inside the 1e-4 parity bound.
- The pooler of a bare `ViTModel` (unused by the classifier) has no timm counterpart: dropped.
- MobileViT (`MobileViTForImageClassification`): a rename table into timm's `mobilevit_*`
  (ByobNet) keys; HF's BGR input convention is folded into the stem (see
  `_mobilevit_to_timm`).
"""

import json
import os
import re

import numpy as np

# --- ViT / DeiT: per-block renames, published and transformers-5 names ---
_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV = {  # HF q/k/v projection names -> index in timm's fused qkv
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
    "classifier": "head",  # ViTForImageClassification, DeiTForImageClassification
    "cls_classifier": "head",  # DeiTForImageClassificationWithTeacher
    "distillation_classifier": "head_dist",
}
_BLOCK_RE = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")


def _vit_to_timm(state_dict, prefix):
    out, qkv = {}, {}
    for key, value in state_dict.items():
        k = key[len(prefix) :] if key.startswith(prefix) else key
        if k.startswith("pooler."):
            continue  # bare ViTModel pooler: not part of the classifier path
        m = _BLOCK_RE.match(k)
        if m:
            i, name, kind = m.groups()
            if name in _QKV:
                qkv.setdefault((int(i), kind), [None] * 3)[_QKV[name]] = value
                continue
            if name in _BLOCK:
                out[f"blocks.{i}.{_BLOCK[name]}.{kind}"] = value
                continue
        else:
            base, _, kind = k.rpartition(".")
            if base in _TOP and kind in ("weight", "bias"):
                out[f"{_TOP[base]}.{kind}"] = value
                continue
            if k in _TOP:  # parameters without .weight (tokens, position embedding)
                out[_TOP[k]] = value
                continue
        raise ValueError(f"Hugging Face tensor {key!r} has no timm counterpart.")
    for (i, kind), parts in sorted(qkv.items()):
        missing = [n for n, p in zip("qkv", parts) if p is None]
        if missing:
            raise ValueError(f"Hugging Face block {i} lacks the {'/'.join(missing)} {kind}.")
        out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate(parts, axis=0)  # rows [q; k; v]
    return out


# --- MobileViT: HF names each conv "convolution" + "normalization"; timm "conv" + "bn" ---
_MV_CONV = {  # HF layer -> timm module, inside a stage's MobileNetV2 (inverted residual) block
    "expand_1x1": "conv1_1x1",
    "conv_3x3": "conv2_kxk",
    "reduce_1x1": "conv3_1x1",
}
_MV_BLOCK = {  # HF layer -> timm module, inside a stage's MobileViT block (timm: stages.S.1)
    "conv_kxk": "conv_kxk",
    "conv_1x1": "conv_1x1",
    "layernorm": "norm",
    "conv_projection": "conv_proj",
    "fusion": "conv_fusion",
}
_MV_PART = {"convolution": "conv", "normalization": "bn"}
_MV_LAYER = re.compile(
    r"encoder\.layer\.(\d+)\.(?:layer\.(\d+)\.|(downsampling_layer)\.)?(\w+)\.(.+)$"
)
_MV_TRANSFORMER = re.compile(r"transformer\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def _mv_conv(rest):
    """'convolution.weight' -> 'conv.weight'; 'normalization.running_mean' -> 'bn.running_mean'."""
    part, _, leaf = rest.partition(".")
    if part not in _MV_PART:
        raise KeyError(rest)
    return f"{_MV_PART[part]}.{leaf}"


def _mobilevit_to_timm(state_dict, config):
    """MobileViTForImageClassification -> timm `mobilevit_*` keys.

    Stage S of HF is timm's `stages.S`: plain MobileNetV2 blocks `layer.J` -> `stages.S.J`;
    in the MobileViT stages the `downsampling_layer` is `stages.S.0` and the rest of the stage
    (local conv, transformer, fusion) is `stages.S.1`.

    Channel order: HF MobileViT takes BGR (its image processor flips RGB to BGR, as the
    original cvnets training did); keras_vit models take RGB. The stem convolution's input
    channels are reversed so the converted model gives the same logits for the RGB image that
    the HF model gives for its BGR input (exact: the conv is linear in its input channels and
    MobileViT's normalisation treats all channels alike).
    """
    out, qkv = {}, {}
    for key, value in state_dict.items():
        k = key[len("mobilevit.") :] if key.startswith("mobilevit.") else key
        if k.endswith("num_batches_tracked"):
            continue
        try:
            if k.startswith("conv_stem."):
                out["stem." + _mv_conv(k[len("conv_stem.") :])] = value
            elif k.startswith("conv_1x1_exp."):
                out["final_conv." + _mv_conv(k[len("conv_1x1_exp.") :])] = value
            elif k.startswith("classifier."):
                out["head.fc." + k[len("classifier.") :]] = value
            else:
                m = _MV_LAYER.match(k)
                if not m:
                    raise KeyError(k)
                s, j, down, layer, rest = m.groups()
                if j is not None or down:  # inverted residual block
                    block = f"stages.{s}.{j if j is not None else 0}"
                    out[f"{block}.{_MV_CONV[layer]}.{_mv_conv(rest)}"] = value
                elif layer == "transformer":
                    t = _MV_TRANSFORMER.match(f"{layer}.{rest}")
                    if not t:
                        raise KeyError(k)
                    i, name, kind = t.groups()
                    prefix = f"stages.{s}.1.transformer.{i}"
                    if name in _QKV:
                        qkv.setdefault((prefix, kind), [None] * 3)[_QKV[name]] = value
                    else:
                        out[f"{prefix}.{_BLOCK[name]}.{kind}"] = value
                elif layer == "layernorm":
                    out[f"stages.{s}.1.norm.{rest}"] = value
                elif layer == "conv_1x1":  # a bare 1x1 conv: no norm, no bias
                    out[f"stages.{s}.1.conv_1x1.{rest.partition('.')[2]}"] = value
                else:
                    out[f"stages.{s}.1.{_MV_BLOCK[layer]}.{_mv_conv(rest)}"] = value
        except KeyError as err:
            raise ValueError(f"Hugging Face tensor {key!r} has no timm counterpart.") from err
    for (prefix, kind), parts in sorted(qkv.items()):
        if any(p is None for p in parts):
            raise ValueError(f"Hugging Face {prefix} lacks one of q/k/v {kind}.")
        out[f"{prefix}.attn.qkv.{kind}"] = np.concatenate(parts, axis=0)
    if "stem.conv.weight" in out:  # BGR -> RGB: reverse the input channels (O, I, kh, kw)
        out["stem.conv.weight"] = np.ascontiguousarray(out["stem.conv.weight"][:, ::-1])
    return out


_FAMILIES = {
    "vit": ("vit.", _vit_to_timm),
    "deit": ("deit.", _vit_to_timm),
    "mobilevit": (None, _mobilevit_to_timm),
}


def hf_to_timm(state_dict, config):
    """Rename a transformers state_dict (numpy arrays) into timm keys, by `config["model_type"]`."""
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        raise ValueError(
            f"Hugging Face model_type {model_type!r} is not supported; expected one of "
            f"{sorted(_FAMILIES)}."
        )
    act = config.get("hidden_act", "gelu")
    expected_act = "silu" if model_type == "mobilevit" else "gelu"
    if act != expected_act:
        raise ValueError(
            f"Hugging Face hidden_act {act!r}: keras_vit's {model_type} uses {expected_act!r}."
        )
    prefix, convert = _FAMILIES[model_type]
    return convert(state_dict, config) if prefix is None else convert(state_dict, prefix)


def is_hf_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def read_config(path):
    """config.json of a checkpoint directory, or next to a checkpoint file (or None)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        return None
    try:
        with open(cfg_path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read {cfg_path!r}: {err}") from err


def weights_file(folder):
    """The single weights file of a `save_pretrained` directory (safetensors preferred)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    if any(n.endswith(".index.json") for n in os.listdir(folder)):
        raise ValueError(f"{folder!r} holds a sharded checkpoint; sharded files are not supported.")
    raise ValueError(f"{folder!r} has a config.json but no model.safetensors or pytorch_model.bin.")


def looks_like_hf(state_dict):
    return any(k.split(".", 1)[0] in ("vit", "deit", "mobilevit") for k in state_dict)
