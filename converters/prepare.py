"""`qwenvl-roi prepare`: annotations -> checked boxes -> leak-free splits -> candidates -> regions_*.jsonl.

Also writes prepare_report.json (every box accounted for, every problem with file and line) and
dataset_meta.json (what inference needs to rebuild the prompt exactly).
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from qwenvl_roi.errors import ConvertError, OutputError
from qwenvl_roi.fileio import write_json, write_jsonl
from qwenvl_roi.outputs import legacy_json, made_by, mark, real_folder, staged
from qwenvl_roi.schemas import check_record, check_records

from . import twin_check
from .audit import position_audit
from .candidates import (
    Box,
    BoxPool,
    CandidatePolicy,
    DrawJob,
    DrawnSample,
    Layout,
    box_pool,
    compensation,
    draw_many,
    image_rngs,
)
from .config import DataConfig, coerce_config, load_data_config, report_error
from .images import ImageFixer, Outcome
from .labels import LabelResolver
from .meta import META_FILE, DatasetMeta, build_meta
from .names import shown
from .parse import CheckedBox, Problem, RawBox, check_box
from .report import BoxLedger, split_stats, split_warnings
from .runtime import paused_gc
from .sources import Dropped, Record, Source, SourceError, make_source
from .sources.frame import fit_frame
from .split import FORCED_SPLITS, IMAGE_SPLITS, SPLITS, assign_split, forced_split, group_key, holdout_matches
from .walk import IMAGE_EXTS as IMAGE_EXTS  # re-exported: predict and the preview find files as prepare does
from .walk import Skip, data_skips, file_label, walk_files
from .walk import stem_key as stem_key

REPORT_FILE = "prepare_report.json"
STRICT_REPORT_FILE = "prepare_report.strict.json"  # the report of a strict run that found problems
CONVERT_LEGACY = legacy_json(REPORT_FILE, "candidate_policy", "boxes")  # out_dir before the marker file
# every dataset file of a converted set, which a new prepare replaces or removes
DERIVED_FILES = (
    *(f"regions_{sp}.jsonl" for sp in SPLITS),
    *(f"sft_{sp}.json" for sp in SPLITS),
    *(f"sft_image_{sp}.json" for sp in IMAGE_SPLITS),
    META_FILE,
)


class StrictModeError(ConvertError):
    """Strict mode found problems; ``problems`` lists them (the report is still written)."""

    exit_code = 1

    def __init__(self, problems: list[Problem], report_path: Path, report: dict[str, Any] | None = None):
        self.problems = problems
        self.report_path = report_path
        self.report = report  # written to report_path once the staging folder is discarded
        listing = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"strict mode: {len(problems)} problem(s) (see {report_path}):\n{listing}")


@dataclass
class ImageEntry:
    """One usable image with its checked boxes (canonical labels filled in after all files are read).

    ``image`` (relative to out_dir), ``width`` and ``height`` describe the picture the trainer loads (a
    cached upright 8-bit RGB copy when the original needed one); ``defects`` are every parsed box of the
    image in that frame. ``source`` is the class (abnormal / normal); ``root`` the input folder the file
    lies in (abnormal = abnormal_dir, the images folder, normal = normal_dir), which names the sample and
    its cached copy: a normal image found under abnormal_dir (an annotation listing no object) has
    source normal and root abnormal. ``forced_split``: a split its source imposes (None: by group hash).
    """

    source: str
    rel: str  # relative to its root, as names.shown writes it (a non-UTF-8 name's bytes as \xNN)
    image: str  # relative to out_dir
    width: int
    height: int
    raw_boxes: list[tuple[tuple[float, float, float, float], RawBox, str]] = field(default_factory=list)
    boxes: list[tuple[tuple[float, float, float, float], str]] = field(default_factory=list)
    defects: list[Box] = field(default_factory=list)
    group: str = ""
    split: str = ""
    root: str = ""  # "" -> the same as source
    forced_split: str | None = None
    path: str = ""  # the original file, absolute: what the near-duplicate check decodes and caches by
    file: str = ""  # how problems name the image file (walk.file_label)
    stratum: tuple[str, str] | None = None  # (its source's stratum, its rel as the source gave it)

    def __post_init__(self) -> None:
        if not self.root:
            self.root = self.source


@dataclass
class PrepareResult:
    """What prepare produced (also on disk in out_dir)."""

    samples: dict[str, list[dict[str, Any]]]
    report: dict[str, Any]
    meta: DatasetMeta
    out_dir: Path
    # the near-duplicate hash cache's work in this run (pictures, decoded, from_cache); None when off. Not in
    # the report, which must be the same bytes on a rerun
    hashing: dict[str, int] | None = None


def defect_box(coords: tuple[float, float, float, float], width: int, height: int) -> Box | None:
    """Where an annotated box (any box parsed, even one dropped) marks the image: corners sorted, clipped to
    the image, at least one pixel wide and high; None when it lies wholly outside."""
    x1, x2 = sorted(coords[0::2])
    y1, y2 = sorted(coords[1::2])
    if x2 < 0 or y2 < 0 or x1 > width or y1 > height:
        return None
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)
    if x2 - x1 < 1:
        x1 = min(x1, width - 1.0)
        x2 = x1 + 1.0
    if y2 - y1 < 1:
        y1 = min(y1, height - 1.0)
        y2 = y1 + 1.0
    return (x1, y1, x2, y2)


class _Collector:
    """Reads both input folders into ImageEntry objects while recording every problem and box.

    The annotations come from the configured source (converters/sources/): it pairs images with their
    annotations and reads them; everything from the image checks on is the same for every format."""

    def __init__(self, cfg: DataConfig, progress: bool | None, write_dir: Path):
        self.cfg = cfg
        self.progress = progress
        self.fixer = ImageFixer(cfg.out_dir, cfg.image_fixes, cfg.image_bit_depth, write_dir=write_dir)
        self.source = make_source(cfg)
        self.found: dict[str, tuple[list[str], list[str]]] = {}
        self.problems: list[Problem] = []
        self.ledger = BoxLedger()
        self.inputs: dict[str, int | str] = {}
        self.encodings: Counter[str] = Counter()
        self.lines: Counter[str] = Counter({"read": 0, "skipped": 0})  # entries of the paired annotations

    def _drop_all(self, boxes: list[RawBox], kind: str) -> None:
        for _ in boxes:
            self.ledger.add("dropped", kind)

    def walk(self) -> None:
        """List both folders, then survey every image header (and high-bit-depth pixel ranges) at once, so one
        bit depth serves the whole dataset."""
        root = self.source.images_root
        exts = (self.source.extension,) if self.source.extension else ()
        if not root.is_dir():
            raise ConvertError(f"abnormal_dir {root} does not exist or is not a folder")
        normal = self.cfg.normal_dir
        if normal is not None and not normal.is_dir():
            raise ConvertError(
                f"normal_dir {normal} does not exist or is not a folder (set it to null for none)"
            )
        skip = self._skip(root, normal)
        read: dict[tuple[int, int], str] = {}
        self.found["abnormal"] = walk_files(root, self.problems, exts, skip=skip, seen=read)
        if normal is not None:
            # a folder the abnormal walk read (normal_dir holding abnormal_dir, or a link into it) is not
            # read again as normal: its defect images would become normal samples
            both = {
                k: ("folder_in_both_roots", f"already read under abnormal_dir as {shown(rel) or '.'!r}; not "
                    "read again as normal")
                for k, rel in read.items()
            }  # fmt: skip
            normal_skip = {**both, **{k: v for k, v in skip.items() if v[0] is not None}}
            self.found["normal"] = walk_files(normal, self.problems, exts, skip=normal_skip)
        paths = [
            f"{os.path.abspath(r)}/{rel}"
            for source, r in (("abnormal", root), ("normal", normal))
            if source in self.found
            for rel in self.found[source][0]
        ]
        self.fixer.survey(paths)

    def _skip(self, root: Path, normal: Path | None) -> Skip:
        """Folders no walk reads as data (walk.data_skips): out_dir, and for the abnormal walk normal_dir
        when it lies inside abnormal_dir."""
        return data_skips(root, self.cfg.out_dir, normal)

    def _use(self, path: str, root: str, rel: str, label: str) -> Outcome | None:
        """What the trainer will load for this image (its cached copy is written if needed; problems
        recorded), or None when it cannot be used."""
        got = self.fixer.use(path, root, rel)
        if isinstance(got, tuple):
            self.problems.append(Problem(label, None, *got))
            return None
        self.problems += [Problem(label, None, kind, reason) for kind, reason in got.problems]
        return got

    def _commit(self, checked: list[CheckedBox], annotation: str, width: int, height: int) -> None:
        for c in checked:
            self.ledger.add(c.status, c.kind)
            if c.status == "clipped":
                where = c.box
            elif c.status == "dropped" and c.kind != "box_outside":
                where = defect_box(c.raw.coords, width, height)
            else:
                where = None
            if c.status != "kept":
                self.problems.append(Problem(annotation, c.raw.line, c.kind, c.reason, box=where))

    def abnormal(self) -> list[ImageEntry]:
        """The images under abnormal_dir (the images folder), as the source pairs and reads them."""
        images, beside = self.found["abnormal"]
        self.inputs["abnormal_images_found"] = len(images)
        records: Iterator[Record] = self.source.records(images, beside)
        entries: list[ImageEntry] = []
        root = self.source.images_root
        abs_root = os.path.abspath(root)
        for rec in tqdm(
            records, total=len(images), desc="prepare: abnormal", unit="img", disable=self._disable()
        ):
            entry = self._entry(rec, root, abs_root)
            if entry is not None:
                entries.append(entry)
        self.inputs.update(self.source.inputs())
        return entries

    def _entry(self, rec: Record, root: Path, abs_root: str) -> ImageEntry | None:
        """One record checked against its image (under ``root``, absolute ``abs_root``): the entry, or None
        (every problem and box recorded, those of its annotation naming the image)."""
        start = len(self.problems)
        label = file_label(root, rec.rel) if rec.rel is not None else None  # how problems name the image
        try:
            return self._checked(rec, abs_root, label)
        finally:
            if label is not None:
                for i in range(start, len(self.problems)):
                    p = self.problems[i]
                    if p.image is None and p.file != label:
                        self.problems[i] = replace(p, image=label)

    def _checked(self, rec: Record, abs_root: str, label: str | None) -> ImageEntry | None:
        """_entry's work: the record's problems and boxes recorded, its image checked and used."""
        read = rec.read
        self.problems += read.problems
        for d in read.dropped:
            self.ledger.add("dropped", d.kind)
        if rec.rel is None or rec.skip:
            return None
        if read.encoding:
            self.encodings[read.encoding] += 1
        self.lines["read"] += read.entries
        self.lines["skipped"] += read.skipped
        rel = rec.rel
        assert label is not None  # rec.rel is not None
        path = f"{abs_root}/{rel}"
        insp = self.fixer.check(path)
        if isinstance(insp, tuple):  # unreadable, or left out by image_fixes: flag
            self.problems.append(Problem(label, None, *insp))
            reason = "image_needs_fix" if insp[0] == "image_needs_fix" else "image_unreadable"
            self._drop_all(read.boxes, reason)
            return None
        w, h = insp.width, insp.height  # as displayed: the frame the boxes were drawn in
        boxes: list[RawBox] = read.boxes
        dropped: list[Dropped] = read.dropped
        if read.normalized or read.size is not None:  # fractions to pixels; the size the annotation states
            fitted = fit_frame(read, rec.annotation, insp.width, insp.height, insp.orientation)
            self.problems += fitted.problems
            if fitted.mismatch:
                self._drop_all(boxes, "size_mismatch")
                return None
            boxes, dropped = fitted.boxes, fitted.dropped
        if rec.normal and not boxes:
            used = self._use(path, "abnormal", rel, label)
            if used is None:
                return None
            return ImageEntry(
                "normal",
                shown(rel),
                used.image,
                used.width,
                used.height,
                root="abnormal",
                forced_split=rec.split,
                path=path,
                file=label,
            )
        checked = [check_box(raw, w, h, self.cfg.min_box_size) for raw in boxes]
        if not any(c.box is not None for c in checked):
            self._commit(checked, rec.annotation, w, h)
            self.problems.append(
                Problem(label, None, "no_usable_box", "abnormal image has no usable box; skipped")
            )
            return None
        used = self._use(path, "abnormal", rel, label)
        if used is None:
            self._drop_all(boxes, "image_unreadable")
            return None
        self._commit(checked, rec.annotation, w, h)
        entry = ImageEntry(
            "abnormal", shown(rel), used.image, w, h, forced_split=rec.split, path=path, file=label
        )
        if rec.stratum is not None:
            entry.stratum = (rec.stratum, rel)
        entry.raw_boxes = [(c.box, c.raw, rec.annotation) for c in checked if c.box is not None]
        for raw in boxes + [d.raw for d in dropped if d.marks]:  # every box marks a defect, even one dropped
            d = defect_box(raw.coords, w, h)
            if d is not None:
                entry.defects.append(d)
        return entry

    def normal(self) -> list[ImageEntry]:
        root = self.cfg.normal_dir
        if root is None:
            return []
        images, others = self.found["normal"]
        self.inputs["normal_images_found"] = len(images)
        for rel in others:
            if self.source.format == "txt":
                problem = Problem(
                    file_label(root, rel), None, "txt_in_normal_dir", "txt file in normal_dir ignored"
                )
            else:
                why = f"{self.source.extension} file in normal_dir ignored (normal_dir holds images only)"
                problem = Problem(file_label(root, rel), None, "annotation_in_normal_dir", why)
            self.problems.append(problem)
        entries = []
        for rel in tqdm(images, desc="prepare: normal", unit="img", disable=self._disable()):
            path, label = f"{os.path.abspath(root)}/{rel}", file_label(root, rel)
            insp = self.fixer.check(path)
            if isinstance(insp, tuple):
                self.problems.append(Problem(label, None, *insp))
                continue
            used = self._use(path, "normal", rel, label)
            if used is not None:
                entries.append(
                    ImageEntry(
                        "normal", shown(rel), used.image, used.width, used.height, path=path, file=label
                    )
                )
        return entries

    def _disable(self) -> bool | None:
        return None if self.progress is None else not self.progress


def _stratified(entries: list[ImageEntry], source: Source) -> None:
    """The forced split of the entries their source stratifies (Record.stratum), by its quotas over the
    images kept: an image left out here (unreadable, its annotation of another size) takes no place."""
    strata: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        if e.stratum is not None:
            strata[e.stratum[0]].append(e.stratum[1])
    if strata:
        chosen = source.strata_splits(dict(strata))
        for e in entries:
            if e.stratum is not None:
                e.forced_split = chosen[e.stratum[1]]


def _resolve_labels(
    entries: list[ImageEntry], cfg: DataConfig, problems: list[Problem]
) -> dict[str, list[str]]:
    """Fill canonical labels; one problem per raw label that a non-empty label_map does not cover."""
    observed: Counter[str] = Counter(raw.label for e in entries for _, raw, _ in e.raw_boxes)
    resolver = LabelResolver(cfg.label_map, observed)
    first_seen: dict[str, tuple[str, int]] = {}
    variants: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        for box, raw, txt_label in e.raw_boxes:
            canon, covered = resolver.resolve(raw.label)
            variants[canon].add(raw.label)
            if resolver.has_map and not covered:
                first_seen.setdefault(raw.label, (txt_label, raw.line))
            e.boxes.append((box, canon))
    for raw_label, (file, line) in sorted(first_seen.items()):
        canon, _ = resolver.resolve(raw_label)
        problems.append(
            Problem(
                file,
                line,
                "label_not_in_map",
                f"label {raw_label!r} ({observed[raw_label]} box(es)) is not in label_map; used as {canon!r}",
            )
        )
    return {c: sorted(v) for c, v in sorted(variants.items())}


def _splits(
    entries: list[ImageEntry], cfg: DataConfig, key: Callable[[str], str], problems: list[Problem]
) -> list[str]:
    """Each entry's split, its group being ``key(e.group)``: test when a holdout_list entry names one of the
    group's images; else the split its source forces on its images (a benchmark's official split; when they
    disagree the later of train, val, test, reported); else the group's seeded hash."""
    roots = {"abnormal": cfg.abnormal_dir.name, "normal": cfg.normal_dir.name if cfg.normal_dir else ""}
    forced: set[str] = set()
    matched: set[str] = set()
    imposed: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        hits = holdout_matches(cfg.holdout_list, e.rel, roots[e.root])
        if hits:
            forced.add(key(e.group))
            matched.update(hits)
        if e.forced_split is not None:
            imposed[key(e.group)].add(e.forced_split)
    for entry in cfg.holdout_list:
        if entry not in matched:
            problems.append(
                Problem(
                    "holdout_list",
                    None,
                    "holdout_not_found",
                    f"holdout_list entry {entry!r} names no usable image",
                )
            )
    chosen: dict[str, str] = {}
    for group, splits in sorted(imposed.items()):
        chosen[group], agreed = forced_split(splits, cfg.seed, group, cfg.train_ratio, cfg.val_ratio)
        if not agreed:
            listed = ", ".join(sorted(splits, key=FORCED_SPLITS.index))
            problems.append(
                Problem(
                    "split",
                    None,
                    "forced_split_conflict",
                    f"group {group!r} holds images forced into {listed}; "
                    f"the whole group goes to {chosen[group]} (a group never spans two splits)",
                )
            )
    for k in forced:
        chosen[k] = "test"
    out = []
    for e in entries:
        k = key(e.group)
        if k not in chosen:  # by the group's hash, computed once per group
            chosen[k] = assign_split(cfg.seed, k, cfg.train_ratio, cfg.val_ratio)
        out.append(chosen[k])
    return out


