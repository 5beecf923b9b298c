"""The one interface every annotation format implements: a source turns a dataset's annotations into
per-image records; everything after it (image checks, box checks, the box ledger, labels, splits,
candidates, the report) is shared and lives in converters/prepare.py.

A format has two parts, kept apart so each can be used alone:

- a *reader*: a function that reads one annotation (a file, or one image's part of a COCO file) into a
  ``Read`` (boxes with labels, boxes that cannot be used, problems with file and line or JSON path). It
  never opens an image; boxes are in the frame the labelling tool showed (EXIF orientation applied), or
  fractions of it (``normalized``, YOLO), so `predict --boxes` can reuse it on detector output;
- a *source* (a ``Source`` subclass, one entry in sources/__init__.py): the layout, which annotation belongs
  to which image. ``records`` yields one ``Record`` per image (or per annotation that found no image), in
  a deterministic order. ``PerImageFiles`` is the layout of one file per image (txt, labelme, VOC, YOLO).
"""

from __future__ import annotations

import math
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from ..names import shown
from ..parse import Problem, RawBox, read_decoded
from ..walk import Skip, file_label, stem_key, walk_files


class SourceError(Exception):
    """A dataset-wide input error that stops the command (a missing COCO file, unreadable class names);
    the message names the file. prepare reports it as a ConvertError (exit 2)."""


class SourceSettings(Protocol):
    """The data.yaml keys a source reads (converters/config.py DataConfig has them all)."""

    annotation_format: str
    abnormal_dir: Path
    annotations_dir: Path | None
    yolo_names: Path | None
    coco_json: Path | None
    column_delim: str
    inner_coord_delims: list[str]
    coords_are_xyxy: bool
    # benchmark layouts (layout.py): where, how to split, what prepare will drop, how many processes
    dataset_layout: str | None
    dataset_root: Path | None
    visa_split_csv: Path | None
    split_from: str | None
    seed: int
    train_ratio: float
    val_ratio: float
    test_ratio: float
    min_box_size: float
    workers: int | None


@dataclass(frozen=True, slots=True)
class Dropped:
    """A box read but not usable: counted as dropped with ``kind`` (the problem kind given for it).

    ``marks``: its place still marks a defect on its image (a box without a usable label), so negatives
    keep clear of it; False when it may not belong to the image at all (another image's annotation)."""

    raw: RawBox
    kind: str
    marks: bool = False


@dataclass(slots=True)
class Read:
    """What one annotation says, before any image is looked at.

    ``entries``: the objects it lists (txt/YOLO lines with content, labelme shapes, VOC objects, COCO
    annotations); ``skipped``: those not used (each one is a problem; a box dropped later as too small or
    outside the image is not counted here). ``size``: the image
    size the annotation states ((width, height), e.g. labelme imageWidth/imageHeight, VOC <size>, COCO
    images[]), checked against the image at ``size_at``. ``normalized``: coordinates are fractions of the
    image's width and height (YOLO). ``ok``: False when the annotation as a whole cannot be used (unreadable,
    or it names another image), so an empty one is not a normal image.
    """

    boxes: list[RawBox] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    entries: int = 0
    skipped: int = 0
    encoding: str | None = None
    size: tuple[float, float] | None = None
    size_at: int | str | None = None
    normalized: bool = False
    ok: bool = True

    @property
    def lists_nothing(self) -> bool:
        """Read fine and lists no object: the annotation of a normal image."""
        return self.ok and self.entries == 0

    def all_dropped(self, kind: str) -> list[Dropped]:
        """Every box of this annotation, dropped for ``kind`` (its image cannot be used)."""
        return [Dropped(b, kind) for b in self.boxes] + [Dropped(d.raw, kind) for d in self.dropped]


@dataclass(slots=True)
class Record:
    """One image as a source gives it, or (``rel`` None) annotations that found no image.

    ``rel``: the image's path relative to the source's images root (POSIX, as walk_files gives it).
    ``annotation``: how problems name its annotation file (box problems point into it at ``raw.line``).
    ``skip``: the image is not used; ``read.problems`` say why and ``read.dropped`` hold its boxes.
    ``normal``: a normal image (its annotation lists no object, or a layout says so), never given boxes.
    ``split``: a split the layout forces (a benchmark's official split): train, val, test, or ``trainval``
    (split.TRAIN_OR_VAL: train or val by the group's seeded hash); None: the group's seeded hash.
    ``stratum``: the images sharing it are split by the source's quotas (Source.strata_splits) once prepare
    knows which of them are usable (MVTec's category and defect type); None: not stratified.
    """

    rel: str | None
    read: Read
    annotation: str = ""
    skip: bool = False
    normal: bool = False
    split: str | None = None
    stratum: str | None = None


