HELP = "Convert a timm / Hugging Face / ViT .npz checkpoint into Keras .weights.h5 or .keras."


def add_arguments(parser):
    parser.add_argument(
        "source",
        help="timm .safetensors or .pth/.bin, a Hugging Face save_pretrained directory, "
        "or a ViT .npz",
    )
    parser.add_argument(
        "--model", required=True, help="registered name[.tag], e.g. vit_base_patch16_224"
    )
    parser.add_argument("--output", required=True, help="FILE.weights.h5 or FILE.keras")
    parser.add_argument("--num-classes", type=int, help="classifier width (a new one starts fresh)")
    parser.add_argument("--image-size", type=int, help="input size (position embedding resampled)")
    parser.add_argument("--atol", type=float, default=1e-4, help="max |logit diff| vs the source")
    check = parser.add_mutually_exclusive_group()
    check.add_argument(
        "--no-check",
        action="store_true",
        help="skip comparing outputs with the source framework (timm / transformers)",
    )
    check.add_argument(
        "--require-check",
        action="store_true",
        help="fail (and write nothing) when the source framework is not installed",
    )


def run(args):
    # the source model runs in its own process (torch first there), so nothing is imported here
    from keras_vit.convert.api import convert

    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    report = convert(
        args.source,
        args.model,
        args.output,
        check=not args.no_check,
        require_check=args.require_check,
        atol=args.atol,
        **kwargs,
    )
    diff = report["max_abs_diff"]
    if diff is not None:
        checked = f"max |logit diff| vs source {diff:.2e}"
    else:
        checked = f"not compared: {report['not_compared']}"
    print(f"wrote {report['output']} ({report['format']} -> {args.model}; {checked})")