def _own(group: str) -> str:
    return group


def _assign_splits(
    entries: list[ImageEntry],
    cfg: DataConfig,
    problems: list[Problem],
    write_dir: Path,
    progress: bool | None = None,
) -> tuple[list[str], dict[str, Any], twin_check.TwinCheck | None]:
    """Group and split every image; returns warnings (e.g. one folder holding a whole source), the
    report's ``near_duplicates`` section and the near-duplicate search (None when off).

    A group never spans two splits (see _splits). Twins (converters/twin_check.py) are found once the groups
    are known: ``near_duplicates: group`` splits the folders that share a twin set as one (their union's
    key), holdout matching included, so a set never spans two splits either; ``report`` splits by folder and
    lists the sets that span splits. Samples keep their folder as ``group``."""
    for e in entries:
        e.group = group_key(e.root, e.rel, cfg.split_by_parent, cfg.split_group_depth)
    twins = twin_check.search(entries, cfg, write_dir, progress)
    alone = None
    if twins is not None and twins.merged:  # by folder alone: what the sets would span without the merge
        alone = _splits(entries, cfg, _own, [])  # its problems are the final pass's, reported below
    key = twins.split_key if twins is not None else _own
    for e, split in zip(entries, _splits(entries, cfg, key, problems), strict=True):
        e.split = split
    near, twin_warns = twin_check.section(twins, entries, alone, problems)
    warns = []
    if cfg.split_by_parent:
        for source in ("abnormal", "normal"):
            groups = {e.group for e in entries if e.source == source}
            n = sum(e.source == source for e in entries)
            if len(groups) == 1 and n > 1:
                warns.append(
                    f"split_by_parent is on but all {n} {source} images sit in one folder, so they all land "
                    "in one split; set split_by_parent: false for a flat folder"
                )
    return warns + twin_warns, near, twins


