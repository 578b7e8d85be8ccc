"""What every keras_vit model shares beyond `keras.Model`: the compile path chosen by device
and dtype, the training contract (weight-decay exclusions, block index of every variable, the
classifier heads) that optimisers, recipes and the distiller ask instead of matching
variable names."""

from typing import NamedTuple

import keras

from keras_vit._keras_compat import flatten_layers, model_supports_jit
from keras_vit.models._collector import frozen_gc
from keras_vit.models.batch_halves import run_traced_inference
from keras_vit.models.frozen_kernels import KernelSnapshot


class Views:
    """Holds symbolic tensors of a model's graph out of Keras's attribute tracking, for the
    views (`intermediate_model`, `heads_model`, `feature_model`) built over the same layers."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)


class XLAByDefault:
    """Mixin: `jit_compile="auto"` (the default of `compile`, and of an uncompiled model's
    `predict`) picks the compile path per backend, device and dtype, as measured
    (examples/benchmark_cpu.py):

    - float32 and int8 (`model.quantize("int8")`) on TensorFlow: XLA, CPU included. Keras's
      own "auto" turns XLA off on CPU-only TensorFlow; these models compile cleanly there,
      train faster with it (DeiT-S: 1.45x), and int8 runs seven times faster (TF's graph
      runs the int8 matmuls without oneDNN). A family that measured faster on
      TensorFlow's graph in float32 on a CPU names in `float32_cpu_graph` the functions
      that take it instead: "predict" (`predict`, `predict_on_batch`, the SavedModel: ViT,
      whose training stays faster under XLA) or also "fit" (training and `evaluate`:
      MobileViT). `predict_jit_compile` is the choice `predict` makes.
    - a bfloat16 compute dtype (`dtype="bfloat16"`, `"mixed_bfloat16"`, or
      `keras.config.set_dtype_policy`) on a TensorFlow CPU: TensorFlow's graph, where
      oneDNN runs the matmuls on the CPU's bf16 units (AMX, AVX512-BF16) with bias and GELU
      fused; XLA on CPU runs bf16 at below its float32 speed.
    - JAX: XLA always. Under a `tf.distribute` strategy "auto" stays Keras's (off): XLA with
      MirroredStrategy fails on logical CPU replicas, and TPUStrategy compiles through XLA
      anyway. An explicit `jit_compile=` always wins; the torch backend keeps eager.
    """

    float32_cpu_graph = ()  # "predict", "fit": float32 on a TF CPU on TF's graph, not XLA
    # The layer from which on float32 inference on TF's graph (where "auto" chose the graph)
    # runs as an XLA program of its own, for a family measured faster so (MobileViT):
    # `KerasViTModel.call`. None: the whole model on the graph.
    xla_tail_from = None

    _jit_auto = True  # `jit_compile` is "auto"'s choice (uncompiled, or compiled with "auto")

    def _resolve_auto_jit_compile(self):  # Keras's hook behind jit_compile="auto"
        return self._auto_jit_compile("fit")

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`; notes whether `jit_compile` was left "auto", so `predict`
        can make "auto"'s inference choice (`predict_jit_compile`)."""
        jit = args[7] if len(args) > 7 else kwargs.get("jit_compile", "auto")
        self._jit_auto = isinstance(jit, str) and jit == "auto"
        return super().compile(*args, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()  # Keras records the value "auto" resolved to
        if config and "jit_compile" in config and self._jit_auto:
            config["jit_compile"] = "auto"  # so a reloaded model chooses again, per function
        return config

    def compile_from_config(self, config):
        """Keras's (restores a `.keras` file's compile), which skips any model whose `compile`
        is overridden; ours only notes "auto"."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if hasattr(self, "optimizer") and self.built:
            self.optimizer.build(self.trainable_variables)  # the optimizer's variables

    @property
    def predict_jit_compile(self):
        """Whether `predict` / `predict_on_batch` (and `export_saved_model`) run under XLA:
        `jit_compile` when it was given explicitly, else "auto"'s choice for inference."""
        return self._auto_jit_compile("predict") if self._jit_auto else self.jit_compile

    # the kernels the predict function was traced with as constants (frozen_kernels.py),
    # or None where `predict` reads the variables
    _kernel_snapshot = None
    # whether the predict function runs the batch as two halves side by side (batch_halves.py)
    _predict_halves = False
    # whether each of those parts runs as its own XLA program (predict under XLA)
    _predict_part_jit = False
    # whether parts of up to two images (batch_halves.SMALL_PART_IMAGES) run as XLA programs
    _predict_small_jit = False

    def make_predict_function(self, force=False):
        if self.predict_function is not None and not force:
            return self.predict_function  # Keras asks on every predict call: no re-deciding
        jit, path = self.jit_compile, inference_path(self)
        predict_jit = path.jit_compile
        self._kernel_snapshot = KernelSnapshot(self) if path.freeze_kernels else None
        self._predict_halves = path.halves
        # under XLA with parts: each part is an XLA program of its own (batch_halves.py), so
        # the function around them is a plain graph that runs them side by side
        self._predict_part_jit = predict_jit and self._predict_halves
        self._predict_small_jit = path.small_parts_jit
        outer_jit = predict_jit and not self._predict_halves
        if outer_jit == jit:
            return super().make_predict_function(force)
        self._jit_compile = outer_jit  # what Keras reads as it builds the predict function
        try:
            return super().make_predict_function(force)
        finally:
            self._jit_compile = jit

    def predict_step(self, *args, **kwargs):  # TF and torch: (data); JAX: (state, data)
        snapshot = self._kernel_snapshot  # both only ever set on TensorFlow
        if snapshot is None and not (self._predict_halves or self._predict_small_jit):
            return super().predict_step(*args, **kwargs)
        import tensorflow as tf

        if tf.executing_eagerly():  # run_eagerly: no graph to trace constants into
            return super().predict_step(*args, **kwargs)
        x, _, _ = keras.utils.unpack_x_y_sample_weight(args[0])
        return run_traced_inference(
            super().predict_step,
            x,
            snapshot,
            self._predict_halves,
            self._predict_part_jit,
            self._predict_small_jit,
        )

    def _drop_stale_predict_function(self):
        """Before `predict`: a predict function traced with frozen kernels is dropped (and
        traced again) once any kernel has changed since."""
        snapshot = self._kernel_snapshot
        if snapshot is not None and self.predict_function is not None and snapshot.stale(self):
            self._drop_predict_function()

    def _drop_predict_function(self):
        self.predict_function = None
        self._kernel_snapshot = None
        self._predict_halves = self._predict_part_jit = self._predict_small_jit = False

    def _auto_jit_compile(self, function):
        """ "auto"'s choice for `function`: "fit" (training, evaluate) or "predict"."""
        backend = keras.backend.backend()
        if backend == "jax":
            return model_supports_jit(self)
        if backend == "tensorflow":
            if not _distributed(self):
                bf16 = self.dtype_policy.compute_dtype == "bfloat16"
                if (bf16 and not _has_accelerator()) or self._float32_cpu_graph(function):
                    return False
                return model_supports_jit(self)
        return super()._resolve_auto_jit_compile()

    def _float32_cpu_graph(self, function):
        """Whether "auto" runs `function` on TensorFlow's graph as a float32 model on a CPU
        (`float32_cpu_graph`): TensorFlow, no tf.distribute strategy, no GPU or TPU, a float32
        compute dtype, not int8-quantized."""
        return (
            keras.backend.backend() == "tensorflow"
            and function in self.float32_cpu_graph
            and self.dtype_policy.compute_dtype == "float32"
            and not _quantized(self)
            and not _distributed(self)
            and not _has_accelerator()
        )

    def _reresolve_auto_jit_compile(self):
        """After `quantize` of an uncompiled model: "auto" chooses again for the new dtype
        (Keras would keep the float32 choice). A compiled model keeps its compile's path for
        training; `compile()` again to re-choose."""
        if not self.compiled:
            self._jit_compile = None  # `jit_compile` resolves it on next use


def _quantized(model):
    return any(getattr(layer, "quantization_mode", None) for layer in flatten_layers(model))


def freezes_kernels(model):
    """Whether TF-graph inference (`predict`, the SavedModel) of `model` takes its matmul
    kernels as constants (keras_vit/models/frozen_kernels.py): TensorFlow on a oneDNN CPU,
    a compute dtype measured faster that way, float kernels (not int8), no tf.distribute
    strategy (whose replicas each read their own copy of the variables)."""
    if keras.backend.backend() != "tensorflow" or _quantized(model):
        return False
    if model.dtype_policy.compute_dtype not in FROZEN_KERNEL_DTYPES:
        return False
    from keras_vit.layers.trace_context import onednn_cpu

    return not _distributed(model) and onednn_cpu()


def halves_batch(model):
    """Whether TF-graph inference (`predict`, `predict_on_batch`, the SavedModel) of `model`
    runs its batch as two halves side by side (keras_vit/models/batch_halves.py): TensorFlow
    on a oneDNN CPU, no tf.distribute strategy (whose replicas already split the batch),
    unless the model says otherwise (`model.inference_batch_halves = False`)."""
    if keras.backend.backend() != "tensorflow" or not getattr(
        model, "inference_batch_halves", True
    ):
        return False
    from keras_vit.layers.trace_context import onednn_cpu

    return not _distributed(model) and onednn_cpu()


def small_parts_xla(model):
    """Whether TF-graph inference of `model` runs a small part (a batch or part of up to two
    images) as an XLA program (keras_vit/models/batch_halves.py: `run_traced_inference`):
    float32 inference that "auto" put on TensorFlow's graph on a CPU (`float32_cpu_graph`:
    ViT, MobileViT), no tf.distribute strategy, a model XLA can compile. An explicit
    `jit_compile=False` keeps every batch on the graph; bfloat16 stays on the graph (XLA on a
    CPU runs it below its float32 speed)."""
    if not (isinstance(model, XLAByDefault) and model._jit_auto):
        return False
    return model._float32_cpu_graph("predict") and model_supports_jit(model)


class InferencePath(NamedTuple):
    """How TF-graph inference of a model runs (`serving_function`'s keywords, keras_vit/
    export.py): `predict` and `export_saved_model` both take it from `inference_path`."""

    jit_compile: bool  # the model under XLA (float32 and int8 where "auto" chose XLA)
    freeze_kernels: bool  # matmul kernels as graph constants (frozen_kernels.py)
    halves: bool  # the batch in side-by-side parts (batch_halves.py)
    small_parts_jit: bool  # on the graph, parts of up to two images as XLA programs


def inference_path(model):
    """The `InferencePath` of `model` (any Keras model: one without keras_vit's compile
    choice gets its `jit_compile`)."""
    jit = bool(getattr(model, "predict_jit_compile", getattr(model, "jit_compile", False)))
    return InferencePath(
        jit_compile=jit,
        freeze_kernels=not jit and freezes_kernels(model),
        halves=halves_batch(model),
        small_parts_jit=not jit and small_parts_xla(model),
    )


def _distributed(model):
    """True inside a `tf.distribute` strategy scope or for a model (any `keras.Model`)
    created under one."""
    import tensorflow as tf

    return (
        tf.distribute.has_strategy()
        or model.distribute_strategy is not tf.distribute.get_strategy()
    )


# compute dtypes whose inference on TF's oneDNN graph freezes the kernels (measured faster)
FROZEN_KERNEL_DTYPES = ("bfloat16",)


def _has_accelerator():
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


class KerasViTModel(XLAByDefault, keras.Model):
    """Base of every family: the training contract, as timm's models own theirs.

    - `no_weight_decay()`: the variables AdamW leaves undecayed (timm's `no_weight_decay()`
      names plus every 1-D parameter: biases, norms, layer scales).
    - `block_ids()`: the block index of every variable for layer-wise lr decay (timm's
      `group_matcher` as `param_groups_layer_decay` numbers it): 0 the stem, 1..n the blocks
      (a final norm with the last one), n + 1 the head; `num_block_ids` is n + 2.
    - `classifier_heads()`: a view returning a dict of the classifier outputs, `logits` (what
      the model returns) and, for a distilled DeiT, `cls_logits` and `dist_logits`.
    """

    # layers whose variables get no weight decay whatever their rank (timm's no_weight_decay)
    no_weight_decay_layers = ()
    # the checkpoint config (keras_vit.pretrained.PretrainedCfg) `create_model` built this
    # from: the eval transform, labels and export defaults read it; None for a bare model
    pretrained_cfg = None

    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        # A functional model ignores `dtype` (its layers get it from the family's builder):
        # keep it, so that `get_config` saves it and the compile path sees a bf16 model.
        if dtype is not None:
            self.dtype_policy = dtype

    # --- input validation ---
    # A functional model only warns on a mismatched shape, and a grayscale batch broadcasts
    # over the RGB normalisation. `call` checks what `model(x)` and every trace see; `predict`
    # and `predict_on_batch` check the data first, because their tf.function may retrace
    # with a relaxed (unknown) shape where nothing can be checked any more.
    def call(self, inputs, training=None, mask=None, **kwargs):
        self.check_input_shape(inputs)
        if not training and self._runs_xla_tail():
            early, tail = self._xla_tail_parts()
            return tail(early(inputs, training=False))
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def _runs_xla_tail(self):
        """Whether this call, traced for TF-graph inference that runs small parts under XLA
        (`trace_context.xla_tail()`, set by `run_traced_inference`: float32 on a CPU where
        "auto" chose the graph), runs the layers from `xla_tail_from` on as an XLA program:
        on oneDNN's graph (not inside XLA already), a model of one output that has the
        layer (a custom MobileViT v2 may have no block at stride 8)."""
        from keras_vit.layers.trace_context import onednn_graph, tracing_xla_tail

        return (
            self.xla_tail_from is not None
            and tracing_xla_tail()
            and onednn_graph()
            and len(self.outputs) == 1
            and any(layer.name == self.xla_tail_from for layer in self.layers)
        )

    def _xla_tail_parts(self):
        """(the model up to `xla_tail_from`, a function running the rest as an XLA program):
        two functional views over the same layers, made once per `xla_tail_from`."""
        parts = getattr(self, "_xla_tail", None)
        if parts is None or parts.cut_at != self.xla_tail_from:
            import tensorflow as tf

            cut = self.get_layer(self.xla_tail_from).input
            early = keras.Model(self.inputs, cut, name=f"{self.name}_early")
            tail = keras.Model(cut, self.outputs, name=f"{self.name}_tail")
            run_tail = tf.function(lambda t: tail(t, training=False), jit_compile=True)
            parts = Views(cut_at=self.xla_tail_from, early=early, run_tail=run_tail)
            self._xla_tail = parts
        return parts.early, parts.run_tail

    def predict(self, x, *args, **kwargs):
        self.check_input_shape(x)
        self._drop_stale_predict_function()
        return super().predict(x, *args, **kwargs)

    def predict_on_batch(self, x):
        self.check_input_shape(x)
        snapshot = self._kernel_snapshot
        if snapshot is None or self.predict_function is None:
            return super().predict_on_batch(x)  # (a new function takes a new snapshot)
        # The kernels' check (memory-bound) runs beside the batch (the matmuls are
        # compute-bound), which hides about half of it; a changed kernel discards the answer.
        stale = snapshot.stale_beside(self)
        outputs = super().predict_on_batch(x)
        if stale.result():
            self._drop_predict_function()
            outputs = super().predict_on_batch(x)
        return outputs

    def check_input_shape(self, images):
        """Raise `ValueError` naming the expected and the given shape when `images` (NHWC:
        an array, a tensor, or a `tf.data.Dataset` of them) do not fit the model's input:
        rank, size (the model is built for one) or channels. An unknown shape passes."""
        spec = getattr(images, "element_spec", None)  # a dataset: (images, ...) or images
        if spec is not None:
            images = spec[0] if isinstance(spec, (tuple, list)) else spec
        try:
            given = tuple(images.shape)
        except (AttributeError, TypeError, ValueError):  # unknown rank, or not an array
            return
        expected = tuple(self.inputs[0].shape)  # (None, H, W, C)
        ok = len(given) == len(expected) and all(
            e is None or g is None or int(g) == e for e, g in zip(expected[1:], given[1:])
        )
        if not ok:
            shown = tuple(None if g is None else int(g) for g in given)
            hint = ""
            if len(given) == 4 and given[-1] is not None and int(given[-1]) != expected[-1]:
                hint = f" (images need {expected[-1]} channels, NHWC)"
            elif len(given) == 4:
                hint = f" (the model is built for {expected[1]}x{expected[2]} images; "
                hint += "create it with image_size=... for another size)"
            raise ValueError(
                f"{self.name} expects images of shape (batch, height, width, channels) = "
                f"{expected}, got {shown}{hint}."
            )

    # --- serialisation ---
    def constructor_config(self):
        """The constructor arguments that rebuild this model (each family's)."""
        raise NotImplementedError

    def get_config(self):
        config = self.constructor_config()
        mode = getattr(self, "_quantization_mode", None)
        if mode is not None:  # rebuilt, then quantized, before Keras loads the weights
            config["quantization_mode"] = mode
        if self.pretrained_cfg is not None:
            # by name: a `.keras` file keeps the checkpoint's crop, interpolation, mean/std and
            # labels (without them a reloaded model's `predict`/`validate` would silently fall
            # back to timm's defaults), and the registry supplies the rest when it loads
            config["pretrained_cfg"] = self.pretrained_cfg.name
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        mode = config.pop("quantization_mode", None)
        cfg_name = config.pop("pretrained_cfg", None)
        # resolved first: an unregistered checkpoint name fails before anything is built
        pretrained_cfg = None if cfg_name is None else _registered_cfg(cfg_name)
        model = cls(**config)
        if mode is not None:
            model.quantize(mode)
        model.pretrained_cfg = pretrained_cfg
        return model

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Keras's `Model.quantize`; the mode is remembered so that a `.keras` file of the
        quantized model loads (rebuilt, quantized with the mode's default config, then its
        int8 kernels and scales loaded). A selective one (`filters=`) is not recorded.
        Keras's garbage collection per rebuilt layer scans only new objects (_collector.py)."""
        with frozen_gc():
            super().quantize(mode, config=config, filters=filters, **kwargs)
        self._reresolve_auto_jit_compile()
        if filters is None:
            # Keras's wrapper resolves `mode` from `config` before calling this
            self._quantization_mode = mode if mode is not None else config.mode

    def no_weight_decay(self):
        """The trainable variables to exclude from weight decay (a list, model order)."""
        excluded = set()
        for name in self.no_weight_decay_layers:
            try:
                layer = self.get_layer(name)
            except ValueError:  # this configuration has no such token
                continue
            excluded.update(id(v) for v in layer.trainable_weights)
        return [v for v in self.trainable_variables if len(v.shape) <= 1 or id(v) in excluded]

    def block_ids(self):
        """`[(variable, block index)]` for every variable of the model (`self.weights`)."""
        return [(v, self._block_id_of_layer(v.path.split("/")[0])) for v in self.weights]

    @property
    def num_block_ids(self):
        return self._num_blocks() + 2

    def _block_id_of_layer(self, top_layer_name):
        raise NotImplementedError

    def _num_blocks(self):
        raise NotImplementedError

    def _heads_tensors(self):
        """{name: symbolic tensor} of the classifier outputs; `logits` first."""
        return {"logits": self.outputs[0]}

    def classifier_heads(self):
        """A `keras.Model` over the same layers (shared weights) returning a dict: `logits`
        (the model's output) and, for a distilled DeiT, `cls_logits` and `dist_logits`.

        Built once and kept in the untracked `_views` holder, so it adds nothing to this
        model's variables or its `.keras` file.
        """
        cached = getattr(self._views, "classifier_heads", None)
        if cached is None:
            cached = keras.Model(self.input, self._heads_tensors(), name=f"{self.name}_heads")
            self._views.classifier_heads = cached
        return cached


def classifier_heads(model):
    """`model.classifier_heads()` for a keras_vit model, None for any other `keras.Model`
    (a user's classifier: its output is its only head)."""
    if isinstance(model, KerasViTModel):
        return model.classifier_heads()
    return None


def has_distillation_head(model):
    """True when `model` has DeiT's distillation head (`dist_logits` among its heads)."""
    heads = classifier_heads(model)
    return heads is not None and "dist_logits" in heads.output


def _registered_cfg(name):
    """The registered checkpoint config a saved model names, or a ValueError that says so."""
    from keras_vit.pretrained import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except ValueError as error:
        raise ValueError(
            f"The saved model names the checkpoint config {name!r}, which this keras_vit "
            f"does not register ({error})"
        ) from None
