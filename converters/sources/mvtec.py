"""MVTec AD (``dataset_layout: mvtec``): ``<category>/train/good/*.png`` (defect-free),
``<category>/test/<defect type>/*.png`` (``good`` among them) and the masks
``<category>/ground_truth/<defect type>/<stem>_mask.png``.

``dataset_root`` is one category folder (it holds ``train/``, ``test/``) or the folder holding several
categories. ``good`` images are normal; a defect image's boxes are its mask's components (layout.py), each
labelled with the defect type's folder name (``scratch``). A defect image without its mask, with an empty
or unreadable one, is reported and left out; so is a mask without its image (its boxes counted as dropped)
and any other image under the root.

Splits. MVTec AD's own train split holds only good images, so a region classifier could learn no defect
from it. By default (``split_from: defect_types``) the defect images of each (category, defect type) are
split on their own: ordered by a seeded hash and cut by train/val/test_ratio (largest remainders), so that
every defect type with at least ``MIN_PER_TYPE`` usable images (those prepare keeps: the quotas are taken
once the images are checked, Source.strata_splits) has some in train and some in test; good
images (train/good and test/good alike) go by the usual seeded hash. This is **not** the published
one-class protocol. ``split_from: layout`` keeps the official split: train/good in train (val carved from
it by the seed), every test image in test.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..parse import Problem
from ..split import TRAIN_OR_VAL, hash_unit
from .base import Read, Record, SourceSettings
from .layout import LayoutSource, stray

SPLIT_FROM = ("defect_types", "layout")
#: a defect type with at least this many usable images gets some in train and some in test
MIN_PER_TYPE = 10
MASK_SUFFIX = "_mask"


@dataclass
class _Image:
    """An image the layout places: its category, train/test, good or the defect type, and its mask."""

    rel: str
    category: str
    part: str
    kind: str
    mask: str | None = None
    read: Read | None = None


def quotas(n: int, ratios: tuple[float, float, float], both: bool) -> tuple[int, int, int]:
    """Images of a defect type for train, val, test: the ratios' shares by largest remainder (ties to the
    earlier split); ``both``: train and test get at least one each where their ratio is not 0."""
    raw = [n * r for r in ratios]
    counts = [math.floor(x + 1e-9) for x in raw]
    order = sorted(range(3), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: max(0, n - sum(counts))]:
        counts[i] += 1
    if both:
        for need in (2, 0):
            if ratios[need] > 0 and counts[need] == 0:
                donors = [i for i in range(3) if i != need and counts[i] > 1]
                if donors:
                    donor = max(donors, key=lambda i: counts[i])
                    counts[donor] -= 1
                    counts[need] += 1
    return counts[0], counts[1], counts[2]


class MvtecSource(LayoutSource):
    """``dataset_layout: mvtec`` (see the module docstring)."""

    format = "mvtec"
    keys: ClassVar[frozenset[str]] = LayoutSource.keys | {"split_from"}

    def __init__(self, settings: SourceSettings):
        super().__init__(settings)
        root = self.images_root
        self.single = any((root / part).is_dir() for part in ("train", "test", "ground_truth"))
        self.category = Path(os.path.abspath(root)).name  # of a single category folder
        self.split_from = settings.split_from or SPLIT_FROM[0]

    def inputs(self) -> dict[str, int | str]:
        return {**self.layout_inputs(), "split_from": self.split_from}

    def _place(self, rel: str) -> tuple[str, ...] | None:
        """(category, train|test|ground_truth, type, file name) of a path, or None off the layout."""
        parts = rel.split("/")
        if self.single:
            parts = [self.category, *parts]
        return tuple(parts) if len(parts) == 4 else None

    def _mask_name(self, item: _Image) -> str:
        prefix = "" if self.single else f"{item.category}/"
        stem = posixpath.splitext(posixpath.basename(item.rel))[0]
        return f"{prefix}ground_truth/{item.kind}/{stem}{MASK_SUFFIX}.png"

    def records(self, images: list[str], beside: list[str]) -> Iterator[Record]:
        items: dict[str, _Image] = {}
        others: dict[str, Record] = {}
        masks: dict[tuple[str, str, str], list[str]] = {}
        for rel in images:
            place = self._place(rel)
            if place is not None:
                category, part, kind, name = place
                stem = posixpath.splitext(name)[0]
                if part == "ground_truth" and kind != "good" and stem.casefold().endswith(MASK_SUFFIX):
                    key = (category, kind, stem[: -len(MASK_SUFFIX)].casefold())
                    masks.setdefault(key, []).append(rel)
                    continue
                if (part == "train" and kind == "good") or part == "test":
                    items[rel] = _Image(rel, category, part, kind)
                    continue
            why = (
                "not in the MVTec AD layout (<category>/train/good, <category>/test/<defect type>, "
                "<category>/ground_truth/<defect type>/<stem>_mask.png); skipped"
            )
            others[rel] = stray(rel, self.label(rel), "not_in_layout", why)
        self.masks_found = sum(map(len, masks.values()))
        self.images_found = len(items) + len(others)
        for item in items.values():
            if item.kind == "good":
                continue
            stem = posixpath.splitext(posixpath.basename(item.rel))[0].casefold()
            found = masks.pop((item.category, item.kind, stem), [])
            if len(found) == 1:
                item.mask = found[0]
                continue
            label = self.label(item.rel)
            if found:
                names = ", ".join(self.label(m) for m in found)
                problem = Problem(label, None, "ambiguous_mask", f"several masks match ({names}); skipped")
            else:
                mask = f"{self.images_root.as_posix()}/{self._mask_name(item)}"
                why = f"defect image has no mask ({mask}); image left out"
                problem = Problem(label, None, "mask_missing", why)
            others[item.rel] = Record(item.rel, Read(problems=[problem]), skip=True)
        orphans = sorted(m for found in masks.values() for m in found)
        with_mask = [item for item in items.values() if item.mask is not None]
        jobs = [(item.mask or "", item.kind) for item in with_mask]
        jobs += [(m, m.split("/")[-2]) for m in orphans]
        reads = self.masks(jobs)
        for item, read in zip(with_mask, reads, strict=False):
            item.read = read
        for mask, read in zip(orphans, reads[len(with_mask) :], strict=True):
            why = (
                "mask without its defect image (<category>/test/<defect type>/<stem>.png); its boxes dropped"
            )
            problem = Problem(self.label(mask), None, "mask_without_image", why)
            yield Record(None, Read(dropped=read.all_dropped("mask_without_image"), problems=[problem]))
        layout = self.split_from == "layout"
        for rel in images:
            if rel in others:
                yield others[rel]
                continue
            item = items.get(rel)
            if item is None:  # a mask: read with its image
                continue
            # the official split; else good images by the usual seeded hash, defect images by the quotas of
            # their (category, defect type) among the images prepare keeps (strata_splits)
            official = (TRAIN_OR_VAL if item.part == "train" else "test") if layout else None
            if item.kind == "good":
                yield Record(rel, Read(), normal=True, split=official)
                continue
            assert item.read is not None and item.mask is not None
            stratum = None if layout else f"{item.category}/{item.kind}"
            yield Record(
                rel, item.read, self.label(item.mask), skip=not item.read.ok, split=official, stratum=stratum
            )

    def strata_splits(self, strata: dict[str, list[str]]) -> dict[str, str]:
        """Each (category, defect type)'s usable images ordered by a seeded hash and cut by the ratios
        (quotas): a type with MIN_PER_TYPE usable images or more has some in train and some in test."""
        s = self.settings
        ratios = (s.train_ratio, s.val_ratio, s.test_ratio)
        out: dict[str, str] = {}
        for _, members in sorted(strata.items()):
            ordered = sorted(members, key=lambda rel: (hash_unit(s.seed, rel), rel))
            n_train, n_val, _ = quotas(len(ordered), ratios, len(ordered) >= MIN_PER_TYPE)
            for k, rel in enumerate(ordered):
                out[rel] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
        return out
