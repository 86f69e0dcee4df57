"""A pause of Python's cyclic garbage collector around work that allocates a great many
objects and frees none in cycles (planning and rendering a large schema)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def without_cyclic_gc() -> Iterator[None]:
    """Planning 1,000 tables allocates about a million small objects (composed SQL) and
    frees none in cycles: reference counting frees them all, and the cyclic collector's
    passes over the growing heap only cost time (more than half of it, measured:
    1,000 tables in 0.9 s instead of 2.0 s, 5,000 in 4.4 s instead of 13 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
