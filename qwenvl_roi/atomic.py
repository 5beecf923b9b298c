"""Atomic file writes: a run killed midway leaves the previous file or none, never a truncated one.

Every output of qwenvl-roi goes through :func:`atomic_open`: a temporary file beside the target, flushed
and fsynced, then moved into place with os.replace (atomic on POSIX within one folder).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

NAME_MAX = 255  # bytes in one file name on Linux file systems
_TEMP_ROOM = 40  # what a temp name adds around the target's name: ".", ".", mkstemp's 8 characters, ".tmp"


def short_name(name: str, room: int = _TEMP_ROOM) -> str:
    """``name`` cut (at a byte boundary) so that ``room`` more bytes still fit in a file name."""
    raw = os.fsencode(name)
    return name if len(raw) + room <= NAME_MAX else os.fsdecode(raw[: NAME_MAX - room])


@functools.cache
def current_umask() -> int:
    """The process umask (read once: os.umask can only read it by changing it; /proc where it can)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` ("w": UTF-8 text, \\n newlines; "wb": bytes); replace on success."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    if os.path.islink(path):  # written where the link points, as open() would; the link stays
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{short_name(path.name)}.", suffix=".tmp", dir=path.parent)
    text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    try:
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; as open() would, umask applies
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write bytes."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    with atomic_open(path) as fh:
        fh.write(text)


def write_figure_png(fig: Any, path: str | Path, dpi: int = 100, source: str | None = None) -> None:
    """Atomically save a matplotlib figure as PNG without Software/date metadata (byte-identical reruns);
    ``source`` goes into a PNG text chunk, so a later run can tell its own picture from a user's."""
    import io

    buf = io.BytesIO()
    meta = {"Software": None, **({"Source": source} if source else {})}
    fig.savefig(buf, format="png", dpi=dpi, metadata=meta)
    write_bytes(path, buf.getvalue())


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on success it replaces ``path`` whole (model folders,
    generated datasets): readers see the old folder or the complete new one, never a half-written one."""
    import shutil

    path = Path(path)
    if os.path.islink(path):  # the folder the link points to is replaced; the link stays
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{short_name(path.name)}.tmp-", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the folder is ordinary output
        if not path.exists():
            os.rename(tmp, path)
        elif exchange(tmp, path):  # readers see the old folder or the new one, never none
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(path)
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
