"""Choosing a `tf.distribute` strategy, and who writes outputs.

`auto` picks, in order: TPU when one is configured (`TPU_NAME` / a Cloud TPU VM),
MultiWorkerMirrored when `TF_CONFIG` names a cluster of more than one task, Mirrored when
there are several GPUs, else the default strategy (one device). The batch size given to
training is the *global* batch: Keras splits each batch across the replicas.
"""

import json
import os

STRATEGIES = ("auto", "one", "mirrored", "multiworker", "tpu")


def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {raw!r}") from err


def _cluster_size(config):
    cluster = config.get("cluster", {})
    return sum(len(tasks) for tasks in cluster.values())


def _tpu_configured():
    return bool(os.environ.get("TPU_NAME") or os.path.exists("/dev/accel0"))


def get_strategy(name="auto"):
    """A `tf.distribute.Strategy` for `name` (one of `STRATEGIES`)."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {name!r}.")
    if name == "auto":
        if _tpu_configured():
            name = "tpu"
        elif _cluster_size(_tf_config()) > 1:
            name = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one"
    if name == "one":
        return tf.distribute.get_strategy()  # the default strategy: one device, no-op scope
    if name == "mirrored":
        # every local GPU, or every logical CPU device when there is no GPU (tests split the
        # CPU with `tf.config.set_logical_device_configuration`)
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        if _cluster_size(_tf_config()) < 1:
            raise ValueError("--strategy multiworker needs TF_CONFIG naming the cluster.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME", ""))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def task_id():
    """`(task_type, task_index)` of this process in TF_CONFIG, `(None, 0)` outside a cluster."""
    task = _tf_config().get("task", {})
    return task.get("type"), int(task.get("index", 0))


def is_chief():
    """True for the one process that writes outputs: the chief, or worker 0 when the cluster
    has no chief (TensorFlow's convention), or any process outside a cluster."""
    config = _tf_config()
    task_type, index = task_id()
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in config.get("cluster", {})
    return task_type == "worker" and index == 0 and not has_chief


def prepare_multiworker_fit(model, dataset):
    """Make `model.fit(dataset)` run under MultiWorkerMirroredStrategy with Keras 3: the two
    workarounds of `keras_vit._keras_compat` (reduce scalar logs with axis=None; build from
    zeros of the dataset's shapes instead of peeking at a distributed batch)."""
    import tensorflow as tf

    from keras_vit._keras_compat import build_without_peek, patch_multiworker_reduce

    patch_multiworker_reduce()
    # the peek only serves to build layers/metrics from a batch's shapes: zeros will do
    zeros = tf.nest.map_structure(
        lambda spec: tf.zeros([d or 1 for d in spec.shape], spec.dtype), dataset.element_spec
    )
    build_without_peek(model, zeros)
