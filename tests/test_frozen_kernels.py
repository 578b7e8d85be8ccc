"""bfloat16 inference on TensorFlow's oneDNN graph traces the matmul kernels as constants
(keras_vit/models/frozen_kernels.py): the answer equals the live graph's, the traced function
really holds the kernels (not the variables), and a change of the weights by any route gets
a new function, so `predict` always follows the weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from keras_vit.export import serving_function
from keras_vit.layers.trace_context import onednn_cpu
from keras_vit.models.base import freezes_kernels
from keras_vit.models.frozen_kernels import KernelSnapshot, frozen_kernel_variables
from tests.helpers import structured_pixels

NAME, KW = "deit_tiny_distilled_patch16_224", dict(depth=2, image_size=32, num_classes=10)

pytestmark = pytest.mark.skipif(
    not onednn_cpu(), reason="kernels are frozen only on a oneDNN CPU build of TensorFlow"
)


def _model(dtype="bfloat16", seed=0):
    model = keras_vit.create_model(NAME, dtype=dtype, **KW)
    rng = np.random.default_rng(seed)
    for v in model.weights:  # every variable off its init, so each kernel matters
        v.assign((np.asarray(v, np.float32) + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype))
    return model


def _images():
    return structured_pixels(4, 32, 32, seed=3)


def _live_graph(model, x):
    """The same oneDNN graph reading the variables: the reference."""
    return tf.function(lambda t: model(t, training=False))(tf.constant(x)).numpy()


def test_bf16_predict_freezes_kernels_and_equals_the_live_graph():
    model, x = _model(), _images()
    assert freezes_kernels(model)
    out = np.asarray(model.predict_on_batch(x), np.float32)
    assert model._kernel_snapshot is not None
    ref = _live_graph(model, x).astype(np.float32)
    assert np.abs(ref[0] - ref[1]).max() > 0.1  # the model tells the images apart
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-2 * np.abs(ref).max())
    np.testing.assert_allclose(model.predict(x, verbose=0), out, rtol=0, atol=0)


def test_the_traced_function_holds_the_kernels_not_the_variables(monkeypatch):
    model, x = _model(), _images()
    before = np.asarray(model.predict_on_batch(x), np.float32)
    # with the staleness guard off, a changed kernel must not reach the traced function
    monkeypatch.setattr(KernelSnapshot, "stale", lambda self, model: False)
    kernel = frozen_kernel_variables(model)[0]
    kernel.assign(keras.ops.zeros_like(kernel))
    stale = np.asarray(model.predict_on_batch(x), np.float32)
    np.testing.assert_array_equal(stale, before)
    assert np.abs(_live_graph(model, x) - before).max() > 1e-2  # the change does matter
    # and the export traces the same way: no kernel among the captured variables
    fn = tf.function(serving_function(model, freeze_kernels=True))
    captured = {id(v) for v in fn.get_concrete_function(tf.constant(x)).variables}
    kernels = {id(v.value) for v in frozen_kernel_variables(model)}
    assert captured and not captured & kernels


def _kernel_consts(graph_def, shapes):
    """How many `Const` nodes whose shape is one of `shapes` (the frozen kernels') the outer
    graph of `graph_def` holds, and {function name: how many} for its library's functions
    that hold any."""

    def consts(nodes):
        return sum(
            1
            for n in nodes
            if n.op == "Const"
            and tuple(d.size for d in n.attr["value"].tensor.tensor_shape.dim) in shapes
        )

    inner = {f.signature.name: consts(f.node_def) for f in graph_def.library.function}
    return consts(graph_def.node), {k: v for k, v in inner.items() if v}


def test_an_unknown_batch_in_halves_makes_the_kernels_inside_each_branch():
    """The SavedModel's unknown batch runs a `tf.cond` of halves / whole: each branch holds
    its own kernel constants (made outside, they would enter through the branch's Switch
    and oneDNN would run them as variables), and both branches give the frozen answer."""
    model, x = _model(), _images()
    shapes = {tuple(v.shape) for v in frozen_kernel_variables(model)}
    n_kernels = len(frozen_kernel_variables(model))
    fn = tf.function(serving_function(model, freeze_kernels=True, halves=True))
    concrete = fn.get_concrete_function(tf.TensorSpec((None, 32, 32, 3), tf.float32))
    outer, branches = _kernel_consts(concrete.graph.as_graph_def(), shapes)
    assert outer == 0 and len(branches) == 2, (outer, branches)
    assert sorted(branches.values()) == [n_kernels, n_kernels]
    captured = {id(v) for v in concrete.variables}
    assert not captured & {id(v.value) for v in frozen_kernel_variables(model)}
    ref = np.asarray(model.predict_on_batch(x), np.float32)  # traced batch: frozen, in halves
    for batch in (4, 1):  # the halves branch, then the whole one
        out = concrete(tf.constant(x[:batch]))["logits"].numpy()
        np.testing.assert_array_equal(out, ref[:batch])


@pytest.mark.parametrize("first", ["predict_on_batch", "predict"])
@pytest.mark.parametrize("route", ["set_weights", "assign_in_tf_function", "fit"])
def test_predict_follows_changed_weights(route, first):
    model, x = _model(), _images()
    getattr(model, first)(x)  # traced with the first weights
    if route == "set_weights":
        model.set_weights(_model(seed=1).get_weights())
    elif route == "assign_in_tf_function":
        kernel = frozen_kernel_variables(model)[-1]

        @tf.function
        def halve():
            kernel.assign(kernel * 0.5)

        halve()
    else:
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        model.fit(x, np.ones((len(x), 10), np.float32), epochs=1, verbose=0)
    ref = _live_graph(model, x).astype(np.float32)
    calls = {"predict_on_batch": model.predict_on_batch, "predict": model.predict}
    for name in (first, *(n for n in calls if n != first)):  # the tracing route's check first
        out = np.asarray(calls[name](x), np.float32)
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-2 * np.abs(ref).max())


@pytest.mark.parametrize("case", ["float32", "int8", "xla"])
def test_other_paths_read_the_variables(case):
    model = _model("float32" if case != "xla" else "bfloat16")
    if case == "int8":
        model.quantize("int8")
    if case == "xla":
        model.compile(jit_compile=True)
    model.predict_on_batch(_images())
    assert model._kernel_snapshot is None


def test_export_of_a_plain_keras_model_in_bf16_freezes_its_kernels(tmp_path):
    """`export_saved_model` takes any Keras model; a bf16 one (here through the global
    policy) is traced with frozen kernels too, not refused for lacking keras_vit's methods."""
    from keras_vit.export import export_saved_model

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((8, 8, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        model = keras.Model(inputs, keras.layers.Dense(4)(pooled))
    finally:
        keras.config.set_dtype_policy("float32")
    assert freezes_kernels(model)
    export_saved_model(model, str(tmp_path / "plain"), class_names=list("abcd"))
    served = tf.saved_model.load(str(tmp_path / "plain")).signatures["serving_default"]
    x = structured_pixels(2, 8, 8, seed=5)
    np.testing.assert_array_equal(
        served(images=tf.constant(x))["logits"].numpy(), _live_graph(model, x).astype(np.float32)
    )
