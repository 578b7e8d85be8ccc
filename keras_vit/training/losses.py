"""DeiT's training losses, per example, in float32, on any Keras backend.

Every function returns a `(B,)` vector: the caller reduces it (over the *global* batch under
`tf.distribute`, see `DeiTDistiller`). Logits are cast to float32 first, so the losses are
float32 under mixed precision too.

DeiT (Touvron et al. 2021, `losses.py` of facebookresearch/deit) trains the class head on the
labels and the distillation head on the teacher:

    loss = (1 - alpha) * CE(cls_logits, y) + alpha * L_teacher(dist_logits, teacher_logits)

hard: `L_teacher = CE(dist_logits, argmax(teacher_logits))`, exactly the reference.
soft: `L_teacher = tau^2 * KL(softmax(teacher / tau) || softmax(dist / tau))` summed over the
    classes and averaged over the examples ("batchmean", Hinton et al. 2015). The reference
    code computes `F.kl_div(log_softmax(s / T), log_softmax(t / T), reduction='sum',
    log_target=True) * T * T / s.numel()`: it divides the summed KL by `B * num_classes`
    (`numel`), i.e. its soft term is this one divided by `num_classes` (1/1000 on ImageNet).
    We keep the per-example KL so that `alpha` weighs two terms of the same scale (both are
    per-example cross-entropy-like quantities) whatever the number of classes; to reproduce
    the reference's numbers, use `soft_distillation_loss(...) / num_classes`.
"""

from keras import ops

DISTILLATION_MODES = ("hard", "soft", "none")


def _f32(x):
    return ops.cast(x, "float32")


def is_sparse(labels):
    """True for integer class indices `(B,)` / `(B, 1)`, False for class vectors `(B, C)`."""
    shape = ops.shape(labels)
    return len(shape) == 1 or (len(shape) == 2 and shape[-1] == 1)


def label_indices(labels):
    """Class indices `(B,)` int32 from sparse labels or the argmax of soft label vectors."""
    if is_sparse(labels):
        return ops.cast(ops.reshape(labels, (-1,)), "int32")
    return ops.cast(ops.argmax(labels, axis=-1), "int32")


def label_cross_entropy(labels, logits, label_smoothing=0.0):
    """CE of `logits (B, C)` against sparse int labels or soft vectors (MixUp/CutMix), with
    label smoothing: the target becomes `(1 - s) * target + s / C` (timm's
    `LabelSmoothingCrossEntropy` for sparse labels, Keras's `CategoricalCrossentropy` for
    soft ones). -> `(B,)`."""
    log_probs = ops.log_softmax(_f32(logits), axis=-1)
    num_classes = ops.shape(log_probs)[-1]
    if is_sparse(labels):
        idx = ops.expand_dims(label_indices(labels), -1)
        nll = -ops.squeeze(ops.take_along_axis(log_probs, idx, axis=-1), -1)
        if not label_smoothing:
            return nll
        smooth = -ops.mean(log_probs, axis=-1)
        return (1.0 - label_smoothing) * nll + label_smoothing * smooth
    targets = _f32(labels)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -ops.sum(targets * log_probs, axis=-1)


def hard_distillation_loss(dist_logits, teacher_logits):
    """CE of the distillation head against the teacher's top-1 class. -> `(B,)`."""
    targets = ops.argmax(teacher_logits, axis=-1)
    return label_cross_entropy(targets, dist_logits)


def soft_distillation_loss(dist_logits, teacher_logits, temperature=1.0):
    """`tau^2 * KL(softmax(teacher / tau) || softmax(dist / tau))` per example. -> `(B,)`."""
    log_p_student = ops.log_softmax(_f32(dist_logits) / temperature, axis=-1)
    log_p_teacher = ops.log_softmax(_f32(teacher_logits) / temperature, axis=-1)
    kl = ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return kl * (temperature * temperature)


def deit_loss(
    labels,
    cls_logits,
    dist_logits=None,
    teacher_logits=None,
    distillation="hard",
    alpha=0.5,
    temperature=1.0,
    label_smoothing=0.0,
):
    """DeiT's per-example loss and its two parts.

    Returns `(total, label_part, teacher_part)`, each `(B,)` float32 (`teacher_part` is zeros
    for `distillation="none"`, where `total = CE(cls_logits, y)`).
    """
    if distillation not in DISTILLATION_MODES:
        raise ValueError(
            f"`distillation` must be one of {DISTILLATION_MODES}, got {distillation!r}."
        )
    label_part = label_cross_entropy(labels, cls_logits, label_smoothing)
    if distillation == "none":
        return label_part, label_part, ops.zeros_like(label_part)
    teacher_logits = ops.stop_gradient(teacher_logits)
    if distillation == "hard":
        teacher_part = hard_distillation_loss(dist_logits, teacher_logits)
    else:
        teacher_part = soft_distillation_loss(dist_logits, teacher_logits, temperature)
    total = (1.0 - alpha) * label_part + alpha * teacher_part
    return total, label_part, teacher_part


__all__ = [
    "DISTILLATION_MODES",
    "deit_loss",
    "hard_distillation_loss",
    "is_sparse",
    "label_cross_entropy",
    "label_indices",
    "soft_distillation_loss",
]
