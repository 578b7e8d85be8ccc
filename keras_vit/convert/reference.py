"""The reference side of `convert`'s check, run as a separate Python process.

`python keras_vit/convert/reference.py JOB.json` (by path, never as `-m keras_vit...`: the
package imports TensorFlow, and torch's libraries must load first: the other order segfaults
with TF 2.21 / torch 2.14). It imports no part of keras_vit. The job (JSON) names the
checkpoint, how the source framework loads it, a `.npy` of NCHW float32 images and where to
write the source model's logits (`.npy`).

Exit status: 0 logits written; 3 the source framework is not installed (stderr names it);
anything else: the reference failed (stderr says why).
"""

import json
import os
import sys

MISSING_EXIT = 3

# run by path, this file's folder is sys.path[0], and its sibling `timm.py` would shadow timm
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _import(names, framework):
    try:
        return [__import__(name, fromlist=["_"]) for name in names]
    except ImportError as err:
        print(f"MISSING {framework}: {err}", file=sys.stderr)
        sys.exit(MISSING_EXIT)


def _timm_model(job):
    torch, timm, timm_models, registry = _import(
        ["torch", "timm", "timm.models", "timm.models._registry"], "timm"
    )
    kwargs = dict(job["timm_kwargs"])
    if job.get("img_size") is not None:
        kwargs["img_size"] = tuple(job["img_size"])
    try:
        ref = timm.create_model(job["arch"], pretrained=False, **kwargs)
    except TypeError:  # a family without img_size (MobileViT): it takes any size
        kwargs.pop("img_size", None)
        ref = timm.create_model(job["arch"], pretrained=False, **kwargs)
    ref.eval()
    if job["format"] == "big_vision-npz":
        ref.load_pretrained(job["source"])  # timm's own `_load_weights` for Google's .npz
    else:
        module = sys.modules[registry.model_entrypoint(job["arch"]).__module__]
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        timm_models.load_checkpoint(ref, job["source"], filter_fn=filter_fn, weights_only=True)

    def forward(nchw):
        with torch.no_grad():
            return ref(torch.from_numpy(nchw)).numpy()

    return forward


def _hf_model(job):
    os.environ.setdefault("USE_TF", "0")  # transformers must not load TensorFlow here
    torch, transformers = _import(["torch", "transformers"], "transformers")
    source = job["source"]
    folder = source if os.path.isdir(source) else os.path.dirname(source)
    ref = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    # HF MobileViT takes BGR (its processor flips RGB); keras_vit's converted model takes RGB
    bgr = ref.config.model_type == "mobilevit"

    def forward(nchw):
        if bgr:
            nchw = nchw[:, ::-1].copy()
        with torch.no_grad():
            return ref(pixel_values=torch.from_numpy(nchw)).logits.numpy()

    return forward


def main(argv):
    with open(argv[1]) as f:
        job = json.load(f)
    forward = _hf_model(job) if job["kind"] == "huggingface" else _timm_model(job)
    import numpy as np

    images = np.load(job["images"])
    np.save(job["output"], np.asarray(forward(np.ascontiguousarray(images)), np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
