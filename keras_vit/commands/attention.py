HELP = "Draw where a ViT/DeiT looks: attention rollout over an image, saved as a PNG."
EPILOG = """examples:
  keras-vit attention cat.jpg --model deit_small_patch16_224 --output cat_attention.png
  keras-vit attention cat.jpg --weights my_vit.keras --output map.png --alpha 0.6

Attention rollout (Abnar & Zuidema, 2020): heads averaged, identity added for the residual
path, rows renormalised, multiplied through the blocks; the class token's row over the
patches is drawn over the image at the image's own size."""


def add_arguments(parser):
    from keras_vit.cli import add_model_arguments

    parser.add_argument("image", metavar="IMAGE", help="JPEG, PNG, BMP or GIF file")
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, metavar="PNG", help="image file to write")
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="heatmap opacity, 0..1 (default 0.5)"
    )
    parser.add_argument(
        "--head-fusion",
        choices=("mean", "max", "min"),
        default="mean",
        help="how heads are combined (default: mean, as the paper)",
    )


def run(args):
    import os

    from keras_vit.cli import load_model
    from keras_vit.commands._images import load_images, read_image_bytes

    read_image_bytes(args.image)
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"Output folder does not exist: {parent!r}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}.")
    model = load_model(args)

    from PIL import Image

    from keras_vit.attention import overlay, rollout_map, transformer_blocks
    from keras_vit.export import input_size, model_input

    transformer_blocks(model)  # a MobileViT fails here, with a clear message
    pixels = load_images([args.image], input_size(model))  # (1, H, W, 3)
    heatmap = rollout_map(model, model_input(model, pixels), head_fusion=args.head_fusion)[0]
    with Image.open(args.image) as original:
        original.seek(0)  # first frame of a GIF, as the decoder
        picture = overlay(original.convert("RGB"), heatmap, alpha=args.alpha)
    picture.save(args.output, format="PNG")
    print(f"wrote {args.output} ({picture.size[0]}x{picture.size[1]})")
