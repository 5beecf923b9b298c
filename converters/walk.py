"""Finding the files of a dataset folder, and naming them in reports.

Shared by prepare, scan-labels, the annotation sources (converters/sources/) and predict --boxes, so every
command finds, pairs and names files the same way.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from .names import shown
from .parse import Problem

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


OUTPUT_MARKER = ".qwenvl-roi.json"  # qwenvl_roi.outputs.MARKER: a folder of our outputs, never data

#: a real folder (st_dev, st_ino) -> why it is not read (another root reads it, it is the output folder)
Skip = dict[tuple[int, int], tuple[str | None, str]]


def folder_key(path: str | Path) -> tuple[int, int] | None:
    """The real folder a path names (links followed), or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def data_skips(root: Path, out_dir: Path | None, normal: Path | None) -> Skip:
    """The folders no walk of ``root`` (abnormal_dir, or where its annotations lie) reads as data: out_dir
    (our outputs, marker or not yet), and normal_dir when it lies inside (its images are read as normal,
    once, and files beside them are not annotations). prepare and scan-labels walk with the same."""
    skip: Skip = {}
    out = folder_key(out_dir) if out_dir is not None else None
    if out is not None:
        skip[out] = ("output_folder_skipped", "is out_dir (qwenvl-roi outputs); not read as data")
    inner = folder_key(normal) if normal is not None else None
    if inner is not None and inner != folder_key(root):
        skip.setdefault(inner, (None, "is normal_dir; its images are read as normal"))
    return skip


def walk_files(
    root: Path,
    problems: list[Problem] | None = None,
    exts: tuple[str, ...] = (".txt",),
    skip: Skip | None = None,
    seen: dict[tuple[int, int], str] | None = None,
) -> tuple[list[str], list[str]]:
    """(image paths, paths of files ending in ``exts``) under root, relative POSIX; hidden files and folders
    are skipped.

    Order: a folder's files sorted, then its sub-folders in sorted order, each walked whole. Symlinked folders
    are followed (users link batch folders in), and each real folder (device, inode) is read once: a link
    back into a folder being read (a loop) or to a folder already read is not followed, and ``problems``
    gets it, named by the link; so does a folder that cannot be listed. Names are the file system's: a
    non-UTF-8 name (GBK from a Windows zip) is a str with surrogate escapes, which open() takes but JSON
    does not (report it with names.shown). ``exts`` are lower case; file extensions match in any case.

    Not read, each reported: a folder holding qwenvl-roi's outputs (its marker file: cached copies and
    thumbnails of the data are not data), and the folders in ``skip`` (kind and reason given). ``seen``
    (real folder -> relative path) may be shared between walks.
    """
    images: list[str] = []
    others: list[str] = []
    wanted = frozenset(exts)
    seen = {} if seen is None else seen  # real folder -> the relative path it was read under
    skip = skip or {}
    # (folder path, its path relative to root ("" for root), the real folders it lies in)
    stack: list[tuple[str, str, tuple[tuple[int, int], ...]]] = [(os.fspath(root), "", ())]

    def report(rel: str, kind: str, reason: str) -> None:
        if problems is not None:
            label = f"{Path(root).as_posix()}/{shown(rel)}" if rel else Path(root).as_posix()
            problems.append(Problem(label, None, kind, reason))

    while stack:
        path, rel_dir, inside = stack.pop()
        try:
            st = os.stat(path)
        except OSError as exc:
            report(rel_dir, "folder_unreadable", f"cannot read folder ({exc.strerror or exc}); skipped")
            continue
        key = (st.st_dev, st.st_ino)
        if key in skip:
            kind, reason = skip[key]
            if kind:  # None: read under another root, nothing lost
                report(rel_dir, kind, reason)
            continue
        if os.path.isfile(os.path.join(path, OUTPUT_MARKER)):
            report(
                rel_dir,
                "output_folder_skipped",
                "holds qwenvl-roi outputs (its marker file); not read as data",
            )
            continue
        if key in inside:
            where = seen.get(key, "")
            report(
                rel_dir,
                "folder_link_loop",
                f"link back to the folder {shown(where) or '.'!r} that contains it (a loop); not followed",
            )
            continue
        if key in seen:
            report(
                rel_dir,
                "folder_link_duplicate",
                f"links to the folder already read as {shown(seen[key]) or '.'!r}; not read twice",
            )
            continue
        seen[key] = rel_dir
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            report(rel_dir, "folder_unreadable", f"cannot list folder ({exc.strerror or exc}); skipped")
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append((entry.path, rel))
                continue
            ext = posixpath.splitext(name)[1].lower()
            if ext in IMAGE_EXTS:
                images.append(rel)
            elif ext in wanted:
                others.append(rel)
        stack += [(p, r, (*inside, key)) for p, r in reversed(subdirs)]
    return images, others


def stem_key(rel: str) -> str:
    """How an image finds its annotation file: the same path without extension, case-folded."""
    return posixpath.splitext(rel)[0].casefold()


def file_label(root: Path, rel: str) -> str:
    """How problems name a file: the configured root (as written) joined with the relative path (a
    non-UTF-8 name with its undecodable bytes as \\xNN, so the report can be written)."""
    return f"{root.as_posix()}/{shown(rel)}"
