"""Output folders the user names: we replace only what we made, and a set of files lands as a unit.

Two rules, for every command that writes into a folder given on the command line or in a config
(`convert`/`prepare`/`build-sft`'s out_dir, `eval --out`, `preview --out`, `demo --out`, `tiny-model --out`):

* **Ownership** (:func:`claim`). A folder is ours to write when it is missing, empty, carries our marker file
  (``.qwenvl-roi.json``, naming the command that made it), or holds the known outputs of that command from a
  version before the marker (``legacy``). Anything else is refused with an error that lists what is there, and
  nothing in it is touched: `demo --out .` in a project folder no longer deletes ``./data``.
* **Sets** (:func:`staged`). A command's outputs are written into a staging folder beside the target that
  starts as a hard-linked copy of the old set (so caches and files the command does not rewrite carry over
  for free), then swapped with the target in one ``renameat2(RENAME_EXCHANGE)``. After any failure (a full
  disk, a crash, kill -9) the target holds the complete old set or the complete new one. Writers must replace
  files (qwenvl_roi.atomic), never rewrite them in place: a file in staging may be a hard link to the old set.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from qwenvl_roi.atomic import current_umask, exchange, short_name, write_text

MARKER = ".qwenvl-roi.json"
MARKER_FORMAT = 1
STAGING_TAG = ".staging-"


class OutputError(Exception):
    """An output folder that cannot be written as asked; the message says what is there or what failed."""

    exit_code = 2  # as for any other bad input of a command


def _marker_text(command: str) -> str:
    # no time or path inside: reruns stay byte-identical and the folder can move
    return json.dumps({"made_by": f"qwenvl-roi {command}", "format": MARKER_FORMAT}, indent=2) + "\n"


def made_by(folder: Path) -> str | None:
    """The command named by ``folder``'s marker ("convert", "eval", ...), or None when it has none."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return str(data["made_by"]).removeprefix("qwenvl-roi ")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _visible(entries: Iterable[str]) -> list[str]:
    return sorted(e for e in entries if e != MARKER)


def claim(folder: str | Path, command: str, legacy: Iterable[str] = ()) -> bool:
    """Check that ``command`` may write ``folder``; returns whether it already holds outputs of ours.

    ``legacy``: relative paths any one of which marks the folder as this command's output from before the
    marker file existed. Raises OutputError naming the folder, what is in it and what to do.
    """
    folder = Path(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder; {command} writes a folder there")
    owner = made_by(folder)
    if owner == command:
        return True
    entries = _visible(os.listdir(folder))
    if owner is not None:
        raise OutputError(
            f"{folder}: holds the outputs of qwenvl-roi {owner}, not of {command}; "
            f"choose another folder for {command} (nothing was changed)"
        )
    if not entries:
        return False
    if any((folder / rel).exists() for rel in legacy):
        return True
    shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
    raise OutputError(
        f"{folder}: not empty and not made by qwenvl-roi {command} (it holds {shown}); {command} only "
        "writes into a new or empty folder or one it made before, so choose another folder "
        "(nothing was changed)"
    )


def mark(folder: str | Path, command: str) -> None:
    """Write the marker that makes ``folder`` ``command``'s own (for folders not written through staged)."""
    write_text(Path(folder) / MARKER, _marker_text(command))


def _link_tree(src: Path, dst: Path) -> None:
    """Fill ``dst`` with hard links to every file under ``src`` (a copy where linking is refused)."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else dst / rel
        target.mkdir(exist_ok=True)
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):  # a linked folder stays a link
                os.symlink(os.readlink(os.path.join(dirpath, name)), target / name)
        for name in filenames:
            s = os.path.join(dirpath, name)
            if os.path.islink(s):
                os.symlink(os.readlink(s), target / name)
                continue
            try:
                os.link(s, target / name)
            except OSError:
                shutil.copy2(s, target / name)


def _swap_in(staging: Path, folder: Path) -> None:
    """Make ``staging`` the new ``folder``; the old one is removed afterwards."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    if exchange(staging, folder):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the old set
        return
    # no atomic exchange here: two renames, the gap only as long as one rename
    old = staging.with_name(staging.name + "-old")
    os.rename(folder, old)
    os.rename(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(folder: Path) -> None:
    """Staging folders left by a killed run of ours (their process is gone) are removed."""
    prefix = f".{short_name(folder.name)}{STAGING_TAG}"
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder.parent):
            if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
                continue
            pid = entry.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier staging of this very process was already cleaned or committed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_failure(exc: OSError, folder: Path, had_old: bool, command: str) -> str:
    """One line for a failed write: what failed, and what the folder holds now."""
    where = f" ({exc.filename})" if exc.filename else ""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    state = (
        f"{folder} still holds the complete previous outputs"
        if had_old
        else f"nothing was written to {folder}"
    )
    return f"{command}: writing {folder} failed: {why}{where}; {state}, none of this run's were kept"


@contextmanager
def staged(folder: str | Path, command: str, legacy: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a staging folder to write ``command``'s outputs into; on success it becomes ``folder``.

    The staging folder sits beside ``folder`` (same file system, so the swap is a rename) and starts as a
    hard-linked copy of it. On an exception it is removed and ``folder`` is untouched; an OSError (full
    disk, permissions) comes back as OutputError with one line saying what failed and what ``folder`` holds.
    """
    folder = Path(folder).absolute()
    had_old = claim(folder, command, legacy)
    if folder.exists() and os.path.ismount(folder):
        raise OutputError(
            f"{folder}: is a mount point; {command} swaps its output folder as a whole, so name a folder "
            f"inside it (e.g. {folder / 'out'})"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(folder)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{short_name(folder.name)}{STAGING_TAG}{os.getpid()}-", dir=folder.parent)
    )
    try:
        try:
            if folder.exists():
                _link_tree(folder, staging)
            staging.chmod(0o777 & ~current_umask())
            yield staging
            mark(staging, command)
            _swap_in(staging, folder)
        except OSError as exc:
            raise OutputError(describe_failure(exc, folder, had_old, command)) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
