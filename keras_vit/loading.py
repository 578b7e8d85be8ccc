"""Loading weights into a built model: read -> adapt -> map and check everything -> assign.

All or nothing: every tensor is mapped, shape-checked and checked for NaN/Inf before the
first assignment, so a failure leaves the model exactly as it was. Weights never come
through plain pickle (torch files only via `torch.load(weights_only=True)`).
"""

import logging
import os

import numpy as np

from keras_vit.convert.timm import (
    IGNORED_KEY_SUFFIXES,
    module_key,
    timm_entries,
    to_keras_layout,
    to_timm_layout,
)

logger = logging.getLogger("keras_vit")


def read_state_dict(path):
    """A checkpoint -> {timm key: numpy array}, whatever its published format.

    - a timm `state_dict` as `.safetensors`;
    - a timm (or HF) `state_dict` as `.pth`/`.pt`/`.bin`, only through
      `torch.load(weights_only=True)` (torch's restricted unpickler: tensors and plain
      containers, never arbitrary objects), and only when torch is installed;
    - a Hugging Face `save_pretrained` directory (`config.json` + weights), or a weights file
      with HF keys and a `config.json` beside it (`keras_vit.convert.huggingface`);
    - Google's original / AugReg ViT `.npz` (`keras_vit.convert.big_vision`).
    """
    from keras_vit.convert import huggingface as hf

    path = os.fspath(path)
    if os.path.isdir(path):
        if not hf.is_hf_dir(path):
            raise ValueError(f"{path!r} is a directory without a Hugging Face config.json.")
        return hf.hf_to_timm(_read_file(hf.weights_file(path)), hf.read_config(path))
    if not os.path.isfile(path):
        raise ValueError(f"Weights file {path!r} does not exist.")
    state_dict = _read_file(path)
    if not path.endswith(".npz") and hf.looks_like_hf(state_dict):
        config = hf.read_config(path)
        if config is None:
            raise ValueError(
                f"{path!r} has Hugging Face keys but no config.json beside it; pass the "
                "save_pretrained directory."
            )
        return hf.hf_to_timm(state_dict, config)
    return state_dict


def _read_file(path):
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"Cannot read safetensors file {path!r}: {err}") from err
    if path.endswith(".npz"):
        from keras_vit.convert.big_vision import read_npz

        return read_npz(path)
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return _read_torch(path)
    if path.endswith(".pkl"):
        raise ValueError(f"{path!r} is a plain pickle; keras_vit does not unpickle.")
    raise ValueError(
        f"Unknown weights format for {path!r}: expected .safetensors, .pth/.bin (torch), .npz "
        "(big_vision ViT), a Hugging Face directory, or Keras .weights.h5."
    )


def _read_torch(path):
    """A torch checkpoint through torch's restricted unpickler only, never plain pickle."""
    try:
        import torch
    except ImportError as err:
        raise ValueError(
            f"{path!r} is a torch checkpoint; reading it safely needs torch installed "
            "(torch.load(weights_only=True)). Or convert it to .safetensors."
        ) from err
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # keep torch's specific reason ("Unsupported global: GLOBAL builtins.open"), not its
        # advice to retry with weights_only=False
        reason = [line for line in str(err).splitlines() if "WeightsUnpickler" in line]
        raise ValueError(
            f"{path!r} refused: it is not a plain tensor checkpoint, and keras_vit does not "
            "unpickle anything else (torch.load(weights_only=True) only)"
            + (f": {reason[0].split(' was not')[0].strip()}" if reason else ".")
        ) from err
    except (RuntimeError, OSError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"Cannot read torch checkpoint {path!r}: {err}") from err
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state_dict.")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path!r}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # bfloat16/half -> float32 (numpy has no bfloat16)
        key = key[len("module.") :] if key.startswith("module.") else key  # DataParallel
        out[key] = value.numpy()
    return out


