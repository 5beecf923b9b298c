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
  files (qwenvl_roi.fileio), never rewrite them in place: a file in staging may be a hard link to the old set.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from qwenvl_roi.errors import OutputError
from qwenvl_roi.fileio import current_umask, exchange, short_name, write_text

MARKER = ".qwenvl-roi.json"
MARKER_FORMAT = 1
STAGING_TAG = ".staging-"


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


#: how a folder written before the marker file is recognised: a predicate on the folder
Legacy = Callable[[Path], bool]


def legacy_json(rel: str, *keys: str) -> Legacy:
    """A folder from before the marker: ``rel`` is a JSON object holding all of ``keys`` (a name alone is
    not enough: a user's own ``metrics.json`` or a model folder's ``dataset_meta.json`` is not ours)."""

    def check(folder: Path) -> bool:
        try:
            data = json.loads((folder / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)

    return check


def real_folder(folder: str | Path) -> Path:
    """The folder a path names, links followed: a symlinked output folder is written where it points, the
    link itself stays."""
    return Path(os.path.realpath(folder))


def _writable_ancestor(folder: Path) -> Path | None:
    """The nearest existing ancestor of ``folder`` when it is not writable (a read-only mount), else None."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return None
        probe = probe.parent
    return None if os.access(probe, os.W_OK) else probe


def claim(folder: str | Path, command: str, legacy: Legacy | None = None, *, whole: bool = True) -> bool:
    """Check that ``command`` may write ``folder``; returns whether it already holds outputs of ours.

    ``legacy`` recognises this command's outputs from before the marker file existed; ``whole``: the
    command replaces the folder as a whole (so it cannot be the current folder). Raises OutputError naming
    the folder, what is in it and what to do.
    """
    folder = real_folder(folder)
    cwd = Path(os.getcwd())
    if whole and (folder == cwd or folder in cwd.parents):
        raise OutputError(
            f"{folder}: is the current folder (or holds it); {command} replaces its output folder as a "
            f"whole, so name a folder inside it (e.g. {folder / command.replace(' ', '-')})"
        )
    if not folder.exists():
        blocked = _writable_ancestor(folder.parent)
        if blocked is not None:
            raise OutputError(f"{folder}: cannot be created: {blocked} is not writable")
        return False
    if not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder; {command} writes a folder there")
    if not os.access(folder.parent, os.W_OK):
        raise OutputError(f"{folder}: cannot be replaced: {folder.parent} is not writable")
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
    if legacy is not None and legacy(folder):
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


def _link_tree(src: Path, dst: Path) -> set[str]:
    """Fill ``dst`` with hard links to every file under ``src`` (a copy where linking is refused); returns
    the relative paths it saw, so files the user adds while the command runs can be kept at the swap."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else dst / rel
        target.mkdir(exist_ok=True)
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):  # a linked folder stays a link
                os.symlink(os.readlink(os.path.join(dirpath, name)), target / name)
        for name in filenames:
            s = os.path.join(dirpath, name)
            seen.add(name if rel == "." else f"{rel}/{name}")
            if os.path.islink(s):
                os.symlink(os.readlink(s), target / name)
                continue
            try:
                os.link(s, target / name)
            except OSError:
                shutil.copy2(s, target / name)
    return seen


def _keep_late_files(old: Path, new: Path, seen: set[str]) -> None:
    """Files that appeared in the old folder after it was copied (a note the user saved meanwhile) move
    into the new one, unless the command wrote a file of that name."""
    for dirpath, _, filenames in os.walk(old):
        rel = os.path.relpath(dirpath, old)
        for name in filenames:
            key = name if rel == "." else f"{rel}/{name}"
            target = new / key
            if key in seen or os.path.lexists(target):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(os.path.join(dirpath, name), target)


def _swap_in(staging: Path, folder: Path, seen: set[str]) -> None:
    """Make ``staging`` the new ``folder``; the old one is removed afterwards (files added to it while the
    command ran are kept)."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    if exchange(staging, folder):
        _keep_late_files(staging, folder, seen)  # staging now holds the old set
        shutil.rmtree(staging, ignore_errors=True)
        return
    # no atomic exchange here: two renames, the gap only as long as one rename
    old = staging.with_name(staging.name + "-old")
    os.rename(folder, old)
    os.rename(staging, folder)
    _keep_late_files(old, folder, seen)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(folder: Path) -> None:
    """Staging folders left by a killed run of ours (their process is gone) are removed."""
    prefix = f".{short_name(folder.name)}{STAGING_TAG}"
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder.parent):
            if not entry.name.startswith(prefix):
                continue
            pid = entry.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)


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
def staged(folder: str | Path, command: str, legacy: Legacy | None = None) -> Iterator[Path]:
    """Yield a staging folder to write ``command``'s outputs into; on success it becomes ``folder``.

    The staging folder sits beside ``folder`` (same file system, so the swap is a rename) and starts as a
    hard-linked copy of it. On an exception it is removed and ``folder`` is untouched; an OSError (full
    disk, permissions) comes back as OutputError with one line saying what failed and what ``folder`` holds.
    A symlinked ``folder`` is written where the link points.
    """
    folder = real_folder(folder)
    had_old = claim(folder, command, legacy)
    if folder.exists() and os.path.ismount(folder):
        raise OutputError(
            f"{folder}: is a mount point; {command} swaps its output folder as a whole, so name a folder "
            f"inside it (e.g. {folder / 'out'})"
        )
    staging: Path | None = None
    try:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(folder)
            staging = Path(
                tempfile.mkdtemp(
                    prefix=f".{short_name(folder.name)}{STAGING_TAG}{os.getpid()}-", dir=folder.parent
                )
            )
            seen = _link_tree(folder, staging) if folder.exists() else set()
            staging.chmod(0o777 & ~current_umask())
            yield staging
            mark(staging, command)
            _swap_in(staging, folder, seen)
        except OSError as exc:
            raise OutputError(describe_failure(exc, folder, had_old, command)) from exc
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
