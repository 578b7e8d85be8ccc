"""Choosing a `tf.distribute` strategy (or a JAX `keras.distribution`), and who writes outputs.

`auto` picks, in order: TPU when one is configured (`TPU_NAME` / a Cloud TPU VM),
MultiWorkerMirrored when `TF_CONFIG` names a cluster of more than one task, Mirrored when
there are several GPUs, else the default strategy (one device). The batch size given to
training is the *global* batch: Keras splits each batch across the replicas.

On the JAX backend (`KERAS_BACKEND=jax`) `auto` and `mirrored` give `keras.distribution.
DataParallel` over every local JAX device when there are several (`JaxDataParallel`), `one`
a single device; `multiworker` and `tpu` are TensorFlow strategies and are refused there.

A lost worker: MultiWorkerMirrored's coordination service expects a heartbeat from every task;
one silent for `worker_timeout` seconds (SIGKILL, a preempted VM) aborts the collectives of
the others with `UnavailableError`, which `lost_worker_error` turns into a message that names
the task and says how to resume.
"""

import json
import os
import re

STRATEGIES = ("auto", "one", "mirrored", "multiworker", "tpu")
# Seconds without a heartbeat before a worker counts as lost (TensorFlow's own default is 10 s;
# a minute rides out a loaded host, and still bounds the wait of the survivors).
DEFAULT_WORKER_TIMEOUT = 60


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


class JaxDataParallel:
    """`keras.distribution.DataParallel` over the local JAX devices, with the two things the
    trainer asks of a strategy: `scope()` (model building, `fit` and `evaluate` run inside it:
    variables replicated, each batch split along its first axis) and `num_replicas_in_sync`.

    JAX works on global arrays: the loss of a step is the mean over the whole global batch, as
    on one device, so the update is the same (up to the order of the cross-device sum)."""

    def __init__(self, devices=None):
        import keras

        self.distribution = keras.distribution.DataParallel(devices=devices)
        self.num_replicas_in_sync = len(self.distribution.device_mesh.devices.flatten())

    def scope(self):
        return self.distribution.scope()

    def __repr__(self):
        return f"JaxDataParallel(replicas={self.num_replicas_in_sync})"


class _NoDistribution:
    """One JAX device: a no-op scope."""

    num_replicas_in_sync = 1

    def scope(self):
        import contextlib

        return contextlib.nullcontext()


def _jax_strategy(name):
    import jax

    if name in ("multiworker", "tpu"):
        raise ValueError(
            f"--strategy {name} is a TensorFlow strategy; on KERAS_BACKEND=jax use 'auto' "
            f"(DataParallel over the local devices) or 'one'."
        )
    devices = jax.devices()
    if name == "one" or len(devices) < 2:
        return _NoDistribution()
    return JaxDataParallel(devices)


def _configure_heartbeat(worker_timeout):
    """Set the coordination service's heartbeat timeout before MultiWorkerMirrored configures
    it (it keeps a configuration that exists: collective_all_reduce_strategy.py)."""
    # (private modules: MultiWorkerMirrored itself imports these; no public API takes a timeout)
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    config = _tf_config()
    ctx = context.context()
    if ctx.coordination_service is not None:
        return
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(tasks))
        for job, tasks in config.get("cluster", {}).items()
        if job in ("chief", "worker")
    ]
    import tensorflow as tf

    spec = tf.train.ClusterSpec(config["cluster"])
    ctx.configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        heartbeat_timeout_in_ms=int(worker_timeout * 1000),
        coordinated_jobs=jobs,
    )


_CREATED = {}  # name -> the strategy this process made (see get_strategy)