def _rel_box(b: Box, e: ImageEntry) -> Box:
    return (b[0] / e.width, b[1] / e.height, b[2] / e.width, b[3] / e.height)


def _placement(e: ImageEntry) -> tuple[list[Box], Layout | None]:
    """An image's kept positives as (cx/W, cy/H, w/W, h/H), and its layout (None without positives)."""
    if not e.boxes:
        return [], None
    positives = [
        (
            (b[0] + b[2]) / 2 / e.width,
            (b[1] + b[3]) / 2 / e.height,
            (b[2] - b[0]) / e.width,
            (b[3] - b[1]) / e.height,
        )
        for b, _ in e.boxes
    ]
    layout = Layout(tuple(_rel_box(b, e) for b, _ in e.boxes), tuple(_rel_box(d, e) for d in e.defects))
    return positives, layout


def _samples(
    entries: list[ImageEntry], cfg: DataConfig, progress: bool | None
) -> tuple[list[dict], Counter[str]]:
    """Every image's samples (regions drawn), and how many samples per source came out short."""
    policy = CandidatePolicy.from_config(cfg)
    # Negatives and decoys of a split copy that split's positives and layouts, so no sample is placed by
    # looking at another split's annotations (test positives never shape training negatives); a split
    # without positives copies the whole dataset's. One acceptance table (whole dataset) weights them all.
    placed = [(e.split, *_placement(e)) for e in entries if e.boxes]
    every_positive = [p for _, ps, _ in placed for p in ps]
    table = compensation(every_positive, [lay for _, _, lay in placed if lay], policy, cfg.seed)
    sources: dict[str | None, tuple[BoxPool, list[Layout]]] = {}
    for sp in (*SPLITS, None):
        chosen = [(ps, lay) for split, ps, lay in placed if sp is None or split == sp]
        positives = every_positive if sp is None else [p for ps, _ in chosen for p in ps]
        sources[sp] = (box_pool(positives, table), [lay for _, lay in chosen if lay])
    samples: list[dict[str, Any]] = []
    short: Counter[str] = Counter()
    disable = None if progress is None else not progress
    jobs = []
    rngs = image_rngs(cfg.seed, [f"{e.root}/{e.rel}" for e in entries])
    for e, rng in zip(entries, rngs, strict=True):
        pool, layouts = sources[e.split] if len(sources[e.split][0]) else sources[None]
        jobs.append(DrawJob(rng, e.width, e.height, e.boxes, pool, e.defects, layouts))
    batch = 4096  # images drawn together (progress granularity; the result does not depend on it)
    drawn_per_image: list[list[DrawnSample]] = []
    with tqdm(total=len(jobs), desc="prepare: candidates", unit="img", disable=disable) as bar:
        for i in range(0, len(jobs), batch):
            drawn_per_image += draw_many(jobs[i : i + batch], policy)
            bar.update(len(jobs[i : i + batch]))
    for e, drawn_all in zip(entries, drawn_per_image, strict=True):
        name = f"{e.root}/{e.rel}"  # by input folder: a normal image of abnormal_dir cannot meet normal_dir's
        for k, drawn in enumerate(drawn_all):
            short[e.source] += len(drawn.regions) < drawn.wanted
            regions = drawn.regions
            samples.append(
                {
                    "sample_id": f"{name}#{k}",
                    "image": e.image,  # portable: relative to the regions file's folder
                    "width": e.width,
                    "height": e.height,
                    "split": e.split,
                    "group": e.group,
                    "source": e.source,
                    "regions": regions,
                    "positive_region_ids": [r["id"] for r in regions if r["positive"]],
                }
            )
    return samples, short


