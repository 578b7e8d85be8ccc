"""`keras_vit.train(...)`, the function behind `keras-vit train`: data, recipe, strategy,
distiller, `fit`, and a backup that makes the same call resume after a crash.

What runs where: the tf.data pipeline (decode, resize, augmentation, MixUp/CutMix) runs on the
host CPU threads; the train step (student forward, teacher forward, DeiT loss, AdamW update)
is one XLA program (`jit_compile=True`), replicated by the strategy.

Resuming: a `BackupAndRestore` (`SharedBackup`) keeps weights, optimizer state and the epoch
in the backup directory (`backup_dir`, default `DIR/backup`) at every epoch end. Run again, the
call restores them; the data of epoch `e` depends only on `(seed, e)` and the dropout/drop-path
generators are re-keyed per epoch (`EpochRNG`), so the resumed run ends with the weights of an
uninterrupted one.

Several workers (MultiWorkerMirrored): no worker reads a file that only the chief writes. The
chief alone writes `output` and the backup; every worker restores from the backup directory,
which must then be one they all read (`backup_dir` on a shared disk or a bucket). A teacher
trained in the run stays in memory on every worker. Non-chief workers write nothing.
"""

import json
import logging
import os

import keras

from keras_vit.training.recipes import Recipe, make_augmentation, make_optimizer, recipe_for

logger = logging.getLogger("keras_vit")

DISTILLATION_CHOICES = ("hard", "soft", "none")
CONVNET = "convnet"  # the built-in small convnet (the default teacher on digits)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value


def _backup_metadata_epoch(backup_dir):
    """The epoch BackupAndRestore will resume at (0 without a backup)."""
    import tensorflow as tf  # (tf.io.gfile: a local folder or a bucket)

    path = os.path.join(backup_dir, "training_metadata.json")
    if not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path) as f:
        return int(json.loads(f.read())["epoch"])


def _cpu_replicas(strat):
    """True for several replicas all on CPUs (logical devices of one host, or CPU workers)."""
    if strat.num_replicas_in_sync < 2 or not hasattr(strat, "extended"):
        return False  # (JAX's DataParallel compiles every step with XLA on any device)
    return all("CPU" in d.upper() for d in strat.extended.worker_devices)


def student_weights(model, weights):
    """What `create_model` loads into the student `model` (a name): a tagged name defaults to
    its tag's published checkpoint (as `keras-vit predict`), a bare name to random init;
    `"random"` forces random init, `"pretrained"` asks for the (default) tag's checkpoint, any
    other string is a local checkpoint file or directory. Returns None (random) or the
    `weights=` argument of `create_model`."""
    from keras_vit.registry import split_name

    if weights is None:
        return "pretrained" if isinstance(model, str) and split_name(model)[1] else None
    if weights == "random":
        return None
    if weights == "pretrained":
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"`weights` must be 'pretrained', 'random' or a path, got {weights!r}.")
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Student weights {path!r} do not exist.")
    if path.endswith(".keras"):
        raise ValueError(
            f"{path!r} is a whole Keras model, not a checkpoint: pass its weights "
            "(`model.save_weights('x.weights.h5')`) or a timm/HF/npz checkpoint."
        )
    return path


def _build_model(model, num_classes, image_size, recipe, dataset, weights=None, model_kwargs=None):
    """The student, built (and its checkpoint loaded) in the caller's strategy scope. From a
    checkpoint the head starts fresh when the data set's classes differ and the position
    embedding is resampled to `image_size` (`create_model`)."""
    from keras_vit.training.small_models import DIGITS_IMAGE_SIZE, digits_student, small_convnet

    named = isinstance(model, str) and model != CONVNET
    if (weights not in (None, "random") or model_kwargs) and not named:
        raise ValueError(
            f"`weights` and `model_kwargs` need a registered model name, got model={model!r}."
        )
    if isinstance(model, keras.Model):
        return model
    if model is None:
        if dataset != "digits":
            raise ValueError(
                f"--model is required on dataset {dataset!r} (only 'digits' has a default)."
            )
        return digits_student(
            num_classes, image_size or DIGITS_IMAGE_SIZE, drop_path_rate=recipe.drop_path_rate
        )
    if model == CONVNET:
        return small_convnet(num_classes, image_size or DIGITS_IMAGE_SIZE)
    from keras_vit.registry import create_model

    return create_model(
        model,
        weights=student_weights(model, weights),
        num_classes=num_classes,
        image_size=image_size,
        drop_path_rate=recipe.drop_path_rate,
        **(model_kwargs or {}),
    )


