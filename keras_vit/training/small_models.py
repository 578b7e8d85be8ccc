"""The models `keras-vit train` picks on `digits` without `--model`: a small distilled DeiT
student and a small convnet teacher, both a few minutes of CPU time."""

import keras

from keras_vit.registry import create_model

DIGITS_IMAGE_SIZE = 32  # 8x8 digits upscaled 4x: one source pixel per 4x4 patch


def digits_student(num_classes, image_size=DIGITS_IMAGE_SIZE, drop_path_rate=0.0):
    """A distilled DeiT (class + distillation tokens, two heads): 64 patches of 4x4, width 96,
    depth 4, 3 heads (DeiT-Ti's head width of 32 per head), about 0.46 M parameters."""
    return create_model(
        "deit_tiny_distilled_patch16_224",
        num_classes=num_classes,
        image_size=image_size,
        patch_size=4,
        embed_dim=96,
        depth=4,
        num_heads=3,
        drop_path_rate=drop_path_rate,
    )


def small_convnet(num_classes, image_size=DIGITS_IMAGE_SIZE, name="small_convnet"):
    """A small VGG-style teacher: 3 conv stages with BatchNorm, takes RGB 0..255 NHWC."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, width in enumerate((32, 64, 128)):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        # momentum 0.9: a few hundred steps must be enough for the inference statistics
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)  # 32 -> 16 -> 8
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)  # (B, 128)
    outputs = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name=name)