def prepare(
    config: DataConfig | str | Path | dict, strict: bool | None = None, progress: bool | None = None
) -> PrepareResult:
    """Run prepare; raises ConvertError on bad config/input and StrictModeError when strict finds problems.

    out_dir is replaced as one set (qwenvl_roi.outputs.staged): the sharegpt files of an earlier build-sft
    go with it, since they no longer match the new regions.
    """
    cfg = coerce_config(config)
    with paused_gc(), strict_report(cfg), staged_out_dir(cfg) as stage:
        return prepare_into(cfg, stage, strict, progress)


def staged_out_dir(cfg: DataConfig) -> AbstractContextManager[Path]:
    """The staging folder that becomes cfg.out_dir when the converters succeed (see qwenvl_roi.outputs)."""
    return staged(cfg.out_dir, "convert", legacy=CONVERT_LEGACY)


@contextmanager
def strict_report(cfg: DataConfig) -> Iterator[None]:
    """Strict mode's failure leaves out_dir's set as it was (the staging folder is discarded) and writes
    its report beside the set as prepare_report.strict.json, which the error message names."""
    try:
        yield
    except StrictModeError as exc:
        if exc.report is not None:
            folder = real_folder(cfg.out_dir)
            folder.mkdir(parents=True, exist_ok=True)
            if made_by(folder) is None:
                mark(folder, "convert")
            write_json(exc.report_path, exc.report)
        raise


