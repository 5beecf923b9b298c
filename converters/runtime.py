"""Process-level settings for the bulk loops (kept in one place so the commands stay side-effect free)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of small acyclic dicts are built.

    Without this, generation-2 collections rescan every live sample again and again and the run grows
    super-linearly with the dataset; reference counting still frees everything. The previous state is
    restored on exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