class Source(ABC):
    """One annotation format and layout. Subclasses set ``format`` and implement ``records`` and ``scan``.

    ``extension``: the per-image annotation files' extension (prepare's walk of the images folder collects
    them, and reports them when found in normal_dir); None for one file for the whole dataset (COCO).
    ``keys``: the format-specific data.yaml keys it reads; ``required``: those it cannot do without
    (config.py checks both, with the key's line).
    """

    format: ClassVar[str]
    extension: ClassVar[str | None] = None
    keys: ClassVar[frozenset[str]] = frozenset()
    required: ClassVar[tuple[str, ...]] = ()
    #: the report's inputs key for encoding -> annotation files read in it
    encodings_key: ClassVar[str] = "annotation_encodings"

    def __init__(self, settings: SourceSettings):
        self.settings = settings
        self.images_root = settings.abnormal_dir
        self.files_found = 0

    @abstractmethod
    def records(self, images: list[str], beside: list[str]) -> Iterator[Record]:
        """Records for ``images`` (relative to images_root, in walk order); ``beside``: the files with
        ``extension`` found in the same walk. Problems of the layout itself come as records without rel."""

    @abstractmethod
    def scan(self, problems: list[Problem], skip: Skip | None = None) -> Iterator[tuple[str, Read]]:
        """Every annotation the source can find, images or not (scan-labels): (what it annotates, Read);
        ``skip``: the folders prepare's walk does not read (walk.data_skips), not read here either."""

    def strata_splits(self, strata: dict[str, list[str]]) -> dict[str, str]:
        """The split of every image of ``strata`` (stratum -> the rels of its usable images, those prepare
        kept), for the sources that give records a ``stratum``; rel -> split."""
        raise NotImplementedError(f"{type(self).__name__} gives no record a stratum")

    def inputs(self) -> dict[str, int | str]:
        """The report's ``inputs`` entries of this source."""
        return {"annotation_format": self.format, "annotation_files_found": self.files_found}


