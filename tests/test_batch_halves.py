"""Inference on TensorFlow's oneDNN graph runs the batch as two halves side by side
(keras_vit/models/batch_halves.py): each half gets its own images in order, a batch of one
runs whole, an unknown batch size chooses at run time, and `predict`, `predict_on_batch`
give what the whole batch gives, in float32 and bfloat16, on a ViT and a MobileViT."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from keras_vit.models.base import halves_batch
from keras_vit.models.batch_halves import inference_parts, run_in_parts
from tests.export_fixtures import assert_discriminative, randomize_keras_model
from tests.helpers import executed_ops, require_onednn_graph, structured_pixels

MODELS = {
    "deit": ("deit_tiny_distilled_patch16_224", dict(depth=2, image_size=32, num_classes=10)),
    "mobilevit": ("mobilevit_xxs", dict(image_size=64, num_classes=10)),
}


def _recording_run(calls):
    """A per-image function of the batch that notes the batch size of each trace."""

    def run(t):
        calls.append(t.shape[0])
        return {"scaled": t * 2.0, "sums": tf.reduce_sum(t, axis=1)}

    return run


def _rows(n):
    return tf.constant(np.arange(n * 3, dtype=np.float32).reshape(n, 3))


@pytest.mark.parametrize("batch,halves", [(7, [4, 3]), (2, [1, 1]), (1, [1])])
def test_a_known_batch_runs_as_halves_in_order(batch, halves):
    calls, x = [], _rows(batch)
    out = tf.function(lambda t: run_in_parts(_recording_run(calls), t))(x)
    assert calls == halves
    np.testing.assert_array_equal(out["scaled"], x.numpy() * 2.0)
    np.testing.assert_array_equal(out["sums"], x.numpy().sum(1))


@pytest.mark.parametrize(
    "batch,parts,sizes",
    [(8, 3, [3, 3, 2]), (8, 4, [2, 2, 2, 2]), (3, 4, [1, 1, 1]), (5, 4, [2, 2, 1])],
)
def test_a_known_batch_runs_in_parts_in_order(batch, parts, sizes):
    calls, x = [], _rows(batch)
    out = tf.function(lambda t: run_in_parts(_recording_run(calls), t, parts))(x)
    assert calls == sizes
    np.testing.assert_array_equal(out["scaled"], x.numpy() * 2.0)
    np.testing.assert_array_equal(out["sums"], x.numpy().sum(1))


@pytest.mark.parametrize(
    "env,parts",
    [
        ({}, 2),  # TensorFlow's default pools: two halves
        ({"TF_NUM_INTRAOP_THREADS": "2"}, 2),
        ({"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "6"}, 6),
        ({"TF_NUM_INTRAOP_THREADS": "1"}, None),  # one part per core
    ],
)
def test_one_intra_op_thread_gives_one_part_per_inter_op_thread(monkeypatch, env, parts):
    import os

    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    # this process's pools are TensorFlow's defaults (the Python setting would win over both)
    assert tf.config.threading.get_intra_op_parallelism_threads() == 0
    expected = parts or max(2, len(os.sched_getaffinity(0)))
    assert inference_parts() == expected


def test_an_unknown_batch_chooses_at_run_time_each_branch_in_its_scope():
    import contextlib

    calls, scopes = [], []

    @contextlib.contextmanager
    def branch_scope():  # what the frozen kernels' scope is to each branch
        scopes.append(len(calls))
        yield

    fn = tf.function(
        lambda t: run_in_parts(_recording_run(calls), t, branch_scope=branch_scope),
        input_signature=[tf.TensorSpec((None, 3), tf.float32)],
    )
    for batch in (1, 2, 5):  # one trace serves every size, a batch of one included
        x = _rows(batch)
        np.testing.assert_array_equal(fn(x)["scaled"], x.numpy() * 2.0)
    # halves (two traces of `run`) and the whole batch inside the tf.cond, each branch
    # entering its own scope before it traces `run`
    assert calls == [None, None, None] and scopes == [0, 2]


def _tagged_runs(calls):
    """`run` and `run_small`: recording runs that note ("run" | "small", batch size)."""

    def tagged(tag):
        record = []
        run = _recording_run(record)

        def wrapped(t):
            out = run(t)
            calls.append((tag, record[-1]))
            return out

        return wrapped

    return tagged("run"), tagged("small")


@pytest.mark.parametrize(
    "batch,parts,expected",
    [
        (8, 2, [("run", 4), ("run", 4)]),
        (4, 2, [("small", 2), ("small", 2)]),
        (5, 2, [("run", 3), ("small", 2)]),
        (1, 2, [("small", 1)]),
        (8, 4, [("small", 2)] * 4),
    ],
)
def test_parts_of_up_to_two_images_take_the_small_run(batch, parts, expected):
    calls, x = [], _rows(batch)
    run, run_small = _tagged_runs(calls)
    out = tf.function(lambda t: run_in_parts(run, t, parts, run_small=run_small))(x)
    assert calls == expected
    np.testing.assert_array_equal(out["scaled"], x.numpy() * 2.0)


def test_an_unknown_batch_takes_the_small_run_for_a_batch_of_one_only():
    calls = []
    run, run_small = _tagged_runs(calls)
    fn = tf.function(
        lambda t: run_in_parts(run, t, run_small=run_small),
        input_signature=[tf.TensorSpec((None, 3), tf.float32)],
    )
    for batch in (1, 4):
        x = _rows(batch)
        np.testing.assert_array_equal(fn(x)["sums"], x.numpy().sum(1))
    # traced once: the halves branch's two parts of unknown size, the whole branch's one
    assert calls == [("run", None), ("run", None), ("small", None)]


def _pair(family, dtype):
    """The same random model twice: with the halves (the default) and without."""
    require_onednn_graph()
    name, kwargs = MODELS[family]
    models = []
    for halves in (True, False):
        model = keras_vit.create_model(name, dtype=dtype, **kwargs)
        randomize_keras_model(model, seed=5)
        model.inference_batch_halves = halves
        models.append(model)
    return models


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", list(MODELS))
def test_predict_in_halves_gives_the_whole_batch_answer(family, dtype):
    halved, whole = _pair(family, dtype)
    size = MODELS[family][1]["image_size"]
    x = structured_pixels(7, size, size, seed=2)
    # float32: the same kernels on fewer rows; bf16: oneDNN may block the rows differently
    tol = 1e-5 if dtype == "float32" else 2e-2
    for batch in (7, 1, 2, 7):  # traced batches, then a relaxed (unknown batch) trace
        ref = np.asarray(whole.predict_on_batch(x[:batch]), np.float32)
        out = np.asarray(halved.predict_on_batch(x[:batch]), np.float32)
        np.testing.assert_allclose(out, ref, rtol=0, atol=tol * np.abs(ref).max())
    assert halved._predict_halves and not whole._predict_halves
    assert_discriminative(ref)  # images told apart: a swapped half would show
    out = np.asarray(halved.predict(x, batch_size=3, verbose=0), np.float32)  # 3, 3, 1
    ref = np.asarray(whole.predict(x, batch_size=3, verbose=0), np.float32)
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol * np.abs(ref).max())


def _spy_on_run_in_parts(monkeypatch, note):
    """A list that gets `note(run, parts)` for each call of `run_in_parts` from
    `run_traced_inference` (which then goes on as before)."""
    from keras_vit.models import batch_halves

    notes, run_in_parts = [], batch_halves.run_in_parts

    def recording(run, x, parts=2, **kwargs):
        notes.append(note(run, parts))
        return run_in_parts(run, x, parts, **kwargs)

    monkeypatch.setattr(batch_halves, "run_in_parts", recording)
    return notes


def test_predict_with_one_intra_op_thread_runs_one_part_per_inter_op_thread(monkeypatch):
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")  # read as predict traces
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "3")
    counts = _spy_on_run_in_parts(monkeypatch, lambda run, parts: parts)
    parts, whole = _pair("deit", "float32")
    x = structured_pixels(7, 32, 32, seed=2)
    ref = np.asarray(whole.predict_on_batch(x), np.float32)
    out = np.asarray(parts.predict_on_batch(x), np.float32)  # 3 + 3 + 1
    assert counts == [3]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert_discriminative(ref)


@pytest.mark.parametrize("case", ["opted_out", "strategy"])
def test_other_paths_keep_the_whole_batch(case):
    require_onednn_graph()
    name, kwargs = MODELS["deit"]
    if case == "strategy":
        with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
            model = keras_vit.create_model(name, **kwargs)
        assert not halves_batch(model)
        return
    model = keras_vit.create_model(name, **kwargs)
    assert halves_batch(model)
    model.inference_batch_halves = False
    model.predict_on_batch(structured_pixels(4, 32, 32, seed=1))
    assert not model._predict_halves and not model._predict_part_jit


@pytest.mark.parametrize("case", ["int8", "xla"])
def test_under_xla_each_half_is_its_own_program(case, monkeypatch):
    """int8 and an explicit `jit_compile=True` run under XLA: in halves, each half compiled
    on its own (two programs side by side), with the answer of one whole-batch program."""
    require_onednn_graph()
    # each part's `run`: a tf.function compiled with XLA
    jits = _spy_on_run_in_parts(monkeypatch, lambda run, parts: getattr(run, "_jit_compile", None))
    halved, _ = _pair("deit", "float32")
    if case == "int8":
        halved.quantize("int8")
    else:
        halved.compile(jit_compile=True)
    assert halved.predict_jit_compile
    x = structured_pixels(7, 32, 32, seed=2)
    out = np.asarray(halved.predict_on_batch(x), np.float32)
    assert halved._predict_halves and halved._predict_part_jit and jits == [True]
    whole = tf.function(lambda t: halved(t, training=False), jit_compile=True)
    ref = whole(tf.constant(x)).numpy()
    # int8: each half's XLA program may round its dynamic activation scales differently
    tol = 2e-3 if case == "int8" else 1e-5
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol * np.abs(ref).max())
    assert_discriminative(ref)


@pytest.mark.parametrize("family", list(MODELS))
def test_float32_small_parts_run_as_xla_programs(family, tmp_path):
    """Float32 on the graph: a batch of up to four (parts of one or two images) runs each
    part as its own XLA program, a batch of eight its halves on the graph, each half's
    layers from `xla_tail_from` on (MobileViT) as an XLA program; the answers are the
    graph's. bf16, and an explicit `jit_compile=False`, keep every part on the graph."""
    model, _ = _pair(family, "float32")
    assert (model.xla_tail_from is not None) == (family == "mobilevit")
    size = MODELS[family][1]["image_size"]
    x = structured_pixels(8, size, size, seed=2)
    ref = tf.function(lambda t: model(t, training=False))(tf.constant(x)).numpy()  # graph
    assert_discriminative(ref)
    step = tf.function(model.predict_step)  # what predict and predict_on_batch trace
    tails = 2 if model.xla_tail_from else 0  # one per half
    for batch, programs in ((8, tails), (4, 2), (1, 1)):
        _assert_graph_answer_in_programs(model, step, x[:batch], ref, programs, tmp_path)
    assert model._predict_small_jit

    bf16, _ = _pair(family, "bfloat16")
    explicit, _ = _pair(family, "float32")
    explicit.compile(jit_compile=False)
    for other in (bf16, explicit):
        other.predict_on_batch(x[:1])
        assert not other._predict_small_jit
        for batch in (1, 8):
            step = tf.function(other.predict_step)
            ops = executed_ops(step, tf.constant(x[:batch]), tmp_path / f"o{batch}")
            assert "ExecuteAsyncOnStream" not in ops, (batch, sorted(set(ops)))


