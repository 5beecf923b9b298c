"""Leak-free, stable split assignment: a seeded hash of the group key, never a shuffled list.

Adding images never moves an existing image (its group's hash does not change); with ``split_by_parent`` a
folder is one group, so it never spans two splits; holdout images pull their whole group into test. A folder's
key is its path relative to its root, the same under normal_dir and abnormal_dir, so the normal and abnormal
images of one batch land in one split.
"""

from __future__ import annotations

import hashlib
import posixpath

SPLITS = ("train", "val", "test")
IMAGE_SPLITS = ("train", "val")  # splits that also get whole-image datasets (sft_image_*.json)
#: a split a source may force besides SPLITS: train or val by the group's seeded hash (a benchmark's official
#: train set, with val carved from it; its test set is forced to "test")
TRAIN_OR_VAL = "trainval"
FORCED_SPLITS = (*SPLITS, TRAIN_OR_VAL)


def group_key(source: str, rel_path: str, split_by_parent: bool, depth: int | None = None) -> str:
    """The split group of an image (``rel_path``: POSIX, relative to its root).

    split_by_parent: the folder path relative to the root, no source prefix, so ``abnormal_root/b1/...`` and
    ``normal_root/b1/...`` share the group ``b1``; ``depth`` keeps only the first ``depth`` folders (1: the
    first folder under the root), None the whole parent path; ``.`` for images directly in the root.
    Without split_by_parent every image is its own group, ``<source>/<image path>``.
    """
    if not split_by_parent:
        return f"{source}/{rel_path}"
    parts = posixpath.dirname(rel_path).split("/") if "/" in rel_path else []
    if depth is not None:
        parts = parts[:depth]
    return "/".join(parts) if parts else "."


def hash_unit(seed: int, key: str) -> float:
    """A uniform number in [0, 1) determined only by (seed, key)."""
    # a file name that is not UTF-8 (surrogate-escaped by the file system) hashes as its bytes
    digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(seed: int, key: str, train_ratio: float, val_ratio: float) -> str:
    """train / val / test by where the group's hash falls in the cumulative ratios."""
    u = hash_unit(seed, key)
    if u < train_ratio:
        return "train"
    if u < train_ratio + val_ratio:
        return "val"
    return "test"


def assign_train_or_val(seed: int, key: str, train_ratio: float, val_ratio: float) -> str:
    """train / val in the proportion train_ratio : val_ratio, by the group's hash (so it stays put as the
    data grow, as assign_split does)."""
    total = train_ratio + val_ratio
    if total <= 0:
        return "train"
    return "train" if hash_unit(seed, key) < train_ratio / total else "val"


def _allowed(forced: str) -> frozenset[str]:
    return frozenset(IMAGE_SPLITS) if forced == TRAIN_OR_VAL else frozenset({forced})


def forced_split(
    forced: set[str], seed: int, key: str, train_ratio: float, val_ratio: float
) -> tuple[str, bool]:
    """(the split of a group whose images are forced into ``forced`` (FORCED_SPLITS), whether they agree).

    They agree when one split satisfies every image (``train`` and ``trainval``: train); ``trainval`` alone
    is train or val by the hash. When they disagree the group goes to the latest split any of them allows
    (train < val < test: never a test image in training)."""
    common = frozenset(IMAGE_SPLITS + ("test",))
    for f in forced:
        common &= _allowed(f)
    if common == frozenset(IMAGE_SPLITS):
        return assign_train_or_val(seed, key, train_ratio, val_ratio), True
    if len(common) == 1:
        return next(iter(common)), True
    every = frozenset().union(*(_allowed(f) for f in forced))
    return max(every, key=SPLITS.index), False


def holdout_matches(entries: list[str], rel_path: str, root_name: str) -> list[str]:
    """The holdout_list entries naming this image: by file name, by path relative to its root, or with the
    root folder's name in front (so ``abnormal_root/b1/x.jpg`` works too)."""
    name = posixpath.basename(rel_path)
    forms = {name, rel_path, f"{root_name}/{rel_path}"}
    return [e for e in entries if e.replace("\\", "/").strip().removeprefix("./") in forms]
