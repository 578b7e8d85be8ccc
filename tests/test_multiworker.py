"""Two MultiWorkerMirrored workers on 127.0.0.1 as two machines without a shared disk: each
its own --output (only the chief's is written; the default teacher stays in memory on both),
and a lost worker: SIGKILL worker 1 in epoch 2 of 3, worker 0 stops within a bounded time
with an error naming the lost task, the same two commands again resume from the shared
--backup-dir and end with the weights of an uninterrupted run (max |diff| <= 1e-5); that
run gives both workers one --output (a shared disk), where only the chief writes."""

import json
import signal
import time

import numpy as np
import pytest
from helpers import finish_processes, launch_train_workers, local_workers

TIMEOUT = 420
WORKER_TIMEOUT = 10  # --worker-timeout of the kill test (seconds without a heartbeat)


def _weights(path):
    import keras

    import keras_vit.models  # noqa: F401

    return [v.numpy() for v in keras.saving.load_model(path).weights]


def _one_device_eval(path, batch_size):
    """The validation metrics of a saved student on one device, as `train` evaluates."""
    import keras

    from keras_vit.data import eval_dataset, load_splits
    from keras_vit.training import DeiTDistiller
    from keras_vit.training.train import training_preprocessing

    student = keras.saving.load_model(path)
    distiller = DeiTDistiller(student, None, distillation="none")
    distiller.compile(jit_compile=False)
    data = eval_dataset(load_splits("digits"), training_preprocessing(student), batch_size)
    return distiller.evaluate(data, return_dict=True, verbose=0)


def test_two_workers_with_separate_outputs_and_the_default_teacher(tmp_path):
    args = [
        "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--image-size", "16",
        "--seed", "3", "--strategy", "multiworker",
    ]  # fmt: skip
    outs = [tmp_path / "machine0" / "run", tmp_path / "machine1" / "run"]
    tmps = [tmp_path / "tmp0", tmp_path / "tmp1"]
    for t in tmps:
        t.mkdir()
    workers = local_workers(2)
    procs = launch_train_workers(workers, args, outs, tmps)
    outputs = finish_processes(procs, TIMEOUT)
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    chief = outs[0]
    metrics = json.loads((chief / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["distillation"] == "hard"
    assert metrics["teacher"] == "small_convnet"
    assert (chief / "model.keras").exists() and (chief / "teacher" / "model.keras").exists()
    assert (chief / "backup" / "training_metadata.json").exists()
    # the other machine: nothing in its --output, its temporary files removed
    assert not outs[1].exists()
    assert list(tmps[1].iterdir()) == []
    printed = [json.loads(out[out.index("{") :]) for out, _ in outputs]
    assert printed[0]["val_accuracy"] == pytest.approx(printed[1]["val_accuracy"], abs=1e-6)
    # 359 held out at global batch 64: the last batch (39) splits 20 / 19 over the workers,
    # and every example counts once, as on one device
    alone = _one_device_eval(chief / "model.keras", 64)
    for key in ("accuracy", "loss"):
        assert metrics["val_" + key] == pytest.approx(alone[key], abs=1e-5), key

    # run again: only the chief's disk holds a backup, so the workers would start from
    # different epochs; both stop at once, saying so, instead of training apart
    workers = local_workers(2)
    procs = launch_train_workers(workers, args, outs, tmps)
    for proc, (_, err) in zip(procs, finish_processes(procs, TIMEOUT)):
        assert proc.returncode != 0
        assert "The workers found different backups" in err, err[-3000:]
        assert "task 0: epoch 1, task 1: epoch 0" in err
    assert not outs[1].exists()


KILL_ARGS = [
    "--dataset", "digits", "--distillation", "none", "--epochs", "3", "--batch-size", "64",
    "--image-size", "16", "--seed", "7", "--strategy", "multiworker",
    "--recipe", "drop_path_rate=0.1", "--worker-timeout", str(WORKER_TIMEOUT),
]  # fmt: skip


def _kill_worker_1_in_epoch_2(procs, progress):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and procs[0].poll() is None and procs[1].poll() is None:
        if progress.exists():
            try:
                state = json.loads(progress.read_text())
            except json.JSONDecodeError:
                state = {}
            if state.get("epoch") == 1 and state.get("batch", -1) >= 3:
                procs[1].send_signal(signal.SIGKILL)
                return state, time.time()
        time.sleep(0.02)
    finish_processes(procs, 5)
    raise AssertionError("never saw epoch 2 start")


def test_lost_worker_stops_the_other_and_a_restart_resumes(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    for run in (straight, crashed):
        run.mkdir()

    def args(run):
        return [*KILL_ARGS, "--backup-dir", str(run / "shared_backup")]

    # the uninterrupted run: one --output for both workers (a shared disk), the crashed one
    # an --output per machine; both share a --backup-dir
    outs = {
        straight: [straight / "out", straight / "out"],
        crashed: [crashed / "out0", crashed / "out1"],
    }
    workers = local_workers(2)
    procs = launch_train_workers(workers, args(straight), outs[straight])
    outputs = finish_processes(procs, TIMEOUT)
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    # both printed the same final metrics (one synchronous training); only the chief wrote:
    # one backup, no per-worker copies in the shared --output or the shared --backup-dir
    printed = [json.loads(out[out.index("{") :]) for out, _ in outputs]
    assert printed[0]["train_loss"] == pytest.approx(printed[1]["train_loss"], abs=1e-6)
    assert sorted(p.name for p in (straight / "out").iterdir() if "backup" in p.name) == []
    backup = straight / "shared_backup"
    assert sorted(p.name for p in backup.iterdir()) == [
        "epoch_3.weights.h5",
        "training_metadata.json",
    ]
    meta = json.loads((backup / "training_metadata.json").read_text())
    assert meta == {"epoch": 3, "weights": "epoch_3.weights.h5"}

    workers = local_workers(2)
    procs = launch_train_workers(workers, args(crashed), outs[crashed])
    state, killed_at = _kill_worker_1_in_epoch_2(procs, outs[crashed][0] / "progress.json")
    assert state["epoch"] == 1  # 0-based: inside the second epoch
    try:
        _, err = procs[0].communicate(timeout=WORKER_TIMEOUT + 110)
    finally:
        finish_processes(procs, 5)
    waited = time.time() - killed_at
    print(f"worker 0 stopped {waited:.1f} s after worker 1 was killed")
    assert procs[0].returncode not in (0, None)
    assert "Lost /job:worker/replica:0/task:1" in err, err[-3000:]
    assert "Restart every worker with the same command" in err
    assert waited < WORKER_TIMEOUT + 110
    assert not (outs[crashed][0] / "model.keras").exists()

    procs = launch_train_workers(
        workers, args(crashed), outs[crashed]
    )  # the same two commands again
    for proc, (_, err) in zip(procs, finish_processes(procs, TIMEOUT)):
        assert proc.returncode == 0, err[-3000:]
    resumed = json.loads((outs[crashed][0] / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == 1
    a = _weights(outs[straight][0] / "model.keras")
    b = _weights(outs[crashed][0] / "model.keras")
    assert len(a) == len(b) > 10
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    print(f"2 workers, killed and restarted vs uninterrupted: max |weight diff| = {diff:.3g}")
    assert diff <= 1e-5
    first = json.loads((outs[straight][0] / "metrics.json").read_text())
    assert first["resumed_from_epoch"] == 0 and first["val_accuracy"] > 0.3  # it trained
    assert first["replicas"] == 2
