"""Strategies: the `auto` choice and the chief rule; Mirrored over two logical CPU devices
equals one device for the same global batch; two MultiWorkerMirrored workers on 127.0.0.1
both finish and only the chief writes."""

import json
import subprocess
import sys

import pytest
from helpers import finish_processes, launch_train_workers, local_workers, subprocess_env

from keras_vit.training import strategy as S

TIMEOUT = 300
SMALL = [
    "--dataset", "digits", "--distillation", "none", "--epochs", "1", "--batch-size", "64",
    "--image-size", "16", "--seed", "3",
]  # fmt: skip


def _env(**extra):
    return subprocess_env(CUDA_VISIBLE_DEVICES="", **extra)


def test_auto_picks_multiworker_only_for_a_cluster(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert S._cluster_size(S._tf_config()) == 0
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    )
    assert S._cluster_size(S._tf_config()) == 2
    assert S.task_id() == ("worker", 1) and not S.is_chief()
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    )
    assert S.is_chief()  # worker 0 writes when the cluster has no chief
    with_chief = {"chief": ["127.0.0.1:3"], **cluster}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})
    )
    assert not S.is_chief()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        S._tf_config()


# what TF 2.21 raised in worker 0 when worker 1 was SIGKILLed (coordination service heartbeat)
_ABORT = """{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_device_/job:worker/\
replica:0/task:0/device:CPU:0}} Collective ops is aborted by: Error reported from \
/job:worker/task:1: The following tasks are unhealthy (stopped sending heartbeats):
/job:worker/replica:0/task:1
The tasks have crashed. Check the task logs for an earlier error."""
# what it raised instead when the collective's gRPC call to the killed worker failed first
_RESET = """Collective ops is aborted by: recvmsg:Connection reset by peer
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while \
calling /tensorflow.WorkerService/RecvBuf:
:UNKNOWN:Error received from peer  {grpc_message:"recvmsg:Connection reset by peer", \
grpc_status:14}"""


def test_lost_worker_error_names_the_lost_task_and_how_to_resume():
    err = S.lost_worker_error(RuntimeError(_ABORT), 10, "gs://b/run")
    assert isinstance(err, RuntimeError)
    text = str(err)
    assert text.startswith("Lost /job:worker/replica:0/task:1:")  # not task 0, the reporter
    assert "10 s (--worker-timeout)" in text and "'gs://b/run'" in text
    assert "Restart every worker with the same command" in text
    reset = S.lost_worker_error(RuntimeError(_RESET), 10, "d")
    assert str(reset).startswith("Lost /job:worker/replica:0/task:1:")
    other = S.lost_worker_error(RuntimeError("Error reported from /job:worker/task:2: x"), 60, "d")
    assert str(other).startswith("Lost /job:worker/task:2:")
    assert str(S.lost_worker_error(RuntimeError("?"), 60, "d")).startswith("Lost another worker")


def test_worker_timeout_is_validated():
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError, match="worker_timeout"):
            S.get_strategy("one", worker_timeout=bad)


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="'gpu4'"):
        S.get_strategy("gpu4")


_MIRRORED = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, keras_vit
out = {}
for name in ("one", "mirrored"):
    m = keras_vit.train(dataset="digits", output=sys.argv[1] + "/" + name, distillation="none",
                        epochs=1, batch_size=64, image_size=16, seed=3, strategy=name, verbose=0,
                        jit_compile=False)  # (XLA is off on logical CPUs; compare like with like)
    w = keras.saving.load_model(sys.argv[1] + "/" + name + "/model.keras").weights
    out[name] = dict(loss=m["train_loss"], replicas=m["replicas"], val=m["val_loss"],
                     weights=[v.numpy().tolist() for v in w])
a, b = out["one"], out["mirrored"]
diff = max(float(np.max(np.abs(np.array(x) - np.array(y)))) for x, y in zip(a["weights"], b["weights"]))
print(json.dumps(dict(loss=[a["loss"], b["loss"]], val=[a["val"], b["val"]],
                      replicas=[a["replicas"], b["replicas"]], weight_diff=diff)))
"""


def test_mirrored_two_cpus_equals_one_device(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED, str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["replicas"] == [1, 2]
    assert result["loss"][0] == pytest.approx(result["loss"][1], abs=1e-5)
    # after 22 Adam steps: only the order of the gradient sum differs (two halves all-reduced)
    assert result["weight_diff"] <= 1e-4


# In CI, test_multiworker.py's uninterrupted run checks all of this (one shared --output, both
# workers' printed loss, the chief's single backup) beside its kill and restart; this short
# run stays for `make parity`.
@pytest.mark.slow
def test_two_workers_on_localhost_finish_and_chief_writes(tmp_path):
    args = [*SMALL, "--strategy", "multiworker"]
    procs = launch_train_workers(local_workers(2), args, [tmp_path, tmp_path])  # one disk
    outputs = finish_processes(procs, TIMEOUT)
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    assert (tmp_path / "model.keras").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["val_accuracy"] > 0
    # both printed the same final metrics (one synchronous training), only the chief wrote
    printed = [json.loads(out[out.index("{") :]) for out, _ in outputs]
    assert printed[0]["train_loss"] == pytest.approx(printed[1]["train_loss"], abs=1e-6)
    # one backup, written by the chief, read by both (no per-worker copies)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("backup")) == ["backup"]
    meta = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert meta == {"epoch": 1, "weights": "epoch_1.weights.h5"}
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
        "epoch_1.weights.h5",
        "training_metadata.json",
    ]
