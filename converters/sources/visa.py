"""VisA (``dataset_layout: visa``): ``<object>/Data/Images/{Normal,Anomaly}/*.JPG``, the masks
``<object>/Data/Masks/Anomaly/*.png``, and a split file ``visa_split_csv`` (relative to ``dataset_root``;
VisA ships ``split_csv/1cls.csv``, ``2cls_highshot.csv`` and ``2cls_fewshot.csv``) with the columns
``object,split,label,image,mask``: paths relative to the root, ``split`` train or test, ``label`` normal or
anomaly, ``mask`` empty for a normal image.

The csv is the truth: a ``normal`` row is a normal image, an ``anomaly`` row's boxes are its mask's
components (layout.py) labelled with the csv's label (``anomaly``). ``test`` rows go to test; ``train`` rows
to train or val by the usual seeded hash (the csv has no val). Reported, by the csv's line: a row that cannot
be used (``bad_row``: a split or label not known, no image), an image listed twice (``duplicate_row``: the
first row is used, but an image any of its rows calls test goes to test, never into training), an
image not on disk (``image_missing``, its mask's boxes dropped); by the file: an anomaly without its mask
(``mask_missing``) or with an empty or unreadable one, a normal image with a mask
(``mask_for_normal_image``), an image under the root the csv does not list (``image_not_in_split_csv``).
Files in a ``Masks`` folder that no row names are counted, not reported (a csv may list a subset).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from ..parse import Problem
from ..split import TRAIN_OR_VAL
from .base import Read, Record, SourceError, SourceSettings, read_named_file
from .coco import norm_file_name
from .layout import LayoutSource, find, index, stray

COLUMNS = ("object", "split", "label", "image", "mask")
NORMAL_LABEL = "normal"
ANOMALY_LABEL = "anomaly"


@dataclass
class _Row:
    """One usable csv row."""

    line: int
    split: str  # train | test
    label: str  # as written (stripped)
    image: str  # relative to the root, normalised
    mask: str  # "" when the row names none

    @property
    def normal(self) -> bool:
        return self.label.casefold() == NORMAL_LABEL


def _is_mask_file(rel: str) -> bool:
    return any(part.casefold() == "masks" for part in rel.split("/")[:-1])


class VisaSource(LayoutSource):
    """``dataset_layout: visa`` (see the module docstring)."""

    format = "visa"
    keys: ClassVar[frozenset[str]] = LayoutSource.keys | {"visa_split_csv"}
    required: ClassVar[tuple[str, ...]] = ("dataset_root", "visa_split_csv")

    def __init__(self, settings: SourceSettings):
        super().__init__(settings)
        assert settings.visa_split_csv is not None  # config.py requires it
        self.csv_name = settings.visa_split_csv.as_posix()
        self.csv_path = self.images_root / settings.visa_split_csv
        self.csv_label = self.csv_path.as_posix()
        self.rows_read = 0

    def inputs(self) -> dict[str, int | str]:
        return {
            **self.layout_inputs(),
            "split_from": "layout",
            "visa_split_csv": self.csv_name,
            "split_csv_rows": self.rows_read,
        }

    def _table(self) -> list[list[str]]:
        """The csv's rows (header first); SourceError when it cannot be read."""
        text = read_named_file(self.csv_path, "visa_split_csv", self.csv_label)
        try:
            return list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise SourceError(f"visa_split_csv {self.csv_label}: not a csv file ({exc})") from None

    def rows(self, problems: list[Problem]) -> list[_Row]:
        """The usable rows, in file order; every other row is a problem at its line."""
        table = self._table()
        header = [c.strip().casefold() for c in table[0]] if table else []
        if not set(COLUMNS) <= set(header):
            has = ", ".join(header) or "nothing"
            raise SourceError(
                f"visa_split_csv {self.csv_label}:1: needs the columns {', '.join(COLUMNS)} (has {has})"
            )
        at = {name: header.index(name) for name in COLUMNS}
        out: list[_Row] = []
        first: dict[str, int] = {}
        for line, cells in enumerate(table[1:], start=2):
            if not any(c.strip() for c in cells):
                continue

            def cell(name: str, cells: list[str] = cells) -> str:
                return cells[at[name]].strip() if at[name] < len(cells) else ""

            split, label, image = cell("split").casefold(), cell("label"), norm_file_name(cell("image"))
            why = None
            if split not in ("train", "test"):
                why = f"split {cell('split')!r} is neither train nor test"
            elif label.casefold() not in (NORMAL_LABEL, ANOMALY_LABEL):
                why = f"label {label!r} is neither {NORMAL_LABEL} nor {ANOMALY_LABEL}"
            elif not cell("image"):
                why = "no image"
            if why is not None:
                problems.append(Problem(self.csv_label, line, "bad_row", f"{why}; row skipped"))
                continue
            if image.casefold() in first:
                earlier = out[first[image.casefold()]]
                why = f"image {image!r} already listed at line {earlier.line}"
                if split == "test" and earlier.split != "test":  # a test image is never trained on
                    why += f" as {earlier.split}; this row calls it a test image, so it goes to test (never "
                    why += "trained on)"
                    earlier.split = "test"
                problems.append(Problem(self.csv_label, line, "duplicate_row", f"{why}; row skipped"))
                continue
            first[image.casefold()] = len(out)
            mask = norm_file_name(cell("mask")) if cell("mask") else ""
            out.append(_Row(line, split, label, image, mask))
        return out

    def records(self, images: list[str], beside: list[str]) -> Iterator[Record]:
        problems: list[Problem] = []
        rows = self.rows(problems)
        self.rows_read = len(rows)
        on_disk, folded = index(images)
        listed: dict[str, _Row] = {}
        missing: list[_Row] = []
        mask_at: dict[int, str] = {}  # row line -> its mask on disk
        for row in rows:
            rel = find(row.image, on_disk, folded)
            mask = find(row.mask, on_disk, folded) if row.mask else None
            if mask is not None:
                mask_at[row.line] = mask
            if rel is None:
                missing.append(row)
            else:
                listed[rel] = row
        masks = {m for m in mask_at.values()} | {rel for rel in images if _is_mask_file(rel)}
        self.masks_found = len(masks)
        self.images_found = len(images) - len(masks)
        decode = [row for row in rows if not row.normal and row.line in mask_at]
        reads = dict(
            zip(
                (row.line for row in decode),
                self.masks([(mask_at[row.line], row.label) for row in decode]),
                strict=True,
            )
        )
        if problems:
            yield Record(None, Read(problems=problems))
        for row in missing:
            why = f"image {row.image!r} is not under {self.images_root.as_posix()}; row skipped"
            problem = Problem(self.csv_label, row.line, "image_missing", why)
            got = reads.get(row.line)
            dropped = got.all_dropped("image_missing") if got is not None else []
            yield Record(None, Read(dropped=dropped, problems=[problem]))
        for rel in images:
            row = listed.get(rel)
            label = self.label(rel)
            if row is None:
                if rel not in masks:
                    why = f"not listed in visa_split_csv ({self.csv_label}); skipped"
                    yield stray(rel, label, "image_not_in_split_csv", why)
                continue
            split = TRAIN_OR_VAL if row.split == "train" else "test"
            if row.normal:
                if row.mask:
                    why = f"a normal image (line {row.line}) with a mask ({row.mask}); skipped"
                    yield stray(rel, label, "mask_for_normal_image", why)
                else:
                    yield Record(rel, Read(), normal=True, split=split)
                continue
            read = reads.get(row.line)
            if read is None:
                named = f"{self.images_root.as_posix()}/{row.mask}" if row.mask else "none in its row"
                why = f"anomaly image (line {row.line}) has no mask ({named}); image left out"
                yield stray(rel, label, "mask_missing", why)
                continue
            yield Record(rel, read, self.label(mask_at[row.line]), skip=not read.ok, split=split)
