"""`keras-vit train`: train or distil a model; the same command resumes after a crash."""

HELP = "Train or distil a model (DeiT recipe, tf.distribute); rerun the same command to resume."
EPILOG = """examples:
  keras-vit train --dataset digits --output runs/digits
  keras-vit train --model deit_small_patch16_224.fb_in1k --dataset tf_flowers --epochs 10 \\
      --batch-size 64 --image-size 224 --output runs/flowers      # fine-tunes the checkpoint
  keras-vit train --model vit_small_patch16_224 --weights vit_s.safetensors --dataset photos/ \\
      --freeze-backbone --output runs/probe                        # linear probe
  keras-vit train --model deit_small_distilled_patch16_224.fb_in1k --dataset imagenet2012 \\
      --teacher keras:EfficientNetV2B0 --output runs/distil

Weights: a tagged --model (NAME.TAG) starts from the tag's published checkpoint (downloaded,
sha256-verified, cached), a bare NAME from random weights; --weights pretrained|random|PATH
says otherwise. From a checkpoint the head starts fresh when the data set's classes differ, the
position embedding is resampled to --image-size, and the fine-tuning recipe is the default.
A teacher never has random weights unless --teacher-weights random asks for it."""


def add_arguments(parser):
    parser.add_argument(
        "--model",
        default=None,
        help="NAME[.TAG] from `keras-vit list`, or 'convnet'; default on digits: a small "
        "distilled DeiT",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="pretrained|random|PATH",
        help="the student's start: 'pretrained' (the tag's published checkpoint), 'random', or "
        "a checkpoint (timm .safetensors/.pth, Hugging Face directory, ViT .npz, Keras "
        ".weights.h5); default: 'pretrained' for a tagged NAME.TAG, 'random' for a bare NAME",
    )
    parser.add_argument(
        "--model-kwargs",
        action="append",
        default=[],
        metavar="ARG=VALUE",
        help="extra constructor argument of --model, e.g. --model-kwargs depth=6 (repeatable)",
    )
    parser.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="linear probe: train only the classifier head(s) (recipe preset linear_probe)",
    )
    parser.add_argument(
        "--dataset", required=True, help="'digits' (built in, offline), a folder, or a TFDS name"
    )
    parser.add_argument("--data-dir", default=None, help="TensorFlow Datasets data directory")
    parser.add_argument(
        "--teacher",
        default=None,
        help="NAME[.TAG] (its published checkpoint), keras:APP (Keras Applications with "
        "ImageNet weights, e.g. keras:EfficientNetV2B0), a .keras file, or a checkpoint file "
        "with --teacher-model",
    )
    parser.add_argument(
        "--teacher-model",
        default=None,
        metavar="NAME",
        help="architecture of a --teacher checkpoint file: a registered NAME or keras:APP",
    )
    parser.add_argument(
        "--teacher-weights",
        choices=("pretrained", "random"),
        default=None,
        help="'random' builds a teacher with random weights (teaches nothing; only on request)",
    )
    parser.add_argument("--distillation", choices=("hard", "soft", "none"), default=None)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: 15 on digits, 30 from a checkpoint or with --freeze-backbone, else 300",
    )
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
        metavar="PRESET|KNOB=VALUE",
        help="a preset (scratch, finetune, linear_probe; default: finetune from a checkpoint, "
        "linear_probe with --freeze-backbone, else scratch) or a knob, e.g. --recipe "
        "mixup_alpha=0 --recipe layer_decay=0.65 (repeatable)",
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


def _parse_knobs(items, flag="--recipe", presets=True):
    """`["finetune", "lr=1e-4"]` -> `{"preset": "finetune", "lr": 0.0001}`."""
    import ast

    knobs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep and presets and key.isidentifier():
            if "preset" in knobs:
                raise ValueError(f"{flag}: two presets, {knobs['preset']!r} and {key!r}.")
            knobs["preset"] = key
            continue
        if not sep or not key:
            raise ValueError(
                f"{flag} expects {'PRESET or ' if presets else ''}KEY=VALUE, got {item!r}."
            )
        try:
            knobs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if not presets:  # a constructor argument may be a word: global_pool=avg
                knobs[key] = value
                continue
            raise ValueError(f"{flag} {key}: {value!r} is not a number/bool/None.") from None
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
        weights=args.weights,
        teacher_model=args.teacher_model,
        teacher_weights=args.teacher_weights,
        freeze_backbone=args.freeze_backbone,
        model_kwargs=_parse_knobs(args.model_kwargs, "--model-kwargs", presets=False) or None,
        backup_dir=args.backup_dir,
        worker_timeout=args.worker_timeout,
    )
    print(json.dumps(metrics, indent=2))