def prepare_into(
    cfg: DataConfig, write_dir: Path, strict: bool | None = None, progress: bool | None = None
) -> PrepareResult:
    """prepare writing into ``write_dir`` (a staging folder that becomes cfg.out_dir); paths inside the
    outputs are computed for cfg.out_dir. Strict mode's problems leave the report alone in the set."""
    strict = cfg.strict if strict is None else strict
    from PIL import Image

    with warnings.catch_warnings():  # huge industrial images are fine: only headers are read
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            col = _Collector(cfg, progress, write_dir)
            col.walk()
            entries = col.abnormal() + col.normal()
        except SourceError as exc:  # a names file or COCO file that cannot be read stops the command
            raise ConvertError(str(exc)) from None
    images = col.fixer.finish()
    _stratified(entries, col.source)
    variants = _resolve_labels(entries, cfg, col.problems)
    labels = sorted(variants)
    uses_depth = cfg.image_bit_depth is not None or col.fixer.counts_max is not None
    meta = build_meta(cfg, labels, col.fixer.bit_depth if uses_depth else None)
    warns, near_duplicates, twins = _assign_splits(entries, cfg, col.problems, write_dir, progress)
    samples, short = _samples(entries, cfg, progress)
    n_short = sum(short.values())
    if n_short:
        warns.append(
            f"{n_short} sample(s) got fewer candidates than drawn (no room for negatives with IoU <= "
            f"{cfg.max_neg_iou:g} and cover <= {cfg.max_neg_cover:g}); their count can hint at the class"
        )
    audit = position_audit(samples, cfg.seed)
    for name in ("positive_vs_negative", "abnormal_vs_normal"):
        auroc = audit[name]["auroc"]
        if auroc is not None and auroc > audit["limit"]:
            warns.append(
                f"position_audit: a classifier on box position and size alone reaches AUROC {auroc:.3f} "
                f"({name.replace('_', ' ')}), above {audit['limit']}; positions may give the answer away"
            )
    stats = split_stats(samples)
    warns += split_warnings(stats, labels)
    out_dir = cfg.out_dir
    report: dict[str, Any] = {
        "ok": not (strict and col.problems),
        "strict": strict,
        "inputs": {
            **dict(sorted(col.inputs.items())),
            "abnormal_images_used": sum(e.source == "abnormal" for e in entries),
            "normal_images_used": sum(e.source == "normal" for e in entries),
            **(
                {}
                if col.source.format == "txt"
                else {"normal_images_from_abnormal_dir": sum(e.root != e.source for e in entries)}
            ),
            col.source.encodings_key: dict(sorted(col.encodings.items())),
        },
        "lines": dict(col.lines),
        "images": images,
        "boxes": col.ledger.as_dict(),
        "labels": {c: {"variants": v} for c, v in variants.items()},
        "candidate_policy": {
            "count_range": [CandidatePolicy.from_config(cfg).lo, cfg.max_boxes_per_image],
            "abnormal_neg_per_pos": cfg.abnormal_neg_per_pos,
            "max_neg_iou": cfg.max_neg_iou,
            "max_neg_cover": cfg.max_neg_cover,
            "samples_short_of_candidates": n_short,
            "samples_short_by_source": {src: short[src] for src in ("abnormal", "normal")},
        },
        "position_audit": audit,
        "split_policy": {
            "split_by_parent": cfg.split_by_parent,
            "split_group_depth": cfg.split_group_depth,
            "groups": len({s["group"] for s in samples}),
        },
        "splits": stats,
        "near_duplicates": near_duplicates,
        "warnings": warns,
        "problem_counts": dict(sorted(Counter(p.kind for p in col.problems).items())),
        "problems": [p.as_dict() for p in col.problems],
    }
    by_split = {sp: [s for s in samples if s["split"] == sp] for sp in SPLITS}
    # the published contracts (qwenvl_roi/schemas), checked before anything is written: a ContractError is a
    # bug of ours, never a half-written set
    check_record("prepare_report", report)
    check_records("regions", samples)
    if strict and col.problems:  # the set stays as it was; the report goes beside it (strict_report)
        raise StrictModeError(col.problems, real_folder(out_dir) / STRICT_REPORT_FILE, report)
    for name in DERIVED_FILES:  # the previous run's datasets: rewritten below
        (write_dir / name).unlink(missing_ok=True)
    (write_dir / STRICT_REPORT_FILE).unlink(missing_ok=True)  # an earlier strict failure's, now outdated
    for sp in SPLITS:
        write_jsonl(write_dir / f"regions_{sp}.jsonl", by_split[sp])
    write_json(write_dir / META_FILE, meta.model_dump())
    write_json(write_dir / REPORT_FILE, report)
    hashing = None
    if twins is not None:
        found = twins.result
        hashing = {"pictures": found.pictures, "decoded": found.decoded, "from_cache": found.cached}
    return PrepareResult(by_split, report, meta, out_dir, hashing)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="data.yaml (see configs/data.yaml)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero when any problem is found")


