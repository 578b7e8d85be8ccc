"""Google's original and AugReg ViT checkpoints (`.npz` from big_vision / vision_transformer)
-> a timm-layout state_dict.

The reference is timm's `vision_transformer._load_weights`; this writes the same tensors under
timm's keys instead of copying them into a torch module. Flax layouts: Dense kernels are
(in, out); the patch conv is HWIO; attention q/k/v kernels are (D, heads, head_dim) and the
output kernel (heads, head_dim, D).

At the checkpoint's own resolution the result equals timm's npz loader exactly. At another
resolution keras_vit resamples the position embedding as timm does for every other format
(`checkpoint_filter_fn`: bicubic, antialiased); timm's npz loader alone uses bilinear without
antialias there, so the two differ slightly at a new resolution.
"""

import os
import zipfile

import numpy as np

_PREFIXES = ("", "opt/target/", "params/", "params/img/")


def _prefix(npz):
    for prefix in _PREFIXES:
        if f"{prefix}embedding/kernel" in npz:
            return prefix
    raise ValueError(
        "Not a ViT .npz checkpoint: no 'embedding/kernel' under any known prefix "
        f"({', '.join(repr(p) for p in _PREFIXES)})."
    )


def _heads_to_rows(kernel):
    """q/k/v kernel (D, heads, head_dim) -> torch Linear weight (heads * head_dim, D)."""
    return kernel.reshape(kernel.shape[0], -1).T


def _dense(kernel):
    return np.ascontiguousarray(kernel.T)  # (in, out) -> torch (out, in)


def npz_to_timm(npz):
    """`{flax path: array}` (an opened .npz) -> `{timm key: float32 array}`."""
    w = {k: np.asarray(npz[k]) for k in npz}
    p = _prefix(w)
    pos_key = f"{p}Transformer/posembed_input/pos_embedding"
    if pos_key not in w:
        raise ValueError(
            f"{pos_key!r} missing: only class-token ViT .npz checkpoints (original, AugReg) "
            "are supported."
        )
    sd = {
        "patch_embed.proj.weight": w[f"{p}embedding/kernel"].transpose(3, 2, 0, 1),  # HWIO->OIHW
        "patch_embed.proj.bias": w[f"{p}embedding/bias"],
        "cls_token": w[f"{p}cls"],  # (1, 1, D)
        "pos_embed": w[pos_key],  # (1, 1 + N, D)
        "norm.weight": w[f"{p}Transformer/encoder_norm/scale"],
        "norm.bias": w[f"{p}Transformer/encoder_norm/bias"],
    }
    if f"{p}head/kernel" in w:  # absent or zero-width in feature-only checkpoints
        sd["head.weight"] = _dense(w[f"{p}head/kernel"])
        sd["head.bias"] = w[f"{p}head/bias"]
    # `pre_logits` (a representation layer of the original in21k weights) is dropped, as timm does.
    stacked = f"{p}Transformer/encoderblock/LayerNorm_0/scale" in w  # scanned layers: axis 0
    depth = (
        w[f"{p}Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
        if stacked
        else sum(f"{p}Transformer/encoderblock_{i}/LayerNorm_0/scale" in w for i in range(1000))
    )
    for i in range(depth):
        bp = f"{p}Transformer/encoderblock/" if stacked else f"{p}Transformer/encoderblock_{i}/"

        def get(name, bp=bp, i=i):
            return w[bp + name][i] if stacked else w[bp + name]

        mha = "MultiHeadDotProductAttention_1/"
        t = f"blocks.{i}."
        # q/k/v kernels (D, heads, hd) -> (heads*hd, D), stacked into timm's fused qkv
        sd[t + "attn.qkv.weight"] = np.concatenate(
            [_heads_to_rows(get(f"{mha}{n}/kernel")) for n in ("query", "key", "value")]
        )
        sd[t + "attn.qkv.bias"] = np.concatenate(
            [get(f"{mha}{n}/bias").reshape(-1) for n in ("query", "key", "value")]
        )
        out = get(f"{mha}out/kernel")  # (heads, hd, D) -> (D, heads*hd)
        sd[t + "attn.proj.weight"] = out.reshape(-1, out.shape[-1]).T
        sd[t + "attn.proj.bias"] = get(f"{mha}out/bias")
        sd[t + "norm1.weight"] = get("LayerNorm_0/scale")
        sd[t + "norm1.bias"] = get("LayerNorm_0/bias")
        sd[t + "norm2.weight"] = get("LayerNorm_2/scale")
        sd[t + "norm2.bias"] = get("LayerNorm_2/bias")
        for r in range(2):
            sd[t + f"mlp.fc{r + 1}.weight"] = _dense(get(f"MlpBlock_3/Dense_{r}/kernel"))
            sd[t + f"mlp.fc{r + 1}.bias"] = get(f"MlpBlock_3/Dense_{r}/bias")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def read_npz(path):
    """Read a ViT `.npz` (never with pickle) and return the timm-layout state_dict."""
    path = os.fspath(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # not a zip, truncated
        raise ValueError(f"Cannot read .npz file {path!r}: {err}") from err
    with npz:
        try:
            return npz_to_timm(npz)
        except KeyError as err:
            raise ValueError(f"ViT .npz {path!r} lacks tensor {err}.") from err
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"Cannot read ViT .npz {path!r}: {err}") from err


def timm_to_npz(state_dict, num_heads):
    """The inverse map (timm keys -> AugReg .npz layout), for writing test fixtures."""
    sd = {k: np.asarray(v, dtype=np.float32) for k, v in state_dict.items()}
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    if "head.weight" in sd:
        w["head/kernel"] = sd["head.weight"].T
        w["head/bias"] = sd["head.bias"]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        t, bp = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = bp + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = sd[t + "attn.qkv.weight"], sd[t + "attn.qkv.bias"]
        dim = qkv_w.shape[1]
        for j, n in enumerate(("query", "key", "value")):
            wj = qkv_w[j * dim : (j + 1) * dim]  # (heads*hd, D)
            w[f"{mha}{n}/kernel"] = wj.T.reshape(dim, num_heads, -1)
            w[f"{mha}{n}/bias"] = qkv_b[j * dim : (j + 1) * dim].reshape(num_heads, -1)
        w[f"{mha}out/kernel"] = sd[t + "attn.proj.weight"].T.reshape(num_heads, -1, dim)
        w[f"{mha}out/bias"] = sd[t + "attn.proj.bias"]
        w[bp + "LayerNorm_0/scale"], w[bp + "LayerNorm_0/bias"] = (
            sd[t + "norm1.weight"],
            sd[t + "norm1.bias"],
        )
        w[bp + "LayerNorm_2/scale"], w[bp + "LayerNorm_2/bias"] = (
            sd[t + "norm2.weight"],
            sd[t + "norm2.bias"],
        )
        for r in range(2):
            w[bp + f"MlpBlock_3/Dense_{r}/kernel"] = sd[t + f"mlp.fc{r + 1}.weight"].T
            w[bp + f"MlpBlock_3/Dense_{r}/bias"] = sd[t + f"mlp.fc{r + 1}.bias"]
        i += 1
    return {k: np.ascontiguousarray(v) for k, v in w.items()}
