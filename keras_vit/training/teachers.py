"""Teachers from Keras Applications (`keras:EfficientNetV2B0`) and the adapter that feeds them.

A Keras Applications model takes its own input: its size (224 for EfficientNetV2B0, 240 for
B1, ...) and its own normalisation (`keras.applications.<module>.preprocess_input`: caffe BGR
mean subtraction for ResNet50, [-1, 1] for MobileNetV2, a pass-through for EfficientNetV2,
which normalises inside the model). The student is fed RGB 0..255 images (keras_vit models
normalise inside), so `ApplicationAdapter` resizes those to the teacher's size and applies its
`preprocess_input`; the distiller calls it as its `teacher_adapter` inside the train step.

Weights: `"imagenet"` (Keras's download into `~/.keras/models`, `KERAS_HOME`; verified against
Keras's pinned file hash: a cached file that does not match is fetched again), a local weights
file, or None (random, only when asked for explicitly by the caller).
"""

import types

import keras

PREFIX = "keras:"


def is_application_name(name):
    return isinstance(name, str) and name.startswith(PREFIX)


def _application(name):
    """`"keras:EfficientNetV2B0"` -> (constructor, public module with its `preprocess_input`)."""
    bare = name[len(PREFIX) :]
    apps = keras.applications
    constructor = getattr(apps, bare, None)
    if not bare or not callable(constructor) or isinstance(constructor, types.ModuleType):
        known = sorted(
            n for n, v in vars(apps).items() if callable(v) and n[:1].isupper() and "_" not in n
        )
        raise ValueError(
            f"Unknown Keras Applications model {bare!r} (in {name!r}); known: {', '.join(known)}."
        )
    for module in vars(apps).values():
        if (
            isinstance(module, types.ModuleType)
            and getattr(module, bare, None) is constructor
            and hasattr(module, "preprocess_input")
        ):
            return bare, constructor, module
    # some constructors are exported only at the top (MobileNetV3Small): their public module
    # is the one named like the module that defines them
    module = getattr(apps, constructor.__module__.rpartition(".")[2], None)
    if isinstance(module, types.ModuleType) and hasattr(module, "preprocess_input"):
        return bare, constructor, module
    raise ValueError(f"Keras Applications model {bare!r} has no module with preprocess_input.")


@keras.saving.register_keras_serializable(package="keras_vit")
class ApplicationAdapter(keras.layers.Layer):
    """`images (B, H, W, 3) RGB 0..255 -> the teacher's input`: a bilinear resize to
    `image_size` (skipped when the sizes agree), then the application's `preprocess_input`.

    Args:
        application: the Keras Applications constructor name (`"EfficientNetV2B0"`).
        image_size: the teacher's `(height, width)`.
    """

    def __init__(self, application, image_size, **kwargs):
        super().__init__(**kwargs)
        self.application = application
        self.image_size = tuple(int(s) for s in image_size)
        _, _, self._module = _application(PREFIX + application)

    def call(self, images):
        if tuple(images.shape[1:3]) != self.image_size:
            images = keras.ops.image.resize(images, self.image_size, interpolation="bilinear")
        return self._module.preprocess_input(images)

    def get_config(self):
        return {
            **super().get_config(),
            "application": self.application,
            "image_size": self.image_size,
        }


def application_teacher(name, weights="imagenet", num_classes=1000):
    """`(teacher, adapter)` for `keras:NAME`. `weights`: `"imagenet"` (1000 classes), a local
    weights file of the application with `num_classes` classes, or None (random, with
    `num_classes`: only when the caller asked for a random teacher)."""
    bare, constructor, _ = _application(name)
    classes = 1000 if weights == "imagenet" else num_classes
    try:
        teacher = constructor(weights=weights, classes=classes, include_top=True)
    except ValueError:
        raise
    except Exception as err:  # Keras's get_file raises a bare Exception when the fetch fails
        where = "ImageNet weights" if weights == "imagenet" else f"weights {weights!r}"
        raise OSError(
            f"Cannot load the {where} of Keras Applications {bare} ({err}). Without network, "
            "put Keras's weights file in ~/.keras/models (or $KERAS_HOME/models), or pass a "
            f"local file (--teacher FILE --teacher-model {name}), or ask for a random teacher "
            "explicitly (--teacher-weights random)."
        ) from err
    size = tuple(teacher.inputs[0].shape[1:3])
    if None in size:
        raise ValueError(f"Keras Applications {bare} has no fixed input size ({size}).")
    return teacher, ApplicationAdapter(bare, size, name=f"{bare.lower()}_adapter")