def get_strategy(name="auto", worker_timeout=DEFAULT_WORKER_TIMEOUT):
    """A `tf.distribute.Strategy` for `name` (one of `STRATEGIES`); on the JAX backend a
    `JaxDataParallel` (several devices) or a no-op one-device stand-in.

    `worker_timeout`: seconds a MultiWorkerMirrored worker may be silent before the others
    give up on it (see `lost_worker_error`)."""
    import keras

    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {name!r}.")
    if isinstance(worker_timeout, bool) or not isinstance(worker_timeout, (int, float)):
        raise ValueError(f"`worker_timeout` must be a number of seconds, got {worker_timeout!r}.")
    if not worker_timeout > 0:
        raise ValueError(f"`worker_timeout` must be > 0 seconds, got {worker_timeout!r}.")
    if keras.backend.backend() == "jax":
        return _jax_strategy(name)
    import tensorflow as tf

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
    if name in _CREATED:
        # One instance per process: with TF 2.21 a second MirroredStrategy in one process
        # failed its first evaluation here ("Shape mismatch in the collective instance"),
        # and MultiWorkerMirrored can enable collective ops only once.
        return _CREATED[name]
    if name == "mirrored":
        # every local GPU, or every logical CPU device when there is no GPU (tests split the
        # CPU with `tf.config.set_logical_device_configuration`)
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return _CREATED.setdefault(name, tf.distribute.MirroredStrategy(devices))
    if name == "multiworker":
        if _cluster_size(_tf_config()) < 1:
            raise ValueError("--strategy multiworker needs TF_CONFIG naming the cluster.")
        _configure_heartbeat(worker_timeout)
        return _CREATED.setdefault(name, tf.distribute.MultiWorkerMirroredStrategy())
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


def _lost_tasks(message):
    """The task names TensorFlow's abort message blames. Which message comes first is a race
    between the coordination service's heartbeat check, which lists the unhealthy tasks one a
    line after "unhealthy", and the collective's own gRPC call to the dead peer, which fails
    with "... from remote target TASK while calling ..."; other aborts say "reported from
    TASK"."""
    tail = message.split("unhealthy", 1)[1] if "unhealthy" in message else ""
    for tasks in (
        re.findall(r"^\s*(/job:\w+/replica:\d+/task:\d+)\s*$", tail, flags=re.M),
        re.findall(r"from remote target (/job:\w+/replica:\d+/task:\d+) while", message),
        re.findall(r"reported from (/job:\w+/task:\d+)", message),
    ):
        if tasks:
            return sorted(set(tasks))
    return []


def lost_worker_error(err, worker_timeout, backup_dir):
    """A `RuntimeError` for a worker lost under MultiWorkerMirrored (`err`: the
    `UnavailableError` the aborted collectives raised), naming the task and how to resume."""
    tasks = _lost_tasks(str(err))
    who = ", ".join(tasks) if tasks else "another worker"
    return RuntimeError(
        f"Lost {who}: it stopped (crashed, killed, preempted) or sent no heartbeat for "
        f"{worker_timeout:g} s (--worker-timeout), so this worker's collectives were aborted. "
        f"Restart every worker with the same command to resume from the last finished epoch "
        f"(backup in {backup_dir!r}, which every worker must be able to read)."
    )


def agree_on_epoch(strat, epoch, backup_dir):
    """Under MultiWorkerMirrored, check that every worker found the same backup epoch (they
    would otherwise train different epochs and hang in the first collective). Raises
    `ValueError` naming each worker's epoch."""
    import tensorflow as tf

    if not isinstance(strat, tf.distribute.MultiWorkerMirroredStrategy):
        return
    local = strat.experimental_distribute_values_from_function(
        lambda ctx: tf.constant([int(epoch)], tf.int64)
    )
    epochs = [int(e) for e in strat.gather(local, axis=0).numpy()]
    if len(set(epochs)) > 1:
        per_replica = len(strat.extended.worker_devices)  # replicas on each worker
        found = ", ".join(
            f"task {i // per_replica}: epoch {e}" for i, e in enumerate(epochs[::per_replica])
        )
        raise ValueError(
            f"The workers found different backups in {backup_dir!r} ({found}). Every worker "
            f"must read the same backup: pass a --backup-dir all of them can read (a shared "
            f"disk or a bucket), or delete the backups to start over."
        )