def plan_assignments(model, state_dict, source="checkpoint", reset_head=False):
    """Check the whole `state_dict` against `model`; return [(variable, value)] or raise.

    With `reset_head`, classifier tensors whose shapes differ (another `num_classes`) or that
    the model lacks (`num_classes=0`) are left out, and the head keeps its fresh init.
    """
    if hasattr(model, "adapt_checkpoint"):
        state_dict = model.adapt_checkpoint(state_dict)
    head_keys = set(getattr(model, "head_keys", ()))
    plan, problems, used, skipped_head = [], [], set(), []
    for key, variable, perm in timm_entries(model):
        if key not in state_dict:
            if reset_head and key in head_keys:
                skipped_head.append(key)
                continue
            problems.append(f"missing tensor {key!r} (for {variable.path})")
            continue
        used.add(key)
        value = to_keras_layout(np.asarray(state_dict[key]), perm)
        if tuple(value.shape) != tuple(variable.shape):
            if reset_head and key in head_keys:
                skipped_head.append(key)
                continue
            problems.append(
                f"tensor {key!r} has shape {tuple(value.shape)} (Keras layout) but "
                f"{variable.path} needs {tuple(variable.shape)}"
            )
            continue
        if not np.issubdtype(value.dtype, np.floating):
            problems.append(f"tensor {key!r} has non-float dtype {value.dtype}")
            continue
        if not np.all(np.isfinite(value)):
            problems.append(f"tensor {key!r} contains NaN or Inf")
            continue
        plan.append((variable, value))
    unexpected = [
        k
        for k in state_dict
        if k not in used
        and not k.endswith(IGNORED_KEY_SUFFIXES)
        and not (reset_head and k in head_keys)
    ]
    problems += [f"unexpected tensor {k!r} (not in this model)" for k in sorted(unexpected)]
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ValueError(
            f"Weights from {source} do not fit {model.name}: {shown}{more}. Nothing was loaded."
        )
    if skipped_head or (reset_head and (head_keys & set(state_dict)) - used):
        logger.info("%s: new classifier head (num_classes differs from %s).", model.name, source)
    return plan


def assign(plan):
    for variable, value in plan:
        variable.assign(value.astype(variable.dtype))


def load_state_dict(model, state_dict, source="state_dict", reset_head=False):
    """Load a timm-layout {key: array} into `model`, all or nothing."""
    assign(plan_assignments(model, state_dict, source, reset_head))
    return model


def load_weights(model, source, reset_head=False):
    """Load weights into an existing model, all or nothing.

    `source`: any format `read_state_dict` reads (timm `.safetensors`/`.pth`, a Hugging Face
    directory, a ViT `.npz`), a Keras `.weights.h5`, or a dict of arrays in timm layout. Every
    format goes through the same plan (`plan_assignments`): the model's `adapt_checkpoint`
    (position embedding resampled to its grid), a fresh head with `reset_head` where the
    classes differ, every tensor checked before the first is assigned.
    """
    if isinstance(source, dict):
        return load_state_dict(model, source, "the given state_dict", reset_head)
    path = os.fspath(source)
    if path.endswith(".weights.h5"):
        state_dict = read_keras_weights(model, path, reset_head)
    else:
        state_dict = read_state_dict(path)
    return load_state_dict(model, state_dict, repr(path), reset_head)


def read_keras_weights(model, path, reset_head=False):
    """A Keras `.weights.h5` (what `model.save_weights` and `keras-vit convert` write) ->
    {timm key: array in timm layout}, named through `model`'s own variable-to-key map.

    Keras stores each layer's own variables as `<group>/vars/<i>`, the group's `vars`
    carrying the layer's name; the chain of names down to a group is the owning layer's path
    (`blocks_3/attn/qkv`) and `i` its variable's place among that layer's own variables. So
    the file is read by name, never by order, and it may come from the same architecture
    with other classes or another image size: the shared plan adapts it like any checkpoint.
    Tensors the model has no variable for keep a `module[i]` name, so the plan reports them
    (or drops a head that `reset_head` replaces).
    """
    import h5py

    if not os.path.isfile(path):
        raise ValueError(f"Weights file {path!r} does not exist.")
    # (owning layer path, index among its own variables) -> (timm key, layout permutation);
    # model.weights lists each layer's own variables together, in their saved order
    by_owner, counts = {}, {}
    for key, variable, perm in timm_entries(model):
        owner = variable.path.rpartition("/")[0]
        index = counts.get(owner, 0)
        counts[owner] = index + 1
        by_owner[(owner, index)] = (key, perm)
    head_modules = {k.rpartition(".")[0] for k in getattr(model, "head_keys", ())}
    state_dict = {}

    def visit(group, chain):
        own = group.get("vars")
        if own is not None and chain is not None:
            name = own.attrs.get("name")
            if name is None:
                raise ValueError(
                    f"{path!r} names no layers (an older Keras did not record them); "
                    "load it with `model.load_weights` into the same architecture."
                )
            chain = chain + [name.decode() if isinstance(name, bytes) else str(name)]
        owner = "/".join(chain or [])
        if own is not None:
            for index, dataset in own.items():
                found = by_owner.get((owner, int(index)))
                if found is None:  # not in this model: a name the plan can report
                    module = module_key(owner) if owner else "<model>"
                    if not (reset_head and module in head_modules):
                        state_dict[f"{module}[{index}]"] = np.asarray(dataset)
                    continue
                key, perm = found
                state_dict[key] = to_timm_layout(np.asarray(dataset), perm)
        for child, sub in group.items():
            if child != "vars" and isinstance(sub, h5py.Group):
                visit(sub, [] if chain is None else chain)

    try:
        with h5py.File(path, "r") as f:
            visit(f, None)  # the root is the model itself: its name is not part of paths
    except OSError as err:
        raise ValueError(f"Cannot read Keras weights file {path!r}: {err}") from err
    return state_dict