def freeze_to_head(model):
    """A linear probe: every layer but the classifier (the layers that produce the outputs of
    `model.classifier_heads()`: `head`, and `head_dist` of a distilled DeiT) is set
    `trainable=False`; frozen BatchNorm layers use their statistics. Returns the head layers."""
    from keras_vit._keras_compat import producing_layer
    from keras_vit.models.base import classifier_heads

    heads = classifier_heads(model)
    if heads is None:
        raise ValueError(
            f"--freeze-backbone needs a keras_vit model, got {type(model).__name__} {model.name!r}."
        )
    head_layers = {}
    for tensor in heads.outputs:
        layer = producing_layer(tensor)  # a Dense head, or the distilled DeiT's Average
        if getattr(layer, "weights", None):
            head_layers[id(layer)] = layer
    if not head_layers:
        raise ValueError(f"{model.name!r} has no classifier to train (num_classes=0?).")
    for layer in model.layers:
        layer.trainable = id(layer) in head_layers
    return list(head_layers.values())


def training_preprocessing(student):
    """What the student is trained and evaluated on. The training pipeline resizes whole
    images to the input size (no random crop), so the evaluation split is resized the same
    way (squash, crop_pct 1, bilinear), not cut by a checkpoint's centre crop (timm's 0.875
    default cut a 32x32 digit's border and lost 2-40 points of accuracy). `keras-vit
    validate` evaluates a finished model with its checkpoint's own transform, as timm does."""
    import dataclasses

    from keras_vit.data import preprocessing_for
    from keras_vit.data.transform import EvalTransform

    prep = preprocessing_for(student)
    whole = EvalTransform(
        prep.image_size, crop_pct=1.0, crop_mode="squash", interpolation="bilinear"
    )
    return dataclasses.replace(prep, transform=whole)


TEACHER_WEIGHTS = ("pretrained", "random")


def resolve_recipe(recipe, model_name, dataset, loaded, freeze_backbone):
    """`train(recipe=...)` (None, a preset name, or a dict of knobs with an optional
    `"preset"`) -> a `Recipe`. The default preset follows the start: `linear_probe` with a
    frozen backbone, `finetune` from a checkpoint, else `scratch`."""
    if isinstance(recipe, str):
        recipe = {"preset": recipe}
    knobs = dict(recipe or {})
    default = "linear_probe" if freeze_backbone else "finetune" if loaded else "scratch"
    preset = knobs.pop("preset", None) or default
    return recipe_for(model_name, dataset, preset=preset, **knobs)