def _assert_graph_answer_in_programs(model, step, x, ref, programs, logdir):
    """`predict_on_batch(x)` gives the graph's answer `ref` (for the first len(x) images), and
    one call of `step` (its traced predict_step) runs `programs` XLA programs."""
    out = np.asarray(model.predict_on_batch(x), np.float32)
    np.testing.assert_allclose(out, ref[: len(x)], rtol=0, atol=1e-5 * np.abs(ref).max())
    ops = executed_ops(step, tf.constant(x), logdir / str(len(x)))
    # each XLA program run shows as one PjRt ExecuteAsyncOnStream in the trace
    assert ops.count("ExecuteAsyncOnStream") == programs, (len(x), sorted(set(ops)))


def test_a_model_of_another_backend_is_never_halved(monkeypatch):
    model = keras.Sequential([keras.layers.Dense(2)])
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert not halves_batch(model)


def test_xla_tail_needs_its_layer(tmp_path):
    """A model without the layer `xla_tail_from` names (a custom MobileViT v2 with no block at
    stride 8) runs its batch of eight wholly on the graph, with the graph's answer."""
    model, _ = _pair("mobilevit", "float32")
    model.xla_tail_from = "no_such_layer"
    size = MODELS["mobilevit"][1]["image_size"]
    x = structured_pixels(8, size, size, seed=2)
    ref = tf.function(lambda t: model(t, training=False))(tf.constant(x)).numpy()
    step = tf.function(model.predict_step)
    _assert_graph_answer_in_programs(model, step, x, ref, 0, tmp_path)
