"""Every use of Keras internals (names Keras does not export or promise), in one place.

Each function says why no public API does the job. `check_keras()` verifies that the
installed Keras still has every internal used here; `tests/test_keras_compat.py` runs it, so
a Keras release that moves one fails that test with the missing name, not a model somewhere
else with an AttributeError. Tested with Keras 3.15 (`TESTED_KERAS`).
"""

import keras

TESTED_KERAS = "3.15"
SUPPORTED_MAJOR = 3


def model_supports_jit(model):
    """Keras's own test of whether XLA may compile `model` (every layer `supports_jit`, no op
    determinism, not TF on Apple GPUs). `XLAByDefault` turns "auto" into XLA on CPU only where
    Keras itself would allow XLA; there is no public form of this check."""
    from keras.src.trainers.trainer import model_supports_jit as supports

    return supports(model)


# `XLAByDefault._resolve_auto_jit_compile` overrides the hook behind `jit_compile="auto"`
# (keras.Model._resolve_auto_jit_compile): the only place that decides "auto" for `compile`,
# `fit` and an uncompiled model's `predict` alike.
AUTO_JIT_HOOK = "_resolve_auto_jit_compile"


def flatten_layers(layer, include_self=True):
    """`layer` and every layer inside it, depth first. `keras.Model.layers` lists only the
    top-level layers of a functional graph, not the sublayers of a custom layer (a
    `TransformerBlock`'s `attn/qkv`), which the checkpoint map and the seed reset need."""
    return list(layer._flatten_layers(include_self=include_self, recursive=True))


def own_variables(layer):
    """The variables `layer` created itself, in Keras's save order (trainable first), not
    those of its sublayers: `layer.weights` mixes both."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def seed_generators(layer):
    """The `SeedGenerator`s `layer` owns (Dropout, DropPath, ...); Keras tracks them for
    saving but exposes no list."""
    return list(getattr(layer, "_seed_generators", []))


def inbound_tensor(layer):
    """The symbolic input of `layer`'s first call in its model's graph, to build a view
    (attention maps) that taps the graph at that layer. Keras has no public node API."""
    return layer._inbound_nodes[0].input_tensors[0]


def producing_layer(tensor):
    """The layer (or operation) whose call produced the symbolic `tensor` of a functional
    graph: the classifier behind each output of `classifier_heads()`, which a linear probe
    keeps trainable. Keras has no public node API."""
    return tensor._keras_history.operation


def random_seed_dtype():
    """The dtype Keras's random ops expect of a seed tensor on this backend (a stateless seed
    in a tf.data trace must match it); not exported."""
    from keras.src.backend import random_seed_dtype as dtype

    return dtype()


# --- Keras 3 + MultiWorkerMirroredStrategy ------------------------------------------------
# Keras 3.15's TF trainer does not run under MultiWorkerMirroredStrategy out of the box
# (tensorflow/tensorflow#72388): (1) `fit` first peeks at one distributed batch and
# `strategy.reduce`s the whole `(x, y)` structure, which the collective all-reduce rejects
# ("Attempt to convert a value (PerReplica...)"); (2) every step's logs are reduced with
# `strategy.reduce("MEAN", v, axis=0)`, which fails on scalar metrics ("Invalid reduction
# dimension 0 for input with 0 dimensions"). Both are fixed below, applied only under that
# strategy (`keras_vit.training.strategy.prepare_multiworker_fit`).
_REDUCE_PATCHED = False


def patch_multiworker_reduce():
    """Fix (2): reduce scalar logs over workers with `axis=None`."""
    global _REDUCE_PATCHED
    if _REDUCE_PATCHED:
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
            strategy
        ):
            # mean over workers; axis=None for scalars (axis 0 only where there is one)
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=0 if len(v.shape) else None), values
            )
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    _REDUCE_PATCHED = True


def build_without_peek(model, data_batch):
    """Fix (1): build `model` from `data_batch` (zeros of the dataset's shapes) instead of a
    batch peeked from the distributed dataset. `_maybe_symbolic_build` is the trainer's
    build step; it has no public switch."""
    build = type(model)._maybe_symbolic_build

    def without_peek(iterator=None, data_batch=None):
        return build(model, iterator=None, data_batch=zeros)

    zeros = data_batch
    model._maybe_symbolic_build = without_peek


def optimizer_variable_index(optimizer, variable):
    """The place of `variable` among the variables `optimizer` was built with, for whatever
    form `update_step` receives it in (a Keras variable, or under `tf.distribute` the
    replica's `tf.Variable`). Keras's own optimizers find their slots with this method
    (`Optimizer._get_variable_index`); there is no public form of it."""
    return optimizer._get_variable_index(variable)


def check_keras(version=None):
    """Raise `RuntimeError` naming what is missing when the installed Keras (or `version`)
    lacks an internal this module uses."""
    version = keras.__version__ if version is None else version
    major = int(str(version).split(".")[0])
    problems = []
    if major != SUPPORTED_MAJOR:
        problems.append(f"major version {major} (keras_vit supports Keras {SUPPORTED_MAJOR}.x)")
    for owner, name in (
        (keras.Model, AUTO_JIT_HOOK),
        (keras.Model, "_maybe_symbolic_build"),
        (keras.layers.Layer, "_flatten_layers"),
        (keras.optimizers.Optimizer, "_get_variable_index"),
        (keras.optimizers.Optimizer, "_apply_weight_decay"),
    ):
        if not hasattr(owner, name):
            problems.append(f"{owner.__name__}.{name}")
    probe = keras.layers.Dense(1)
    probe.build((None, 1))
    for name in ("_trainable_variables", "_non_trainable_variables", "_inbound_nodes"):
        if not hasattr(probe, name):
            problems.append(f"Layer instance attribute {name}")
    try:
        from keras.src.backend import random_seed_dtype  # noqa: F401
        from keras.src.trainers.trainer import model_supports_jit  # noqa: F401
    except ImportError as err:
        problems.append(str(err))
    if keras.backend.backend() == "tensorflow":
        from keras.src.backend.tensorflow import trainer as tf_trainer

        for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker"):
            if not hasattr(tf_trainer, name):
                problems.append(f"keras.src.backend.tensorflow.trainer.{name}")
    if problems:
        raise RuntimeError(
            f"Keras {version} is not supported by keras_vit (tested with {TESTED_KERAS}): "
            f"missing or changed: {', '.join(problems)}. See keras_vit/_keras_compat.py."
        )
    return version