def _load_teacher(teacher, num_classes, image_size, teacher_model=None, teacher_weights=None):
    """`(teacher model, teacher adapter or None)`. A teacher never has random weights unless
    `teacher_weights="random"` says so:

    - a `keras.Model` is used as it is;
    - `NAME[.TAG]` (registered): its tag's (or default tag's) published checkpoint, downloaded
      and verified as `create_model(weights="pretrained")`, at its own classes and size; a name
      with no published checkpoint is refused;
    - `keras:APP` (Keras Applications, e.g. `keras:EfficientNetV2B0`): ImageNet weights, its own
      size and `preprocess_input` through `ApplicationAdapter`;
    - a `.keras` file: the saved model;
    - another file or directory: a checkpoint of `teacher_model` (a registered name or
      `keras:APP`) with the data set's `num_classes`, loaded all or nothing (no fresh head).
    """
    from keras_vit.training.teachers import application_teacher, is_application_name

    if isinstance(teacher, keras.Model):
        return teacher, None
    weights = teacher_weights or "pretrained"
    if weights not in TEACHER_WEIGHTS:
        raise ValueError(f"`teacher_weights` must be one of {TEACHER_WEIGHTS}, got {weights!r}.")
    if not isinstance(teacher, (str, os.PathLike)) or not os.fspath(teacher):
        raise ValueError(f"`teacher` must be a name, a file or a keras.Model, got {teacher!r}.")
    teacher = os.fspath(teacher)
    is_file = teacher.endswith(".keras") or os.path.sep in teacher or os.path.exists(teacher)
    if is_file:
        if weights == "random":
            raise ValueError(f"teacher_weights='random' and a teacher file {teacher!r} conflict.")
        if not os.path.exists(teacher):
            raise FileNotFoundError(f"Teacher file {teacher!r} does not exist.")
        if teacher.endswith(".keras"):
            if teacher_model is not None:
                raise ValueError(f"{teacher!r} is a whole model: drop --teacher-model.")
            import keras_vit.models  # noqa: F401  (registers the classes the file names)

            return keras.saving.load_model(teacher, compile=False), None
        if not teacher_model:
            raise ValueError(
                f"Teacher checkpoint {teacher!r} needs --teacher-model NAME (its architecture)."
            )
        if is_application_name(teacher_model):
            return application_teacher(teacher_model, weights=teacher, num_classes=num_classes)
        from keras_vit.loading import load_weights
        from keras_vit.registry import create_model

        model = create_model(teacher_model, num_classes=num_classes)
        return load_weights(model, teacher, reset_head=False), None
    if teacher_model is not None:
        raise ValueError(f"--teacher-model is for a teacher file, not for {teacher!r}.")
    if is_application_name(teacher):
        if weights == "random":
            logger.warning("Teacher %r has random weights (asked for).", teacher)
            return application_teacher(teacher, weights=None, num_classes=num_classes)
        return application_teacher(teacher)
    from keras_vit.pretrained import resolve_cfg
    from keras_vit.registry import create_model, get_spec, split_name

    spec = get_spec(teacher)  # an unknown name: ValueError with the closest ones
    if weights == "random":
        logger.warning("Teacher %r has random weights (asked for).", teacher)
        return create_model(teacher, num_classes=num_classes, image_size=image_size), None
    if resolve_cfg(spec.name, split_name(teacher)[1]) is None:
        raise ValueError(
            f"Teacher {teacher!r} has no published checkpoint (keras_vit.list_pretrained()): a "
            "random teacher teaches nothing. Pass a checkpoint (--teacher FILE --teacher-model "
            f"{spec.name}), a .keras model, or --teacher-weights random to ask for one."
        )
    return create_model(teacher, weights="pretrained"), None


