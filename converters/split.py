"""Leak-free, stable split assignment: a seeded hash of the group key, never a shuffled list.

Adding images never moves an existing image (its group's hash does not change); with ``split_by_parent`` a
folder is one group, so it never spans two splits; holdout images pull their whole group into test.
"""

from __future__ import annotations

import hashlib
import posixpath

SPLITS = ("train", "val", "test")


def group_key(source: str, rel_path: str, split_by_parent: bool) -> str:
    """``<source>/<parent folder>`` with split_by_parent, else ``<source>/<image path>`` (POSIX, relative)."""
    if split_by_parent:
        parent = posixpath.dirname(rel_path)
        return f"{source}/{parent}" if parent else f"{source}/."
    return f"{source}/{rel_path}"


def hash_unit(seed: int, key: str) -> float:
    """A uniform number in [0, 1) determined only by (seed, key)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(seed: int, key: str, train_ratio: float, val_ratio: float) -> str:
    """train / val / test by where the group's hash falls in the cumulative ratios."""
    u = hash_unit(seed, key)
    if u < train_ratio:
        return "train"
    if u < train_ratio + val_ratio:
        return "val"
    return "test"


def holdout_matches(entries: list[str], rel_path: str, root_name: str) -> list[str]:
    """The holdout_list entries naming this image: by file name, by path relative to its root, or with the
    root folder's name in front (so ``abnormal_root/b1/x.jpg`` works too)."""
    name = posixpath.basename(rel_path)
    forms = {name, rel_path, f"{root_name}/{rel_path}"}
    return [e for e in entries if e.replace("\\", "/").strip().removeprefix("./") in forms]
