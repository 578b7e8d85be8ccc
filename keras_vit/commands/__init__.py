"""CLI subcommands, one per module (see keras_vit/cli.py)."""
