"""A context in which Keras's per-layer garbage collections scan only the new objects."""

import contextlib
import gc


@contextlib.contextmanager
def frozen_gc():
    """Let the collections Keras triggers inside the block scan only what the block creates.

    Keras runs a full `gc.collect()` each time a layer drops a variable (`Layer.__delattr__`),
    which `Model.quantize` does once per Dense / conv layer it rebuilds (and so does loading
    a quantized `.keras` file); a full collection scans every object alive in the process, so
    in a process holding other models one `quantize` took minutes (93% of its time in a small
    one). `gc.freeze()` sets the objects alive now aside from the collector for the block and
    `gc.unfreeze()` hands them back afterwards; one full collection then frees what the
    skipped ones would have, so the process holds no more memory than before. Nothing
    computed changes.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()
