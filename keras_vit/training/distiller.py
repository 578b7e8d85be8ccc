"""DeiT's teacher-student distillation as a `keras.Model` you `compile` and `fit`.

Design: the distiller does not write its own gradient code. It overrides `call` (student heads
plus the frozen teacher's logits), `compute_loss` and `compute_metrics`, and lets each
backend's own `train_step`/`test_step` do the rest (`tf.GradientTape` on TensorFlow,
`jax.value_and_grad` over the stateless call on JAX). So loss scaling for float16, the
optimizer's cross-replica gradient sum under `tf.distribute`, `steps_per_execution`,
`jit_compile` and callbacks all behave as for any Keras model, on every backend.
"""

import keras
from keras import ops

from keras_vit.models.base import XLAByDefault, has_distillation_head
from keras_vit.training.losses import (
    DISTILLATION_MODES,
    deit_loss,
    label_cross_entropy,
    label_indices,
)


def _replica_context():
    """TensorFlow's replica context when several replicas train in sync, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def _global_batch_size(local_size):
    """The number of examples in this step over all replicas (float32 scalar).

    Under `tf.distribute` each replica sees its share of the global batch and the optimizer
    sums the replicas' gradients; dividing each replica's summed loss by the global size makes
    that sum the gradient of the global-batch mean: the same update on 1 or N replicas, also
    when the last batch splits unevenly. JAX's Keras distribution works on global arrays, so
    the local size already is the global one there.
    """
    size = ops.cast(local_size, "float32")
    context = _replica_context()
    if context is not None:
        import tensorflow as tf

        size = context.all_reduce(tf.distribute.ReduceOp.SUM, size)
    return size


def _static_hw(model):
    """`(H, W)` of a single-image-input model if known, else None."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1 or len(inputs[0].shape) != 4:
        return None
    hw = tuple(inputs[0].shape[1:3])
    return hw if None not in hw else None


