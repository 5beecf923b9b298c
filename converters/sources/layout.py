"""Benchmark layouts (MVTec AD, VisA): the folders themselves say which image is normal, which defect it
shows and which split it belongs to, and the defects are drawn as pixel masks rather than boxes.

A mask becomes boxes one way for every layout: each 8-connected component of its non-zero pixels (any colour
channel; alpha ignored) is one box, its extent in pixels (``x2``/``y2`` one past the last pixel, as every
other format's boxes), in the mask's frame, which is the image's. A component smaller than
``min_box_size`` is dropped by prepare's box check like any other small box (counted in the box ledger).
The mask states its size, so prepare leaves out an image whose mask has another size (``size_mismatch``).

Decoding the masks is the layout's real cost (a PNG per defect image); ``workers`` decodes them in
processes, with the same result as one process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import ClassVar

import numpy as np

from ..parse import Problem, RawBox
from ..walk import Skip, file_label, walk_files
from .base import Read, Record, Source, SourceError, SourceSettings, failed

#: 8-connectivity: pixels touching at a corner belong to one component
EIGHT = np.ones((3, 3), dtype=bool)
#: masks read and timed in this process before choosing how many processes read the rest (workers: null)
PROBE = 16
#: decoding work that pays for a worker process (a spawned one spends about a second importing numpy,
#: scipy and PIL), as converters/twin_check.py's
SECONDS_PER_WORKER = 2.0


#: mask modes whose stored values are not the colour shown: a palette index (a palette's entry 0 may be
#: white), CMYK ink, YCbCr/LAB/HSV (black is not all 0): read as the RGB(A) colour PIL shows
_NOT_COLOUR = {"P": "RGBA", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def foreground(path: str) -> np.ndarray:
    """The mask's defect pixels: any colour channel of the colour shown not 0 (alpha ignored); OSError etc.
    when unreadable."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        shown = im.convert(_NOT_COLOUR[im.mode]) if im.mode in _NOT_COLOUR else im
        bands = shown.getbands()
        arr = np.asarray(shown)
    if arr.ndim == 2:
        return arr != 0
    colour = [i for i, b in enumerate(bands) if b != "A"] or [0]
    return (arr[..., colour] != 0).any(axis=-1)


