"""Reading image files for the commands: the SavedModel's decoder and transform
(`keras_vit.data.transform`), so a command sees the pixels a served model sees."""

import os


def read_image_bytes(path):
    """The file's bytes; a clear error for a missing file or a directory."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such image file: {path!r}")
    with open(path, "rb") as f:
        return f.read()


def load_images(paths, transform):
    """Image files -> float32 `(N, H, W, 3)` in 0..255 through `transform`: an `EvalTransform`,
    or an `(H, W)` size for the whole picture squashed to it (Pillow's bicubic, no crop: what
    an overlay on the original image needs)."""
    import tensorflow as tf

    from keras_vit.data.transform import EvalTransform, UnreadableImageError

    if not isinstance(transform, EvalTransform):
        transform = EvalTransform(tuple(transform), crop_pct=1.0, crop_mode="squash")
    fn = tf.function(lambda data: tf.cast(transform.from_bytes(data), tf.float32))
    batch = []
    for path in paths:
        data = read_image_bytes(path)
        try:
            batch.append(fn(tf.constant(data)))
        except tf.errors.OpError:
            raise UnreadableImageError(path) from None
    return tf.stack(batch).numpy()
