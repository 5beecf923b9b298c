"""`qwenvl-roi prepare`: annotations -> checked boxes -> leak-free splits -> candidates -> regions_*.jsonl.

Also writes prepare_report.json (every box accounted for, every problem with file and line) and
dataset_meta.json (what inference needs to rebuild the prompt exactly).
"""

from __future__ import annotations

import argparse
import os
import posixpath
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .candidates import CandidatePolicy, draw_samples, image_rng, size_pool
from .config import ConvertError, DataConfig, coerce_config, load_data_config, report_error
from .labels import LabelResolver
from .meta import META_FILE, DatasetMeta, build_meta
from .parse import LineParser, Problem, RawBox, check_box, parse_txt
from .report import BoxLedger, split_stats, split_warnings
from .runtime import paused_gc
from .split import SPLITS, assign_split, group_key, holdout_matches
from .write import write_json, write_jsonl

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
REPORT_FILE = "prepare_report.json"


class StrictModeError(ConvertError):
    """Strict mode found problems; ``problems`` lists them (the report is still written)."""

    exit_code = 1

    def __init__(self, problems: list[Problem], report_path: Path):
        self.problems = problems
        self.report_path = report_path
        listing = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"strict mode: {len(problems)} problem(s) (see {report_path}):\n{listing}")


@dataclass
class ImageEntry:
    """One usable image with its checked boxes (canonical labels filled in after all files are read)."""

    source: str
    rel: str
    path: str
    width: int
    height: int
    raw_boxes: list[tuple[tuple[float, float, float, float], RawBox, str]] = field(default_factory=list)
    boxes: list[tuple[tuple[float, float, float, float], str]] = field(default_factory=list)
    group: str = ""
    split: str = ""


@dataclass
class PrepareResult:
    """What prepare produced (also on disk in out_dir)."""

    samples: dict[str, list[dict[str, Any]]]
    report: dict[str, Any]
    meta: DatasetMeta
    out_dir: Path


def walk_files(root: Path) -> tuple[list[str], list[str]]:
    """(image paths, txt paths) under root, relative POSIX, sorted; hidden files and folders are skipped."""
    images: list[str] = []
    txts: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            ext = posixpath.splitext(name)[1].lower()
            if ext in IMAGE_EXTS:
                images.append(rel)
            elif ext == ".txt":
                txts.append(rel)
    return images, txts