@keras.saving.register_keras_serializable(package="keras_vit")
class DeiTDistiller(XLAByDefault, keras.Model):
    """Trains a DeiT student from a frozen teacher (Touvron et al. 2021).

    Args:
        student: the model to train. For `"hard"`/`"soft"`, a distilled DeiT (a keras_vit
            model whose `classifier_heads()` include `dist_logits`); for `"none"`, any
            classifier (a distilled DeiT trains its class head only).
        teacher: a `keras.Model` returning logits `(B, num_classes)`; run with
            `training=False` and `stop_gradient`, never updated (its BatchNorm statistics
            included; `teacher.trainable` is set to False). May be None for `"none"`.
        distillation: `"hard"`: `(1 - alpha) * CE(cls, y) + alpha * CE(dist, argmax(teacher))`;
            `"soft"`: `(1 - alpha) * CE(cls, y) + alpha * tau^2 * KL(teacher || dist)` at
            temperature tau (per-example KL, see `keras_vit.training.losses` for how it
            relates to the reference code's normalisation); `"none"`: `CE(cls, y)`.
        alpha: weight of the teacher term, in [0, 1].
        temperature: tau of the soft mode, > 0.
        label_smoothing: applied to the label term only (sparse labels or soft vectors).
        teacher_adapter: callable `images -> teacher inputs` (another size, another
            normalisation). Default: a bilinear resize when the teacher's input size differs
            from the student's, else the images unchanged.

    Data: `(images, labels)` with labels sparse ints `(B,)` or class vectors `(B, C)`
    (MixUp/CutMix), optional sample weights. The loss is averaged over the global batch.

    Logged metrics: `loss`; `label_loss` and `distillation_loss` (the two terms before
    weighting); `accuracy` of the student's output (the averaged heads, as at inference);
    `cls_accuracy` and `dist_accuracy` of each head; `teacher_agreement` (student top-1 ==
    teacher top-1). `evaluate` reports as `loss` the cross-entropy of the student's averaged
    output (no label smoothing). `predict` returns a dict: `logits` (the student's output)
    and the heads. After training, `distiller.student` is the model to save or export.
    """

    def __init__(
        self,
        student,
        teacher=None,
        distillation="hard",
        alpha=0.5,
        temperature=1.0,
        label_smoothing=0.0,
        teacher_adapter=None,
        name="deit_distiller",
        **kwargs,
    ):
        if not isinstance(student, keras.Model):
            raise ValueError(f"`student` must be a keras.Model, got {student!r}.")
        if distillation not in DISTILLATION_MODES:
            raise ValueError(
                f"`distillation` must be one of {DISTILLATION_MODES}, got {distillation!r}."
            )
        if teacher is None and distillation != "none":
            raise ValueError(f"distillation={distillation!r} needs a `teacher`, got None.")
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise ValueError(f"`teacher` must be a keras.Model or None, got {teacher!r}.")
        self._two_heads = has_distillation_head(student)
        if distillation != "none" and not self._two_heads:
            raise ValueError(
                f"distillation={distillation!r} needs a student with a distillation head "
                f"(e.g. a `deit_*_distilled_*` model); got {type(student).__name__} "
                f"{student.name!r}. Use distillation='none' for a single-head student."
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}.")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
        if not isinstance(label_smoothing, (int, float)) or not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}.")
        if teacher_adapter is not None and not callable(teacher_adapter):
            raise ValueError(
                f"`teacher_adapter` must be callable or None, got {teacher_adapter!r}."
            )
        use_teacher = teacher is not None and distillation != "none"
        if use_teacher:
            s_classes = student.output_shape[-1] if hasattr(student, "output_shape") else None
            t_classes = teacher.output_shape[-1] if hasattr(teacher, "output_shape") else None
            if None not in (s_classes, t_classes) and s_classes != t_classes:
                raise ValueError(
                    f"The teacher predicts {t_classes} classes and the student {s_classes}; "
                    f"they must match."
                )
        # Mixed precision follows the student, so `compile` wraps the optimizer in a
        # LossScaleOptimizer when the student computes in float16.
        kwargs.setdefault("dtype", student.dtype_policy)
        super().__init__(name=name, **kwargs)

        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.distillation = distillation
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.label_smoothing = float(label_smoothing)
        self.teacher_adapter = teacher_adapter
        self._use_teacher = use_teacher
        s_hw, t_hw = _static_hw(student), _static_hw(teacher) if use_teacher else None
        self._teacher_resize = t_hw if (s_hw and t_hw and s_hw != t_hw) else None
        if self._two_heads:
            student.classifier_heads()  # build the cached view now, not inside a trace

        self.label_loss_tracker = keras.metrics.Mean(name="label_loss")
        self.accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        if self._two_heads:
            self.cls_accuracy = keras.metrics.SparseCategoricalAccuracy(name="cls_accuracy")
            self.dist_accuracy = keras.metrics.SparseCategoricalAccuracy(name="dist_accuracy")
        if use_teacher:
            self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
            self.teacher_agreement = keras.metrics.SparseCategoricalAccuracy(
                name="teacher_agreement"
            )
        self.built = True  # student and teacher are built models; nothing to create here

    # --- forward ---
    def teacher_inputs(self, images):
        """What the teacher is fed for `images` (the adapter, or the default resize)."""
        if self.teacher_adapter is not None:
            return self.teacher_adapter(images)
        if self._teacher_resize is not None:
            return ops.image.resize(images, self._teacher_resize, interpolation="bilinear")
        return images

    def call(self, images, training=None):
        """-> dict: `logits` (the student's output), `cls_logits`, `dist_logits` (two-head
        students), `teacher_logits` (when a teacher is used)."""
        if self._two_heads:
            # `logits`: the student's own output (its head average), beside both heads
            out = dict(self.student.classifier_heads()(images, training=training))
        else:
            logits = self.student(images, training=training)
            out = {"logits": logits, "cls_logits": logits}
        if self._use_teacher:
            teacher_logits = self.teacher(self.teacher_inputs(images), training=False)
            out["teacher_logits"] = ops.stop_gradient(teacher_logits)
        return out

    # --- loss and metrics (each backend's train_step/test_step calls these) ---
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        total, label_part, teacher_part = deit_loss(
            y,
            y_pred["cls_logits"],
            y_pred.get("dist_logits"),
            y_pred.get("teacher_logits"),
            distillation=self.distillation if self._use_teacher else "none",
            alpha=self.alpha,
            temperature=self.temperature,
            label_smoothing=self.label_smoothing,
        )
        if not training:  # evaluation: the student as it predicts, against the labels
            total = label_cross_entropy(y, y_pred["logits"])
        weights = None
        if sample_weight is not None:
            weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            total = total * weights
        self.label_loss_tracker.update_state(label_part, sample_weight=weights)
        if self._use_teacher:
            self.distillation_loss_tracker.update_state(teacher_part, sample_weight=weights)
        # (B,) -> scalar: sum over this replica / examples in the global batch
        local_sum, local_size = ops.sum(total), ops.cast(ops.shape(total)[0], "float32")
        loss = local_sum / _global_batch_size(local_size)
        context = _replica_context()
        if context is not None:
            # Keras logs `loss * replicas` weighted by the replica's example count; when a
            # batch splits unevenly (an evaluation's last batch) only the replica's own mean
            # / replicas logs the exact global mean. Its value is logged; the gradient stays
            # that of the global-batch mean above.
            logged = ops.divide_no_nan(local_sum, local_size * context.num_replicas_in_sync)
            loss = loss + ops.stop_gradient(logged - loss)
        if self.losses:  # regularisers of the student, once per replica like Keras's own
            extra = ops.sum([ops.cast(ops.sum(v), "float32") for v in self.losses])
            loss = loss + (extra if context is None else extra / context.num_replicas_in_sync)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels = label_indices(y)
        self.accuracy_metric.update_state(labels, y_pred["logits"], sample_weight)
        if self._two_heads:
            self.cls_accuracy.update_state(labels, y_pred["cls_logits"], sample_weight)
            self.dist_accuracy.update_state(labels, y_pred["dist_logits"], sample_weight)
        if self._use_teacher:
            teacher_top1 = ops.argmax(y_pred["teacher_logits"], axis=-1)
            self.teacher_agreement.update_state(teacher_top1, y_pred["logits"], sample_weight)
        # compiled (user) metrics see the student's output; Keras's own compute_metrics
        # updates them and returns every metric's result
        return super().compute_metrics(x, y, y_pred["logits"], sample_weight)

    # --- serialisation ---
    def get_config(self):
        ser = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "dtype": self.dtype_policy.name,
            "student": ser(self.student),
            "teacher": None if self.teacher is None else ser(self.teacher),
            "distillation": self.distillation,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "label_smoothing": self.label_smoothing,
            "teacher_adapter": (
                None if self.teacher_adapter is None else ser(self.teacher_adapter)
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher", "teacher_adapter"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