class PerImageFiles(Source):
    """One annotation file per image, at the image's relative path with the format's extension: beside the
    image, or under ``annotations_dir`` in the same sub-folders (VOC's Annotations/ beside JPEGImages/,
    Ultralytics' labels/ beside images/). Paired by the path without extension, case-folded (stem_key).

    An image without a file, a file without an image, several images or files for one stem: reported,
    never used (and an image without an annotation is never taken as normal)."""

    keys: ClassVar[frozenset[str]] = frozenset({"annotations_dir"})
    #: problem kinds (also the ledger's dropped reasons) of the pairing
    orphan_kind: ClassVar[str] = "annotation_without_image"
    missing_kind: ClassVar[str] = "image_without_annotation"
    ambiguous_kind: ClassVar[str] = "ambiguous_annotation"
    noun: ClassVar[str] = "annotation"
    #: whether an annotation that lists nothing makes a normal image (the seed's txt: no, it is an error)
    empty_is_normal: ClassVar[bool] = True

    def __init__(self, settings: SourceSettings):
        super().__init__(settings)
        self.annotations_root = settings.annotations_dir  # None: beside the images

    @abstractmethod
    def read_file(self, path: str, label: str, image_name: str | None) -> Read:
        """Read one annotation file (``label``: how problems name it; ``image_name``: the image it belongs
        to, for formats that name their image, None when unknown)."""

    def wanted(self, root: Path, rel: str) -> bool:
        """Whether a file with the extension is an annotation (YOLO: not its own classes.txt)."""
        return True

    # --- messages (the seed's txt keeps its own words) ---
    def _place(self) -> str:
        if self.annotations_root is None:
            return "beside it"
        return f"at the same path under {self.images_root.as_posix()}"

    def orphan_reason(self) -> str:
        return f"{self.noun} has no image {self._place()}; skipped"

    def missing_reason(self, rel: str) -> str:
        if self.annotations_root is None:
            where = f"beside it ({posixpath.splitext(shown(rel))[0]}{self.extension})"
        else:
            where = f"{self.annotations_root.as_posix()}/{posixpath.splitext(shown(rel))[0]}{self.extension}"
        return (
            f"image has no {self.extension} annotation {where}; skipped (an image is normal only when its "
            "annotation lists no object)"
        )

    def ambiguous_reason(self, names: str) -> str:
        return f"several {self.noun} files match ({names}); skipped"

    # --- layout ---
    def _annotation_files(self, beside: list[str]) -> tuple[Path, list[str], list[Problem]]:
        """(the folder annotation paths are relative to, the annotation files, problems of its walk)."""
        if self.annotations_root is None:
            root, files, problems = self.images_root, beside, []
        else:
            root = self.annotations_root
            if not root.is_dir():
                raise SourceError(f"annotations_dir {root} does not exist or is not a folder")
            problems = []
            files = walk_files(root, problems, (self.extension or "",))[1]
        if type(self).wanted is not PerImageFiles.wanted:
            files = [f for f in files if self.wanted(root, f)]
        return root, files, problems

    def records(self, images: list[str], beside: list[str]) -> Iterator[Record]:
        root = self.images_root
        ann_root, files, walk_problems = self._annotation_files(beside)
        self.files_found = len(files)
        if walk_problems:
            yield Record(None, Read(problems=walk_problems))
        by_stem: dict[str, list[str]] = {}
        stem_of = {rel: stem_key(rel) for rel in images}
        for rel in images:
            by_stem.setdefault(stem_of[rel], []).append(rel)
        file_by_stem: dict[str, list[str]] = {}
        for rel in files:
            file_by_stem.setdefault(stem_key(rel), []).append(rel)

        def read_all(rels: Iterable[str], kind: str) -> list[Dropped]:
            out: list[Dropped] = []
            for t in rels:
                out += self.read_file(f"{ann_root}/{t}", file_label(ann_root, t), None).all_dropped(kind)
            return out

        for stem in sorted(set(file_by_stem) - set(by_stem)):
            for rel in file_by_stem[stem]:
                problem = Problem(file_label(ann_root, rel), None, self.orphan_kind, self.orphan_reason())
                yield Record(None, Read(dropped=read_all([rel], self.orphan_kind), problems=[problem]))
        for rel in images:
            stem = stem_of[rel]
            file_rels = file_by_stem.get(stem, [])
            if len(file_rels) == 1 and len(by_stem[stem]) == 1:  # the usual case first
                ann_label = file_label(ann_root, file_rels[0])
                read = self.read_file(f"{ann_root}/{file_rels[0]}", ann_label, posixpath.basename(rel))
                yield Record(rel, read, ann_label, normal=self.empty_is_normal and read.lists_nothing)
                continue
            label = file_label(root, rel)
            if len(by_stem[stem]) > 1:
                others = ", ".join(map(shown, by_stem[stem]))
                why = f"several images share this name stem ({others}); skipped"
                dropped = read_all(file_rels, "ambiguous_image") if rel == by_stem[stem][0] else []
                problem = Problem(label, None, "ambiguous_stem", why)
                yield Record(rel, Read(dropped=dropped, problems=[problem]), skip=True)
                continue
            if not file_rels:
                problem = Problem(label, None, self.missing_kind, self.missing_reason(rel))
                yield Record(rel, Read(problems=[problem]), skip=True)
                continue
            if len(file_rels) > 1:
                why = self.ambiguous_reason(", ".join(map(shown, file_rels)))
                problem = Problem(label, None, self.ambiguous_kind, why)
                dropped = read_all(file_rels, self.ambiguous_kind)
                yield Record(rel, Read(dropped=dropped, problems=[problem]), skip=True)

    def scan(self, problems: list[Problem], skip: Skip | None = None) -> Iterator[tuple[str, Read]]:
        ann_root = self.annotations_root or self.images_root
        found = walk_files(ann_root, problems, (self.extension or "",), skip=skip)[1]
        files = [f for f in found if self.wanted(ann_root, f)]
        self.files_found = len(files)
        for rel in files:
            yield rel, self.read_file(f"{ann_root}/{rel}", file_label(ann_root, rel), None)


def read_named_file(path: str | Path, key: str, label: str) -> str:
    """The text (BOM removed) of a dataset-wide file a data.yaml key names (coco_json, yolo_names,
    visa_split_csv); SourceError naming the key and the file (``label``) when it cannot be read or decoded:
    without it nothing of the dataset can be used, so the command stops."""
    try:
        decoded = read_decoded(path)
    except OSError as exc:
        raise SourceError(f"{key} {label}: cannot read: {exc.strerror or exc}") from None
    if decoded is None:
        raise SourceError(f"{key} {label}: neither UTF-8, UTF-16 nor GBK")
    return decoded[0]


def read_text(path: str, label: str) -> tuple[str, str] | Problem:
    """(text, encoding) of an annotation file (UTF-8 with or without BOM, UTF-16 with BOM, GBK), or the
    problem that stops it being read."""
    try:
        decoded = read_decoded(path)
    except OSError as exc:
        return Problem(label, None, "unreadable_annotation", f"cannot read file: {exc.strerror or exc}")
    if decoded is None:
        return Problem(label, None, "encoding", "file is neither UTF-8 (with or without BOM), UTF-16 nor GBK")
    return decoded


def failed(problem: Problem, encoding: str | None = None) -> Read:
    """The Read of an annotation that cannot be used at all."""
    return Read(problems=[problem], encoding=encoding, ok=False)


def finite(values: Iterable[object]) -> list[float] | None:
    """The values as floats when every one is a finite number (not a bool), else None."""
    out: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            return None
        try:
            f = float(v)
        except (ValueError, OverflowError):
            return None
        if not math.isfinite(f):
            return None
        out.append(f)
    return out


def extent(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """The box around some points (a polygon's extent)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))