def summary_lines(result: PrepareResult) -> list[str]:
    """A short human summary for the terminal."""
    r = result.report
    b = r["boxes"]
    lines = [
        f"boxes: read {b['read']}, kept {b['kept']}, clipped {b['clipped']}, dropped {b['dropped']}",
        f"problems: {len(r['problems'])}" + (f" {r['problem_counts']}" if r["problems"] else ""),
    ]
    im = r["images"]
    if im["converted"] or im["left_out"]:
        why = ", ".join(f"{k} {v}" for k, v in im["converted_by_reason"].items())
        lines.append(
            f"images: {im['converted']} given an upright 8-bit RGB copy in {im['cache_dir']}/ "
            f"({why or '-'}), {im['left_out']} left out (image_fixes: {im['image_fixes']})"
        )
    audit = r["position_audit"]
    if audit["skipped"] is None:
        pn, an = audit["positive_vs_negative"]["auroc"], audit["abnormal_vs_normal"]["auroc"]
        lines.append(
            "position audit (AUROC from box positions alone, near 0.5 is good): "
            f"positive vs negative {pn}, abnormal vs normal {an}"
        )
    for sp in SPLITS:
        s = r["splits"][sp]
        labs = ", ".join(f"{k}={v['boxes']}" for k, v in s["labels"].items()) or "-"
        lines.append(
            f"{sp:5s}: {s['images']} images ({s['abnormal_images']} abnormal, {s['normal_images']} normal), "
            f"{s['samples']} samples; boxes per label: {labs}"
        )
    near = r.get("near_duplicates") or {"mode": "off"}
    if result.hashing is not None and near["mode"] != "off":
        h = result.hashing
        lines.append(
            f"near-duplicates ({near['mode']}): {h['pictures']} pictures ({h['decoded']} decoded, "
            f"{h['from_cache']} from the cache), {near['set_count']} set(s), "
            f"{near['sets_split_now']} spanning splits, {near['label_conflicts']} label conflict(s)"
        )
    lines += [f"warning: {w}" for w in r["warnings"]]
    lines.append(f"wrote {result.out_dir}/regions_{{train,val,test}}.jsonl, {META_FILE}, {REPORT_FILE}")
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        result = prepare(load_data_config(args.config), strict=True if args.strict else None)
    except (ConvertError, OutputError) as exc:
        return report_error(exc)
    print("\n".join(summary_lines(result)))
    return 0
