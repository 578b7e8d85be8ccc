"""Print the README's model table (name, family, parameters, input size) from the registry.

The table lists each architecture at its default configuration (timm's default tag).

Usage: python examples/model_table.py [PATTERN] [--update README.md]

Parameter counts come from building each keras_vit model (random init), not from a list;
the parity tests check them against timm.
"""

import argparse
import math
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_vit  # noqa: E402

MARKER = "<!-- models-table -->"


def table(pattern):
    rows = ["| model | family | params (M) | input |", "|---|---|---:|---|"]
    for name in keras_vit.list_models(pattern):
        spec = keras_vit.registry.get_spec(name)
        model = keras_vit.create_model(name)
        size = model.input_shape[1:3]
        # trainable only, as timm counts: BatchNorm's moving statistics are buffers there
        params = sum(math.prod(w.shape) for w in model.trainable_weights)
        rows.append(f"| `{name}` | {spec.family} | {params / 1e6:.2f} | {size[0]}x{size[1]} |")
        del model
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", nargs="?", default="*")
    parser.add_argument("--update", metavar="README", help="replace the table after the marker")
    args = parser.parse_args()
    text = table(args.pattern)
    if not args.update:
        print(text)
        return
    with open(args.update) as f:
        readme = f.read()
    if MARKER not in readme:
        raise SystemExit(f"{args.update} has no {MARKER} line")
    # the marker line, then the table up to the next blank line
    readme = re.sub(
        re.escape(MARKER) + r"\n(\|.*\n)*", lambda _: f"{MARKER}\n{text}\n", readme, count=1
    )
    with open(args.update, "w") as f:
        f.write(readme)


if __name__ == "__main__":
    main()