def read_size(path: str) -> tuple[int, int] | str:
    """(width, height) from the image header (no pixel decoding), or the reason it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError as exc:
        return f"too large for PIL ({exc})"
    except Exception as exc:  # PIL raises many exception types for corrupt headers
        return f"{type(exc).__name__}: {exc}"
    if w <= 0 or h <= 0:
        return f"image has size {w}x{h}"
    return w, h


def _stem_key(rel: str) -> str:
    return posixpath.splitext(rel)[0].casefold()


class _Collector:
    """Reads both input folders into ImageEntry objects while recording every problem and box."""

    def __init__(self, cfg: DataConfig, progress: bool | None):
        self.cfg = cfg
        self.progress = progress
        self.problems: list[Problem] = []
        self.ledger = BoxLedger()
        self.parser = LineParser(cfg.column_delim, cfg.inner_coord_delims, cfg.coords_are_xyxy)
        self.inputs: Counter[str] = Counter()
        self.encodings: Counter[str] = Counter()
        self.lines: Counter[str] = Counter({"read": 0, "skipped": 0})  # non-blank lines of matched txt files

    def _label(self, root: Path, rel: str) -> str:
        """How problems name a file: the configured root (as written) joined with the relative path."""
        return f"{root.as_posix()}/{rel}"

    def _drop_all(self, boxes: list[RawBox], kind: str) -> None:
        for _ in boxes:
            self.ledger.add("dropped", kind)

    def abnormal(self) -> list[ImageEntry]:
        root = self.cfg.abnormal_dir
        if not root.is_dir():
            raise ConvertError(f"abnormal_dir {root} does not exist or is not a folder")
        abs_root = os.path.abspath(root)
        images, txts = walk_files(root)
        self.inputs["abnormal_images_found"] = len(images)
        self.inputs["txt_files_found"] = len(txts)
        by_stem: dict[str, list[str]] = defaultdict(list)
        stem_of = {rel: _stem_key(rel) for rel in images}
        for rel in images:
            by_stem[stem_of[rel]].append(rel)
        txt_by_stem: dict[str, list[str]] = defaultdict(list)
        for rel in txts:
            txt_by_stem[_stem_key(rel)].append(rel)

        entries: list[ImageEntry] = []
        for stem in sorted(set(txt_by_stem) - set(by_stem)):
            for rel in txt_by_stem[stem]:
                parsed = parse_txt(f"{root}/{rel}", self._label(root, rel), None, self.parser)
                self._drop_all(parsed.boxes + [b for b, _ in parsed.rejected], "txt_without_image")
                self.problems.append(
                    Problem(
                        self._label(root, rel),
                        None,
                        "txt_without_image",
                        "txt has no image beside it; skipped",
                    )
                )
        for rel in tqdm(images, desc="prepare: abnormal", unit="img", disable=self._disable()):
            label = self._label(root, rel)
            stem = stem_of[rel]
            txt_rels = txt_by_stem.get(stem, [])
            if len(by_stem[stem]) > 1:
                others = ", ".join(by_stem[stem])
                self.problems.append(
                    Problem(
                        label,
                        None,
                        "ambiguous_stem",
                        f"several images share this name stem ({others}); skipped",
                    )
                )
                if rel == by_stem[stem][0]:
                    for t in txt_rels:
                        parsed = parse_txt(f"{root}/{t}", self._label(root, t), None, self.parser)
                        self._drop_all(parsed.boxes + [b for b, _ in parsed.rejected], "ambiguous_image")
                continue
            if not txt_rels:
                self.problems.append(
                    Problem(label, None, "image_without_txt", "abnormal image has no .txt beside it; skipped")
                )
                continue
            if len(txt_rels) > 1:
                self.problems.append(
                    Problem(
                        label,
                        None,
                        "ambiguous_txt",
                        f"several txt files match ({', '.join(txt_rels)}); skipped",
                    )
                )
                for t in txt_rels:
                    parsed = parse_txt(f"{root}/{t}", self._label(root, t), None, self.parser)
                    self._drop_all(parsed.boxes + [b for b, _ in parsed.rejected], "ambiguous_txt")
                continue
            txt_label = self._label(root, txt_rels[0])
            parsed = parse_txt(f"{root}/{txt_rels[0]}", txt_label, posixpath.basename(rel), self.parser)
            self.problems += parsed.problems
            if parsed.encoding:
                self.encodings[parsed.encoding] += 1
            self.lines["read"] += parsed.lines_with_content
            self.lines["skipped"] += parsed.lines_dropped
            for _, why in parsed.rejected:
                self.ledger.add(
                    "dropped", "empty_label" if why == "empty defect_type" else "filename_mismatch"
                )
            size = read_size(f"{root}/{rel}")
            if isinstance(size, str):
                self.problems.append(
                    Problem(label, None, "unreadable_image", f"cannot read image: {size}; skipped")
                )
                self._drop_all(parsed.boxes, "image_unreadable")
                continue
            w, h = size
            entry = ImageEntry("abnormal", rel, f"{abs_root}/{rel}", w, h)
            for raw in parsed.boxes:
                checked = check_box(raw, w, h, self.cfg.min_box_size)
                self.ledger.add(checked.status, checked.kind)
                if checked.status != "kept":
                    self.problems.append(Problem(txt_label, raw.line, checked.kind, checked.reason))
                if checked.box is not None:
                    entry.raw_boxes.append((checked.box, raw, txt_label))
            if not entry.raw_boxes:
                self.problems.append(
                    Problem(label, None, "no_usable_box", "abnormal image has no usable box; skipped")
                )
                continue
            entries.append(entry)
        return entries

    def normal(self) -> list[ImageEntry]:
        root = self.cfg.normal_dir
        if root is None:
            return []
        if not root.is_dir():
            raise ConvertError(
                f"normal_dir {root} does not exist or is not a folder (set it to null for none)"
            )
        abs_root = os.path.abspath(root)
        images, txts = walk_files(root)
        self.inputs["normal_images_found"] = len(images)
        for rel in txts:
            self.problems.append(
                Problem(self._label(root, rel), None, "txt_in_normal_dir", "txt file in normal_dir ignored")
            )
        entries = []
        for rel in tqdm(images, desc="prepare: normal", unit="img", disable=self._disable()):
            size = read_size(f"{root}/{rel}")
            if isinstance(size, str):
                self.problems.append(
                    Problem(
                        self._label(root, rel),
                        None,
                        "unreadable_image",
                        f"cannot read image: {size}; skipped",
                    )
                )
                continue
            entries.append(ImageEntry("normal", rel, f"{abs_root}/{rel}", size[0], size[1]))
        return entries

    def _disable(self) -> bool | None:
        return None if self.progress is None else not self.progress


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


def _assign_splits(entries: list[ImageEntry], cfg: DataConfig, problems: list[Problem]) -> list[str]:
    """Group and split every image; returns warnings (e.g. one folder holding a whole source)."""
    roots = {"abnormal": cfg.abnormal_dir.name, "normal": cfg.normal_dir.name if cfg.normal_dir else ""}
    forced: set[str] = set()
    matched: set[str] = set()
    for e in entries:
        e.group = group_key(e.source, e.rel, cfg.split_by_parent)
        hits = holdout_matches(cfg.holdout_list, e.rel, roots[e.source])
        if hits:
            forced.add(e.group)
            matched.update(hits)
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
    for e in entries:
        e.split = (
            "test" if e.group in forced else assign_split(cfg.seed, e.group, cfg.train_ratio, cfg.val_ratio)
        )
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
    return warns


def _samples(entries: list[ImageEntry], cfg: DataConfig, progress: bool | None) -> tuple[list[dict], int]:
    policy = CandidatePolicy.from_config(cfg)
    pool = size_pool(
        [((b[2] - b[0]) / e.width, (b[3] - b[1]) / e.height) for e in entries for b, _ in e.boxes]
    )
    samples: list[dict[str, Any]] = []
    short = 0
    disable = None if progress is None else not progress
    for e in tqdm(entries, desc="prepare: candidates", unit="img", disable=disable):
        rng = image_rng(cfg.seed, f"{e.source}/{e.rel}")
        for k, drawn in enumerate(draw_samples(rng, e.width, e.height, e.boxes, pool, policy)):
            short += len(drawn.regions) < drawn.wanted
            regions = drawn.regions
            samples.append(
                {
                    "sample_id": f"{e.source}/{e.rel}#{k}",
                    "image": e.path,
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
    """Run prepare; raises ConvertError on bad config/input and StrictModeError when strict finds problems."""
    with paused_gc():
        return _prepare(coerce_config(config), strict, progress)


def _prepare(cfg: DataConfig, strict: bool | None, progress: bool | None) -> PrepareResult:
    strict = cfg.strict if strict is None else strict
    col = _Collector(cfg, progress)
    from PIL import Image

    with warnings.catch_warnings():  # huge industrial images are fine: only headers are read
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        entries = col.abnormal() + col.normal()
    variants = _resolve_labels(entries, cfg, col.problems)
    labels = sorted(variants)
    meta = build_meta(cfg, labels)
    warns = _assign_splits(entries, cfg, col.problems)
    samples, short = _samples(entries, cfg, progress)
    if short:
        warns.append(
            f"{short} sample(s) got fewer candidates than drawn (no room for negatives with IoU <= "
            f"{cfg.max_neg_iou:g}); their count can hint at the class"
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
            "txt_encodings": dict(sorted(col.encodings.items())),
        },
        "lines": dict(col.lines),
        "boxes": col.ledger.as_dict(),
        "labels": {c: {"variants": v} for c, v in variants.items()},
        "candidate_policy": {
            "count_range": [CandidatePolicy.from_config(cfg).lo, cfg.max_boxes_per_image],
            "abnormal_neg_per_pos": cfg.abnormal_neg_per_pos,
            "max_neg_iou": cfg.max_neg_iou,
            "samples_short_of_candidates": short,
        },
        "splits": stats,
        "warnings": warns,
        "problem_counts": dict(sorted(Counter(p.kind for p in col.problems).items())),
        "problems": [p.as_dict() for p in col.problems],
    }
    by_split = {sp: [s for s in samples if s["split"] == sp] for sp in SPLITS}
    if strict and col.problems:
        write_json(out_dir / REPORT_FILE, report)
        raise StrictModeError(col.problems, out_dir / REPORT_FILE)
    for sp in SPLITS:
        write_jsonl(out_dir / f"regions_{sp}.jsonl", by_split[sp])
    write_json(out_dir / META_FILE, meta.model_dump())
    write_json(out_dir / REPORT_FILE, report)
    return PrepareResult(by_split, report, meta, out_dir)


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
    for sp in SPLITS:
        s = r["splits"][sp]
        labs = ", ".join(f"{k}={v['boxes']}" for k, v in s["labels"].items()) or "-"
        lines.append(
            f"{sp:5s}: {s['images']} images ({s['abnormal_images']} abnormal, {s['normal_images']} normal), "
            f"{s['samples']} samples; boxes per label: {labs}"
        )
    lines += [f"warning: {w}" for w in r["warnings"]]
    lines.append(f"wrote {result.out_dir}/regions_{{train,val,test}}.jsonl, {META_FILE}, {REPORT_FILE}")
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        result = prepare(load_data_config(args.config), strict=True if args.strict else None)
    except ConvertError as exc:
        return report_error(exc)
    print("\n".join(summary_lines(result)))
    return 0
