HELP = "Export a model for serving: a SavedModel (TF Serving), a TFLite or an ONNX file."
EPILOG = """examples:
  keras-vit export serving/deit_s/1 --model deit_small_distilled_patch16_224
  keras-vit export vit_ti.tflite --model vit_tiny_patch16_224 --quantization float16
  keras-vit export out/1 --weights my_model.keras --class-names labels.txt
  keras-vit export mobilevit_s.onnx --model mobilevit_s.cvnets_in1k

SavedModel signatures: `serving_default` (float32 images [N,H,W,3], 0..255) and
`serve_image_bytes` (string [N] of encoded JPEG/PNG/BMP/GIF images of any size). Outputs:
logits, probabilities, top_k_ids, top_k_probabilities and top_k_class_names when the model has
class names. TFLite: builtin ops only, batch 1, outputs logits and probabilities. ONNX: input `images`
float32 [batch,H,W,3] as the model takes it (0..255), output `logits`, dynamic batch (needs
the onnx extra)."""


def add_arguments(parser):
    from keras_vit.cli import add_model_arguments

    parser.add_argument(
        "output",
        metavar="OUTPUT",
        help="SavedModel directory, or a file ending in .tflite or .onnx",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--format",
        choices=("savedmodel", "tflite", "onnx"),
        help="default: tflite / onnx if OUTPUT ends in .tflite / .onnx, else savedmodel",
    )
    parser.add_argument(
        "--quantization",
        choices=("dynamic", "float16"),
        help="TFLite only: int8 weights ('dynamic') or float16 weights (default: float32)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX only: the opset (17)")
    parser.add_argument(
        "--top-k", type=int, default=5, metavar="K", help="SavedModel: classes in top_k_* (5)"
    )
    parser.add_argument(
        "--class-names",
        metavar="FILE",
        help="SavedModel: a text file, one label per line in output order (default: the "
        "checkpoint's labels, ImageNet's for 1000 classes)",
    )


def run(args):
    import os

    from keras_vit.cli import load_model, progress

    suffixes = {".tflite": "tflite", ".onnx": "onnx"}
    fmt = args.format or suffixes.get(os.path.splitext(args.output)[1], "savedmodel")
    if args.quantization and fmt != "tflite":
        raise ValueError("--quantization applies to TFLite export only (--format tflite).")
    if args.opset != 17 and fmt != "onnx":
        raise ValueError("--opset applies to ONNX export only (--format onnx).")
    if fmt == "savedmodel" and os.path.isfile(args.output):
        raise ValueError(f"{args.output!r} is a file; a SavedModel is written as a directory.")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"Output folder does not exist: {parent!r}")
    class_names = None
    if args.class_names:
        if not os.path.isfile(args.class_names):
            raise FileNotFoundError(f"No such class-names file: {args.class_names!r}")
        with open(args.class_names, encoding="utf-8") as f:
            class_names = [line.rstrip("\n") for line in f if line.strip()]

    from keras_vit.export import export_saved_model, export_tflite
    from keras_vit.export_onnx import export_onnx

    def write(model):
        if fmt == "onnx":
            export_onnx(model, args.output, opset=args.opset)
        elif fmt == "tflite":
            export_tflite(model, args.output, quantization=args.quantization)
        else:
            export_saved_model(model, args.output, class_names=class_names, top_k=args.top_k)

    models = []  # two long steps: building (and loading) the model, then tracing + writing
    steps = [lambda: models.append(load_model(args)), lambda: write(models[0])]
    for step in progress(steps, desc=f"export {fmt}"):
        step()
    print(f"wrote {args.output} ({fmt})")