def train(
    model=None,
    dataset="digits",
    output=None,
    teacher=None,
    distillation=None,
    epochs=None,
    batch_size=None,
    image_size=None,
    mixed_precision=False,
    strategy="auto",
    seed=0,
    data_dir=None,
    recipe=None,
    val_fraction=0.2,
    steps_per_execution=1,
    jit_compile=True,
    verbose="auto",
    weights=None,
    teacher_model=None,
    teacher_weights=None,
    freeze_backbone=False,
    model_kwargs=None,
    backup_dir=None,
    worker_timeout=None,
):
    """Train (or distil) a model and write `output/model.keras` and `output/metrics.json`.

    Args:
        model: a registered name (`deit_small_distilled_patch16_224`), `"convnet"` (the small
            built-in CNN), a `keras.Model`, or None on `digits` (a small distilled DeiT).
        dataset: `"digits"` (built in, offline), a folder of class subfolders, or a TFDS name.
        output: the run's folder (required); written by the chief only. Holds the backup a
            rerun resumes from unless `backup_dir` says otherwise.
        teacher: a registered `NAME[.TAG]` (its published checkpoint), `keras:APP` (a Keras
            Applications model with ImageNet weights, e.g. `keras:EfficientNetV2B0`, fed
            through its own `preprocess_input`), a `.keras` file, a checkpoint file (with
            `teacher_model`), a `keras.Model`, or None. On `digits` without `model` and
            `teacher`, a small convnet teacher is trained first (the chief writes it to
            `output/teacher`; every worker keeps it in memory; itself resumable). A teacher
            never has random weights unless `teacher_weights="random"`.
        distillation: `"hard"`, `"soft"` or `"none"`; default hard when the student has a
            distillation head and a teacher is available, else none.
        epochs, batch_size: default 15 and 64 on digits, else 300 (30 from a checkpoint or
            with `freeze_backbone`) and 256 (DeiT). The batch is global: a strategy splits it
            across replicas.
        image_size: the student's input size (default: the model's / 32 on digits).
        mixed_precision: bfloat16 compute on CPU/TPU, float16 with loss scaling on GPU.
        strategy: `auto|one|mirrored|multiworker|tpu`, a `tf.distribute.Strategy`, or on
            JAX a `keras_vit.training.strategy.JaxDataParallel` (`auto`: DataParallel over
            the local JAX devices when there are several).
        seed: initial weights, data order, augmentation, dropout.
        data_dir: TFDS data directory.
        recipe: a `Recipe`; a preset name (`"scratch"`, `"finetune"`, `"linear_probe"`); or a
            dict of knobs overriding `recipe_for(model, dataset, preset)`, where the key
            `"preset"` names the preset. Default preset: `"linear_probe"` with
            `freeze_backbone`, `"finetune"` when the student starts from a checkpoint, else
            `"scratch"` (DeiT's from-scratch recipe).
        val_fraction: held-out fraction when the source has no validation split.
        jit_compile: compile the train step with XLA (the TPU path). (Not combined with
            `tf.config.experimental.enable_op_determinism()`, which makes Keras drop XLA;
            reproducibility comes from seeds: XLA on CPU reduces in a fixed order.)
        weights: the student's start (a registered `model` only): None (default: the tag's
            published checkpoint for a tagged name such as `deit_small_patch16_224.fb_in1k`,
            random init for a bare name), `"pretrained"` (the tag's or default tag's
            checkpoint, downloaded and verified), `"random"`, or a local checkpoint (timm
            `.safetensors`/`.pth`, Hugging Face directory, ViT `.npz`, Keras `.weights.h5`).
            The head starts fresh when the data set's classes differ; the position embedding
            is resampled to `image_size`. Built and loaded inside the strategy's scope.
        teacher_model: the architecture of a teacher checkpoint file (`NAME` or `keras:APP`).
        teacher_weights: `"pretrained"` (default) or `"random"` (a random teacher, only
            when asked for: it teaches nothing).
        freeze_backbone: a linear probe: only the classifier head(s) train.
        model_kwargs: extra constructor arguments of a registered `model` (`{"depth": 2}`),
            as timm's `--model-kwargs`.
        backup_dir: where the per-epoch backup lives (default `output/backup`; the default
            teacher's in `output/teacher/backup`, or `backup_dir/teacher`). With several
            workers it must be readable by all of them (shared disk, `gs://` bucket) for a
            restart to resume; the chief alone writes it.
        worker_timeout: seconds without a heartbeat before a MultiWorkerMirrored worker counts
            as lost (default `strategy.DEFAULT_WORKER_TIMEOUT`, 60); the others then stop
            with a `RuntimeError` naming it. Restart every worker to resume.

    Returns the final validation metrics (the dict written to `metrics.json`).
    """
    import tensorflow as tf

    from keras_vit.data import load_splits
    from keras_vit.training.strategy import (
        DEFAULT_WORKER_TIMEOUT,
        JaxDataParallel,
        get_strategy,
        lost_worker_error,
    )

    if not output:
        raise ValueError(f"`output` (the run's folder) is required, got {output!r}.")
    if distillation is not None and distillation not in DISTILLATION_CHOICES:
        raise ValueError(
            f"`distillation` must be one of {DISTILLATION_CHOICES}, got {distillation!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an int, got {seed!r}.")
    if worker_timeout is None:
        worker_timeout = DEFAULT_WORKER_TIMEOUT
    if backup_dir is not None and (not isinstance(backup_dir, str) or not backup_dir):
        raise ValueError(f"`backup_dir` must be a non-empty path, got {backup_dir!r}.")
    if isinstance(strategy, (tf.distribute.Strategy, JaxDataParallel)):
        strat = strategy
    else:
        strat = get_strategy(strategy, worker_timeout=worker_timeout)
    student_backup = backup_dir or os.path.join(output, "backup")
    splits = load_splits(dataset, data_dir=data_dir, val_fraction=val_fraction)
    previous_policy = keras.config.dtype_policy()
    if mixed_precision:
        gpu = bool(tf.config.list_logical_devices("GPU"))
        keras.config.set_dtype_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        common = dict(
            dataset=dataset,
            splits=splits,
            epochs=epochs,
            batch_size=batch_size,
            strat=strat,
            seed=seed,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            verbose=verbose,
        )
        default_pair = model is None and dataset == "digits"
        if teacher is None and default_pair and distillation in (None, "hard", "soft"):
            # Every worker trains the teacher (a finished one is restored from its backup,
            # no training) and keeps it in memory: no worker reads a file the chief wrote.
            teacher_dir = os.path.join(output, "teacher")
            teacher_backup = (
                os.path.join(backup_dir, "teacher")
                if backup_dir
                else os.path.join(teacher_dir, "backup")
            )
            _, teacher = _fit_one(
                CONVNET,
                output=teacher_dir,
                backup_dir=teacher_backup,
                teacher=None,
                distillation="none",
                image_size=image_size,
                recipe=recipe,
                **common,
            )
        metrics, _ = _fit_one(
            model,
            output=output,
            backup_dir=student_backup,
            teacher=teacher,
            distillation=distillation,
            image_size=image_size,
            recipe=recipe,
            weights=weights,
            teacher_model=teacher_model,
            teacher_weights=teacher_weights,
            freeze_backbone=freeze_backbone,
            model_kwargs=model_kwargs,
            **common,
        )
        return metrics
    except tf.errors.UnavailableError as err:
        if not isinstance(strat, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise lost_worker_error(err, worker_timeout, student_backup) from err
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _fit_one(
    model,
    *,
    dataset,
    splits,
    output,
    backup_dir,
    teacher,
    distillation,
    epochs,
    batch_size,
    image_size,
    strat,
    seed,
    recipe,
    steps_per_execution,
    jit_compile,
    verbose,
    weights=None,
    teacher_model=None,
    teacher_weights=None,
    freeze_backbone=False,
    model_kwargs=None,
):
    import tensorflow as tf

    from keras_vit.data import eval_dataset, train_dataset
    from keras_vit.models.base import has_distillation_head
    from keras_vit.training import DeiTDistiller
    from keras_vit.training.callbacks import EpochRNG, ProgressFile, SharedBackup
    from keras_vit.training.strategy import agree_on_epoch, is_chief, prepare_multiworker_fit

    digits = dataset == "digits"
    # a student from a checkpoint (or a linear probe) fine-tunes: DeiT's 30 epochs, not 300
    loaded = isinstance(model, str) and student_weights(model, weights) is not None
    default_epochs = 15 if digits else 30 if (loaded or freeze_backbone) else 300
    epochs = _positive_int("epochs", epochs if epochs is not None else default_epochs)
    batch_size = _positive_int(
        "batch_size", batch_size if batch_size is not None else (64 if digits else 256)
    )
    name = model if isinstance(model, str) else getattr(model, "name", None)
    if not isinstance(recipe, Recipe):
        recipe = resolve_recipe(recipe, name, dataset, loaded, freeze_backbone)
    if jit_compile and _cpu_replicas(strat):
        # XLA on CPU has no collectives ("Collectives are not yet implemented for CPU devices
        # when compiling with XLA"), and compiles every logical CPU replica for the one host
        # device, away from its variables (XLA known issues). GPU/TPU replicas keep XLA.
        logger.warning("Several replicas on CPUs: the train step runs without XLA.")
        jit_compile = False
    chief = is_chief()
    initial_epoch = min(_backup_metadata_epoch(backup_dir), epochs)
    agree_on_epoch(strat, initial_epoch, backup_dir)  # several workers: the same backup
    if chief:
        os.makedirs(output, exist_ok=True)

    keras.utils.set_random_seed(seed)  # initial weights and generator seeds of this run
    with strat.scope():
        student = _build_model(
            model, splits.num_classes, image_size, recipe, dataset, weights, model_kwargs
        )
        if freeze_backbone:
            freeze_to_head(student)
        teacher_net, adapter = None, None
        if teacher is not None:
            teacher_net, adapter = _load_teacher(
                teacher, splits.num_classes, image_size, teacher_model, teacher_weights
            )
        two_heads = has_distillation_head(student)
        if distillation is None:
            distillation = "hard" if (two_heads and teacher_net is not None) else "none"
        distiller = DeiTDistiller(
            student,
            teacher_net if distillation != "none" else None,
            distillation=distillation,
            alpha=recipe.distillation_alpha,
            temperature=recipe.distillation_temperature,
            label_smoothing=recipe.label_smoothing,
            teacher_adapter=adapter if distillation != "none" else None,
        )
        prep = training_preprocessing(student)
        train_ds, steps = train_dataset(
            splits,
            prep,
            batch_size,
            seed,
            epochs,
            initial_epoch=initial_epoch,
            augment=make_augmentation(recipe, splits.num_classes),
            one_hot=recipe.mixes,
        )
        optimizer = make_optimizer(recipe, batch_size, steps, epochs, model=student)
        distiller.compile(
            optimizer=optimizer, jit_compile=jit_compile, steps_per_execution=steps_per_execution
        )
    if isinstance(strat, tf.distribute.MultiWorkerMirroredStrategy):
        prepare_multiworker_fit(distiller, train_ds)  # Keras 3 workarounds, see there
    callbacks = [SharedBackup(backup_dir, writer=chief), EpochRNG(seed)]
    if chief:
        callbacks.append(ProgressFile(os.path.join(output, "progress.json")))
    with strat.scope():  # (JAX's DataParallel shards the batches of `fit` inside its scope)
        history = distiller.fit(
            train_ds,
            epochs=epochs,
            steps_per_epoch=steps,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=verbose,
        )
    # (with `recipe.ema`, fit ends by writing the averaged weights into the model: evaluated
    # and saved is the EMA model, as DeiT reports it)
    # Evaluation keeps the last partial batch, so every example counts once: tf.distribute
    # splits it unevenly across replicas; JAX's DataParallel cannot split a batch its devices
    # do not divide, so on JAX the (replicated) model evaluates outside the distribution.
    results = distiller.evaluate(
        eval_dataset(splits, prep, batch_size), return_dict=True, verbose=0
    )
    metrics = {"val_" + k: float(v) for k, v in results.items()}
    metrics.update(
        model=student.name,
        teacher=None if teacher_net is None else teacher_net.name,
        distillation=distillation,
        dataset=dataset,
        epochs=epochs,
        resumed_from_epoch=initial_epoch,
        batch_size=batch_size,
        seed=seed,
        num_train=splits.num_train,
        num_val=splits.num_val,
        replicas=strat.num_replicas_in_sync,
        train_loss=float(history.history["loss"][-1]) if history.history.get("loss") else None,
    )
    if chief:  # one writer: the chief (or worker 0)
        student.save(os.path.join(output, "model.keras"))
        with open(os.path.join(output, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    elif isinstance(strat, tf.distribute.MultiWorkerMirroredStrategy):
        # saving may run collectives every worker must join: the others save into a
        # temporary directory of their own, removed at once (TensorFlow's multi-worker guide)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="keras_vit_worker_") as tmp:
            student.save(os.path.join(tmp, "model.keras"))
    return metrics, student
