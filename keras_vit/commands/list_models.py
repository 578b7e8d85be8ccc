HELP = "List registered models (and, with --pretrained, their checkpoints)."


def add_arguments(parser):
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'deit_*'")


def run(args):
    from keras_vit.registry import get_spec, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"No model matches {args.pattern!r}.")
    print(f"{'model':36s} {'family':10s} input")
    for name in names:
        spec = get_spec(name)
        size = spec.arch.get("image_size", 224)
        print(f"{name:36s} {spec.family:10s} {size}")
