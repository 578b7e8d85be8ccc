HELP = "Measure a checkpoint's top-1/top-5 accuracy on a labelled image set, as timm does."
EPILOG = """examples:
  keras-vit validate --model deit_small_patch16_224.fb_in1k --data imagenet/val
  keras-vit validate --model vit_base_patch16_224 --weights vit_b16.safetensors --data val/
  keras-vit validate --model mobilevit_s --dataset imagenet2012 --data-dir ~/tensorflow_datasets
  keras-vit validate --weights my_model.keras --data flowers/val --results-file flowers.json

--data reads timm's layout (validate.py / ImageFolder): images (.png, .jpg, .jpeg) in one
folder per class, classes in natural sort order. --dataset reads TensorFlow Datasets, e.g.
imagenet2012 prepared from its manual download in DATA_DIR/downloads/manual. Images go
through the checkpoint's evaluation transform (timm's, on PIL: same pixels). The result row
has the columns of timm's results-imagenet.csv (JSON, or CSV for a .csv file)."""


def add_arguments(parser):
    from keras_vit.cli import add_model_arguments

    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DIR", help="image folder, one subfolder per class")
    source.add_argument("--dataset", metavar="TFDS_NAME", help="a TensorFlow Datasets name")
    parser.add_argument("--split", default="validation", help="TFDS split (default: validation)")
    parser.add_argument("--data-dir", metavar="D", help="TFDS data directory")
    parser.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)"
    )
    parser.add_argument(
        "--results-file", metavar="F", help="write the result row (.csv: timm's CSV; else JSON)"
    )


def run(args):
    import json

    from keras_vit.cli import load_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.data is not None:  # a typo fails before the model is built
        from keras_vit.evaluation import find_images_and_targets

        find_images_and_targets(args.data)
    model = load_model(args)

    from keras_vit.evaluation import validate

    result = validate(
        model,
        data=args.data,
        dataset=args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        results_file=args.results_file,
        progress=True,
    )
    print(
        f" * Acc@1 {result['top1']:.3f} ({result['top1_err']:.3f}) "
        f"Acc@5 {result['top5']:.3f} ({result['top5_err']:.3f})  loss {result['loss']:.4f}  "
        f"{result['num_images']} images, {result['images_per_sec']:.1f} images/s"
    )
    print(json.dumps(result))
