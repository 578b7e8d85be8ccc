"""`keras-vit` / `python -m keras_vit`: one subcommand per module in `keras_vit.commands`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args)`, and
imports TensorFlow only inside `run`, so `--help` stays fast. User mistakes (`ValueError`,
`FileNotFoundError`, `KeyboardInterrupt`) print one line and exit 2, without a traceback.
"""

import argparse
import importlib
import sys

# subcommand -> module; each issue adds its own line
COMMANDS = {
    "list": "keras_vit.commands.list_models",
    "convert": "keras_vit.commands.convert",
    "train": "keras_vit.commands.train",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit",
        description="Vision transformers for Keras 3: ViT, DeiT (distilled) and MobileViT.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except (ValueError, FileNotFoundError) as err:
        print(f"keras-vit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"keras-vit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
