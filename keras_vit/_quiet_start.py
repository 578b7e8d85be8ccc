"""Under the `keras-vit` command only: import the backend with stderr (fd 2) closed.

TensorFlow's C++ start-up lines (oneDNN, CUDA stubs, cuInit) are printed before its logging
is configured, so `TF_CPP_MIN_LOG_LEVEL` cannot hide them, and they would bury the command's
one-line messages. Imported first by `keras_vit/__init__.py`; a library import (argv[0] not
`-m` for `python -m keras_vit`, nor the `keras-vit` script) changes nothing. Set
`TF_CPP_MIN_LOG_LEVEL=0` to see the lines.
"""

import os
import sys


def _is_cli():
    argv0 = sys.argv[0] if sys.argv else ""
    # `python -m keras_vit` imports this package while argv[0] is still "-m"
    return argv0 == "-m" or os.path.basename(argv0) in ("keras-vit", "keras-vit.exe")


def _quiet_import():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return
    sys.stderr.flush()
    saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    try:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery (cuInit) logs too
    except Exception:  # noqa: BLE001  the real import below reports it, with stderr back
        pass
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


if _is_cli() and os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0" and "keras" not in sys.modules:
    _quiet_import()
