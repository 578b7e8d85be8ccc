"""A folder of class subfolders (`root/<class>/<image>`), as Keras's
`image_dataset_from_directory` reads it: classes are the sorted subfolder names."""

import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def list_image_folder(root):
    """`(paths, labels, class_names)`, sorted, so the listing is the same on every machine."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Data set folder {root!r} does not exist.")
    class_names = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d[0] != "."
    )
    if not class_names:
        raise ValueError(f"Data set folder {root!r} has no class subfolders.")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(label)
    if not paths:
        raise ValueError(
            f"Data set folder {root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
        )
    return paths, labels, tuple(class_names)


def decode_image(path):
    """File path (scalar string tensor) -> `(H, W, 3)` float32 RGB in 0..255 (graph ops only),
    decoded as PIL decodes it (`keras_vit.data.transform.decode`: the evaluation split then
    sees timm's exact pixels)."""
    import tensorflow as tf

    from keras_vit.data.transform import decode

    return tf.cast(decode(tf.io.read_file(path)), tf.float32)
