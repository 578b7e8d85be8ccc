HELP = "Classify images with a model: the top-k classes and their probabilities."
EPILOG = """examples:
  keras-vit predict cat.jpg dog.png --model deit_small_patch16_224.fb_in1k --top 3
  keras-vit predict photos/*.jpg --model vit_base_patch16_224 --weights vit_b16.safetensors
  keras-vit predict cat.jpg --weights my_model.keras --json

Images go through the checkpoint's evaluation transform (timm's: decoded as PIL, resized with
Pillow's filter to size / crop_pct, centre-cropped) by the same graph as the exported
SavedModel's `serve_image_bytes` signature, so both give the same answer."""

BATCH = 16


def add_arguments(parser):
    from keras_vit.cli import add_model_arguments

    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG, BMP or GIF files")
    add_model_arguments(parser)
    parser.add_argument(
        "--top", type=int, default=5, metavar="K", help="classes to show per image (default 5)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON line per image: its path, top-k ids, probabilities, names and logits",
    )


def run(args):
    import json

    from keras_vit.cli import load_model, progress
    from keras_vit.commands._images import read_image_bytes

    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}.")
    for path in args.images:  # a typo fails before the model is built
        read_image_bytes(path)
    model = load_model(args)

    import tensorflow as tf

    from keras_vit.data.transform import UnreadableImageError, first_undecodable
    from keras_vit.export import bytes_function, resolve_class_names

    if getattr(model, "num_classes", 1) == 0:
        raise ValueError(f"Model {model.name!r} has no classifier (num_classes=0).")
    names = resolve_class_names(model)
    # the SavedModel's `serve_image_bytes` graph: bytes -> eval transform -> model -> top-k
    forward = tf.function(bytes_function(model, top_k=args.top, class_names=names))
    chunks = [args.images[i : i + BATCH] for i in range(0, len(args.images), BATCH)]
    for chunk in progress(chunks, desc="predict"):
        try:
            out = forward(tf.constant([read_image_bytes(p) for p in chunk]))
        except tf.errors.OpError:
            bad = first_undecodable(chunk)
            if bad is None:
                raise
            raise UnreadableImageError(bad) from None
        ids, probs = out["top_k_ids"].numpy(), out["top_k_probabilities"].numpy()
        if args.json:
            for path, row_ids, row_probs, logits in zip(chunk, ids, probs, out["logits"].numpy()):
                row = {"image": path, "top_k_ids": row_ids.tolist()}
                row["top_k_probabilities"] = row_probs.tolist()
                if names:
                    row["top_k_class_names"] = [names[i] for i in row_ids]
                row["logits"] = logits.tolist()
                print(json.dumps(row))
            continue
        for path, row_ids, row_probs in zip(chunk, ids, probs):
            print(path)
            for rank, (i, p) in enumerate(zip(row_ids, row_probs), 1):
                label = f"  {names[i]}" if names else ""
                print(f"  {rank}. {p:.4f}  class {i}{label}")
