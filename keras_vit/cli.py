"""`keras-vit` / `python -m keras_vit`: one subcommand per module in `keras_vit.commands`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args)`, and
imports TensorFlow only inside `run`, so `--help` stays fast. User mistakes (`ValueError`,
`FileNotFoundError` and other `OSError`s) print one line and exit 2, without a traceback;
Ctrl-C exits 130. TensorFlow's C++ start-up lines on stderr are silenced
(`keras_vit/_quiet_start.py`; `TF_CPP_MIN_LOG_LEVEL=0` shows them). Helpers for the
commands: `add_model_arguments` / `load_model` (`--model NAME[.TAG] [--weights PATH]`) and
`progress`.
"""

import argparse
import importlib
import os
import sys

# subcommand -> module; each issue adds its own line
COMMANDS = {
    "list": "keras_vit.commands.list_models",
    "predict": "keras_vit.commands.predict",
    "export": "keras_vit.commands.export",
    "attention": "keras_vit.commands.attention",
    "convert": "keras_vit.commands.convert",
    "train": "keras_vit.commands.train",
    "validate": "keras_vit.commands.validate",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit",
        description="Vision transformers for Keras 3: ViT, DeiT (distilled) and MobileViT.",
        epilog="Run `keras-vit COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except (ValueError, OSError) as err:  # FileNotFoundError, PIL's unreadable image, offline
        print(f"keras-vit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"keras-vit {args.command}: interrupted", file=sys.stderr)
        return 130


# --- helpers for the commands -------------------------------------------------------------
def add_model_arguments(parser, required=True):
    """`--model NAME[.TAG]` and `--weights PATH`."""
    parser.add_argument(
        "--model",
        metavar="NAME[.TAG]",
        help="registered model (`keras-vit list`), optionally with a checkpoint tag; "
        "not needed when --weights is a .keras file",
    )
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="checkpoint: timm .safetensors/.pth, Hugging Face directory, ViT .npz, Keras "
        ".weights.h5, or a whole .keras model; default: the tag's published checkpoint "
        "(downloaded once, then cached)",
    )


def load_model(args, **create_kwargs):
    """The model `--model` / `--weights` name: a `.keras` file loads as it was saved; else
    `create_model(name, weights=PATH or "pretrained")`."""
    weights = args.weights
    if weights is not None and not os.path.exists(weights):
        raise FileNotFoundError(f"No such weights file or directory: {weights!r}")
    if weights is not None and weights.endswith(".keras"):
        import keras

        import keras_vit.models  # noqa: F401  (registers the classes the file names)

        return keras.saving.load_model(weights)
    if not args.model:
        raise ValueError("--model NAME is required (unless --weights is a .keras file).")
    from keras_vit.registry import create_model

    return create_model(args.model, weights=weights or "pretrained", **create_kwargs)


def progress(iterable, total=None, desc=None):
    """A progress bar on stderr (tqdm when installed and stderr is a terminal), else the
    iterable as it is."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, disable=None)


if __name__ == "__main__":
    sys.exit(main())