def components(fg: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The extent (x1, y1, x2, y2) of every 8-connected component, numbered in raster order of their first
    pixel (scipy.ndimage.label's order).

    Labelled on the mask with its empty rows and columns taken out but one between two runs of non-empty
    ones: no component crosses an empty line, so the components, their order and (mapped back) their
    extents are those of the whole mask, on the few percent of its pixels a defect mask has in those lines."""
    from scipy import ndimage

    rows, cols = _kept(fg.any(axis=1)), _kept(fg.any(axis=0))
    if not len(rows):
        return []
    labelled, _ = ndimage.label(fg.take(rows, axis=0).take(cols, axis=1), structure=EIGHT)
    ys, xs = rows.tolist(), cols.tolist()
    return [
        (xs[sx.start], ys[sy.start], xs[sx.stop - 1] + 1, ys[sy.stop - 1] + 1)
        for sy, sx in ndimage.find_objects(labelled)
    ]


def _kept(present: np.ndarray) -> np.ndarray:
    """The indices of the lines that hold a pixel, and of the empty line after each run of them but the
    last (which keeps two runs apart)."""
    idx = np.flatnonzero(present)
    keep = present.copy()
    keep[idx[:-1] + 1] = True
    return np.flatnonzero(keep)


def read_mask(path: str, label: str, defect: str) -> Read:
    """One mask as a Read: a box per component labelled ``defect`` (RawBox.line ``components[k]``, 0-based in
    raster order, as a JSON path names an entry), the mask's
    size as the size it states. An unreadable or empty mask: ``ok`` False, with the problem."""
    try:
        fg = foreground(path)
    except Exception as exc:  # PIL raises many types for broken files
        why = f"cannot read the mask ({type(exc).__name__}: {exc}); its image left out"
        return failed(Problem(label, None, "unreadable_mask", why))
    height, width = fg.shape
    boxes = [
        RawBox(f"components[{k}]", (float(x1), float(y1), float(x2), float(y2)), defect)
        for k, (x1, y1, x2, y2) in enumerate(components(fg))
    ]
    read = Read(boxes=boxes, entries=len(boxes), size=(float(width), float(height)))
    if not boxes:
        why = "the mask has no defect pixel (all 0) for a defect image; its image left out"
        read.problems.append(Problem(label, None, "empty_mask", why))
        read.ok = False
    return read


def _read_mask_job(job: tuple[str, str, str]) -> Read:
    return read_mask(*job)


def _decode(jobs: Sequence[tuple[str, str, str]], n: int) -> list[Read]:
    """read_mask for every job, in order, in ``n`` processes (1: this one)."""
    n = min(n, max(1, len(jobs) // 16))  # a pool is not worth starting for a few masks
    if n == 1:
        return [read_mask(*job) for job in jobs]
    chunk = max(1, min(32, len(jobs) // (n * 8)))
    with ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_read_mask_job, jobs, chunksize=chunk))


def read_masks(jobs: Sequence[tuple[str, str, str]], workers: int | None) -> list[Read]:
    """read_mask for every (path, label, defect), in order, in ``workers`` processes; the result is the same
    for any number. None: the first PROBE masks are read here and timed, and the rest get as many
    processes as keep each busy for SECONDS_PER_WORKER (at most 8 and the CPUs): small masks stay in this
    process, a benchmark's 1-MP masks by the thousand are spread."""
    if workers is not None:
        return _decode(jobs, max(1, workers))
    from ..near_duplicates import default_workers

    start = time.perf_counter()
    head = [read_mask(*job) for job in jobs[:PROBE]]
    each = (time.perf_counter() - start) / max(1, len(head))
    rest = jobs[PROBE:]
    n = max(1, min(default_workers(), int(each * len(rest) / SECONDS_PER_WORKER)))
    return head + _decode(rest, n)


class LayoutSource(Source):
    """A benchmark's folder layout under ``dataset_root`` (data.yaml ``dataset_layout``).

    Subclasses set ``format`` (the dataset_layout value) and implement ``records``; the images walk of
    prepare lists every image file under the root, masks included, and ``records`` sorts them out."""

    keys: ClassVar[frozenset[str]] = frozenset({"dataset_root"})
    required: ClassVar[tuple[str, ...]] = ("dataset_root",)

    def __init__(self, settings: SourceSettings):
        super().__init__(settings)
        root = settings.dataset_root
        assert root is not None  # config.py requires it
        if not root.is_dir():
            raise SourceError(f"dataset_root {root} does not exist or is not a folder")
        self.images_root = root
        self.masks_found = 0
        self.images_found = 0

    def label(self, rel: str) -> str:
        """How problems name a file under the root."""
        return file_label(self.images_root, rel)

    def path(self, rel: str) -> str:
        return f"{os.path.abspath(self.images_root)}/{rel}"

    def masks(self, jobs: list[tuple[str, str]]) -> list[Read]:
        """The Reads of the masks ``(rel, defect label)``, decoded with ``workers`` processes."""
        workers = getattr(self.settings, "workers", None)
        return read_masks([(self.path(rel), self.label(rel), defect) for rel, defect in jobs], workers)

    def layout_inputs(self) -> dict[str, int | str]:
        """The report's inputs shared by the layouts (a subclass adds its own)."""
        return {
            "dataset_layout": self.format,
            "abnormal_images_found": self.images_found,
            "mask_files_found": self.masks_found,
        }

    def inputs(self) -> dict[str, int | str]:
        return self.layout_inputs()

    def scan(self, problems: list[Problem], skip: Skip | None = None) -> Iterator[tuple[str, Read]]:
        """scan-labels: the layout's records (a left-out image's problems go to ``problems``)."""
        images = walk_files(self.images_root, problems, (), skip=skip)[0]
        for rec in self.records(images, []):
            if rec.rel is None or rec.skip:
                problems += rec.read.problems
                continue
            yield rec.rel, rec.read


def find(rel: str, on_disk: dict[str, str], folded: dict[str, list[str]]) -> str | None:
    """The file a listed path names: itself, else its only case-insensitive match; None when absent."""
    if rel in on_disk:
        return rel
    matches = folded.get(rel.casefold(), [])
    return matches[0] if len(matches) == 1 else None


def index(rels: Sequence[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(path -> itself, case-folded path -> paths): what find looks in."""
    folded: dict[str, list[str]] = {}
    for rel in rels:
        folded.setdefault(rel.casefold(), []).append(rel)
    return {rel: rel for rel in rels}, folded


def stray(rel: str, label: str, kind: str, why: str) -> Record:
    """An image the layout does not use: reported with ``kind``, left out."""
    return Record(rel, Read(problems=[Problem(label, None, kind, why)]), skip=True)
