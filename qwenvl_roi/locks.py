"""Blocking advisory locks between our own processes (two `convert` runs sharing a dataset_info folder)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on ``folder`` itself (no lock file left behind); waits while another holds it.

    The folder, not the file in it, is locked because the file is replaced atomically (a new inode) by
    every writer, while the folder stays.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
