"""Reading image files for the commands: TensorFlow's decoder, as the SavedModel's."""

import os


def read_image_bytes(path):
    """The file's bytes; a clear error for a missing file or a directory."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such image file: {path!r}")
    with open(path, "rb") as f:
        return f.read()


def load_images(paths, size):
    """Image files -> float32 `(N, H, W, 3)` in 0..255, decoded and resized exactly as the
    SavedModel's `serve_image_bytes` does (`keras_vit.export.decode_images`)."""
    import tensorflow as tf

    from keras_vit.export import decode_images

    batch = []
    for path in paths:
        data = read_image_bytes(path)
        try:
            batch.append(decode_images(tf.constant([data]), size)[0])
        except tf.errors.OpError:
            raise ValueError(f"{path}: not a JPEG, PNG, BMP or GIF image") from None
    return tf.stack(batch).numpy()
