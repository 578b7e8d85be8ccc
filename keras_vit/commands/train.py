"""`keras-vit train`: train or distil a model; the same command resumes after a crash."""

HELP = "Train or distil a model (DeiT recipe, tf.distribute); rerun the same command to resume."


def add_arguments(parser):
    parser.add_argument(
        "--model",
        default=None,
        help="NAME[.TAG] from `keras-vit list`, or 'convnet'; default on digits: a small "
        "distilled DeiT",
    )
    parser.add_argument(
        "--dataset", required=True, help="'digits' (built in, offline), a folder, or a TFDS name"
    )
    parser.add_argument("--data-dir", default=None, help="TensorFlow Datasets data directory")
    parser.add_argument("--teacher", default=None, help="a .keras file or a registered NAME")
    parser.add_argument("--distillation", choices=("hard", "soft", "none"), default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument(
        "--strategy", choices=("auto", "one", "mirrored", "multiworker", "tpu"), default="auto"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="override a recipe knob, e.g. --recipe mixup_alpha=0 (repeatable)",
    )
    parser.add_argument("--output", required=True, help="run folder: model.keras, metrics.json")
    parser.add_argument(
        "--backup-dir",
        default=None,
        help="per-epoch backup a rerun resumes from (default OUTPUT/backup); with several "
        "workers, a directory all of them read (shared disk, gs:// bucket)",
    )
    parser.add_argument(
        "--worker-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="multi-worker: seconds without a heartbeat before a worker counts as lost and "
        "the others stop with an error (default 60)",
    )


def _parse_knobs(items):
    import ast

    knobs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--recipe expects KNOB=VALUE, got {item!r}.")
        try:
            knobs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"--recipe {key}: {value!r} is not a number/bool/None.") from None
    return knobs


def run(args):
    import json

    from keras_vit.training.train import train

    metrics = train(
        model=args.model,
        dataset=args.dataset,
        output=args.output,
        teacher=args.teacher,
        distillation=args.distillation,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        mixed_precision=args.mixed_precision,
        strategy=args.strategy,
        seed=args.seed,
        data_dir=args.data_dir,
        recipe=_parse_knobs(args.recipe),
        verbose=2,
        backup_dir=args.backup_dir,
        worker_timeout=args.worker_timeout,
    )
    print(json.dumps(metrics, indent=2))
