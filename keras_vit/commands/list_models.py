HELP = "List registered models (and, with --pretrained, their published checkpoints)."


def add_arguments(parser):
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'deit_*'")
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="list checkpoints (name.tag) with params, size, top-1, licence and source",
    )


def run(args):
    if args.pretrained:
        return _list_checkpoints(args.pattern)
    from keras_vit.pretrained import resolve_cfg
    from keras_vit.registry import get_spec, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"No model matches {args.pattern!r}.")
    print(f"{'model':36s} {'family':10s} {'input':6s} default checkpoint tag")
    for name in names:
        spec = get_spec(name)
        size = spec.arch.get("image_size", 224)
        cfg = resolve_cfg(name)
        print(f"{name:36s} {spec.family:10s} {size!s:6s} {cfg.tag if cfg else '-'}")


def _list_checkpoints(pattern):
    from keras_vit.pretrained import get_pretrained_cfg, list_pretrained

    names = list_pretrained(pattern)
    if not names:
        raise ValueError(f"No pretrained checkpoint matches {pattern!r}.")
    print(
        f"{'checkpoint':52s} {'params':>8s} {'size':>9s} {'top-1':>6s} {'top-5':>6s} {'classes':>7s} "
        f"{'input':>7s} licence"
    )
    for name in names:
        c = get_pretrained_cfg(name)
        top1 = f"{c.top1:.2f}" if c.top1 is not None else "n/a"
        top5 = f"{c.top5:.2f}" if c.top5 is not None else "n/a"
        size = "x".join(str(s) for s in c.input_size)
        print(
            f"{name:52s} {c.params / 1e6:7.1f}M {c.size_mb:7.1f}MB {top1:>6s} {top5:>6s} "
            f"{c.num_classes:7d} {size:>7s} {c.license or 'unknown'}"
        )
    print(
        f"{len(names)} checkpoints; top-1/top-5: timm's ImageNet-1k validation figures; n/a: timm publishes none (see weights/README.md)."
    )
