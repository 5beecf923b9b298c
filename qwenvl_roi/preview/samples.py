"""What the preview shows per sample, read back from the converters' outputs, never recomputed.

Samples (their picture and candidates) come from ``regions_*.jsonl``, the problems from
``prepare_report.json`` (file, line, kind, reason), the prompt settings from ``dataset_meta.json``. The
report says where a box was dropped or clipped but not always its coordinates (a box dropped as too small
records only its size), so the annotation txt of an image with such problems is read again with the
converters' own parser (``converters/parse.py``: ``parse_txt`` and ``check_box``, in the frame and with the
settings prepare used) and every box is matched to its reported problem by line, kind and reason. A reported
box that the txt no longer yields (the file changed after convert) is shown as text and counted as stale.
The other formats' problems name their image and carry their box (prepare_report version 2): they are drawn
from the report as they are.
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from qwenvl_roi.converters.config import DataConfig
from qwenvl_roi.converters.images import REASON_TEXT
from qwenvl_roi.converters.meta import META_FILE, DatasetMeta, load_dataset_meta
from qwenvl_roi.converters.parse import LineParser, check_box, parse_txt
from qwenvl_roi.converters.paths import resolve_image
from qwenvl_roi.converters.prepare import REPORT_FILE, defect_box, stem_key
from qwenvl_roi.converters.split import SPLITS
from qwenvl_roi.errors import ConvertError
from qwenvl_roi.fileio import iter_jsonl
from qwenvl_roi.schemas import errors_text
from qwenvl_roi.schemas.prepare_report import PrepareReport
from qwenvl_roi.schemas.regions import RegionSample

Box = tuple[float, float, float, float]
#: problems that stand for boxes (drawn where the txt puts them); every other kind is a note on its line
BOX_KINDS = frozenset(
    {"box_fixed", "box_outside", "box_zero_area", "box_too_small", "empty_label", "filename_mismatch"}
)
#: problem kind of a line parse_txt rejects whole, by the reason it gives its boxes
#: what every regions sample has (docs/architecture.md "Files the converters write")
REJECTED_KIND = {
    "empty defect_type": "empty_label",
    "filename column names another image": "filename_mismatch",
}


@dataclass(frozen=True)
class LineMark:
    """One reported problem of a sample's txt (or image): where it marks the picture and why.

    ``status``: ``dropped`` / ``clipped`` for a box (``box`` in pixels of the picture the trainer loads,
    None when it cannot be drawn, with ``not_drawn`` saying why), ``line`` for a problem without a box of
    its own (a line skipped as unreadable, a label missing from label_map)."""

    line: int | None
    kind: str
    reason: str
    status: Literal["dropped", "clipped", "line"]
    box: Box | None = None
    not_drawn: str = ""


def line_tag(line: Any) -> str:
    """How a mark names its place in the annotation: ``L12`` for a line, the JSON path (``shapes[3]``) or
    mask component (``components[0]``) as is, ``file`` for the whole file."""
    if line is None:
        return "file"
    if isinstance(line, int) and not isinstance(line, bool):
        return f"L{line}"
    return str(line)


@dataclass
class PreviewSample:
    """One sample of regions_*.jsonl with the problems of its annotation and of its picture."""

    sample: dict[str, Any]
    path: Path  # the picture the trainer loads (resolve_image of the sample's image)
    txt: str | None = None  # the annotation file, as the report names it
    marks: list[LineMark] = field(default_factory=list)
    image_notes: list[str] = field(default_factory=list)

    @property
    def has_line_problems(self) -> bool:
        return bool(self.marks)

    def sort_key(self) -> tuple:
        """Problems first, then split, group, image and sample number."""
        s = self.sample
        name, _, k = str(s["sample_id"]).rpartition("#")
        return (
            not self.has_line_problems,
            SPLITS.index(s["split"]),
            str(s["group"]),
            name,
            int(k) if k.isdigit() else 0,
        )


@dataclass
class PreviewData:
    """Everything the preview pages show."""

    config: DataConfig
    meta: DatasetMeta
    report: dict[str, Any]
    samples: list[PreviewSample]  # the chosen splits, in page order
    splits: tuple[str, ...]
    unattached: list[dict[str, Any]]  # problems of files that are in no sample (left out by the converters)
    stale: int = 0  # reported boxes the txt no longer yields
    twins: dict[str, TwinPicture] = field(default_factory=dict)  # pictures of near-duplicate sets, by image


@dataclass
class TwinPicture:
    """A picture of a near-duplicate set (prepare_report.json -> near_duplicates) as the datasets hold it:
    the file the trainer loads, its size, and the positive regions of all its samples (box, label)."""

    path: Path
    size: tuple[int, int]
    positives: list[tuple[list[float], str]] = field(default_factory=list)


def _required(path: Path, config_path: str) -> Path:
    if not path.is_file():
        raise ConvertError(
            f"{path} not found: the preview reads the converters' outputs in out_dir; run "
            f"`qwenvl-roi convert --config {config_path}` first"
        )
    return path


def _roots(cfg: DataConfig) -> dict[str, str]:
    """How the report names each source's root (prepare labels files ``<root as configured>/<rel>``)."""
    roots = {"abnormal": cfg.abnormal_dir.as_posix()}
    if cfg.normal_dir is not None:
        roots["normal"] = cfg.normal_dir.as_posix()
    return roots


class _ProblemIndex:
    """The report's problems by the image or txt file they name (relative to its source's root)."""

    def __init__(self, problems: list[dict[str, Any]], roots: dict[str, str]):
        self.problems = problems
        self.by_image: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.by_txt: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.by_annotated: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.used: set[int] = set()
        self.longest_first = sorted(roots.items(), key=lambda kv: -len(kv[1]))
        for i, p in enumerate(problems):
            image = p.get("image")
            if isinstance(image, str):  # an annotation's problem naming its image (any format)
                found = self._under_root(image)
                if found is not None:
                    self.by_annotated[found].append(i)
                continue
            found = self._under_root(str(p.get("file", "")))
            if found is not None:
                source, rel = found
                if rel.casefold().endswith(".txt"):
                    self.by_txt[(source, stem_key(rel))].append(i)
                else:
                    self.by_image[found].append(i)

    def _under_root(self, label: str) -> tuple[str, str] | None:
        """(source, path relative to its root) of a file as the report names it, or None."""
        for source, root in self.longest_first:
            if label.startswith(root + "/"):
                return source, label[len(root) + 1 :]
        return None

    def for_sample(self, source: str, rel: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(problems of the image's annotation, problems of the image file); both marked as shown.

        An annotation's problem is found by the image it names (reports since prepare_report version 2)
        or, in an older report, by the txt file beside the image."""
        txt = self.by_annotated.get((source, rel), []) + self.by_txt.get((source, stem_key(rel)), [])
        image = self.by_image.get((source, rel), [])
        self.used.update(txt, image)
        return [self.problems[i] for i in txt], [self.problems[i] for i in image]

    def unattached(self) -> list[dict[str, Any]]:
        return [p for i, p in enumerate(self.problems) if i not in self.used]


def _found_boxes(
    txt_path: Path, txt_label: str, image_rel: str, width: int, height: int, cfg: DataConfig
) -> list[tuple[int, str, str | None, str, Box | None]]:
    """Every box the converters did not keep as written, read again exactly as prepare read it:
    (line, kind, reason or None for a rejected line, status, where it marks the picture)."""
    parser = LineParser(cfg.column_delim, cfg.inner_coord_delims, cfg.coords_are_xyxy)
    parsed = parse_txt(txt_path, txt_label, posixpath.basename(image_rel), parser)
    found: list[tuple[int, str, str | None, str, Box | None]] = []
    for raw in parsed.boxes:
        c = check_box(raw, width, height, cfg.min_box_size)
        if c.status == "clipped":
            found.append((raw.line, c.kind, c.reason, "clipped", c.box))
        elif c.status == "dropped":
            where = None if c.kind == "box_outside" else defect_box(raw.coords, width, height)
            found.append((raw.line, c.kind, c.reason, "dropped", where))
    for raw, why in parsed.rejected:
        kind = REJECTED_KIND.get(why, "")
        found.append((raw.line, kind, None, "dropped", defect_box(raw.coords, width, height)))
    return found


def _file_order(mark: LineMark) -> tuple[int, int, str]:
    """Sort key: file-wide problems, then lines by number; a line the report does not give as a number
    (a hand-edited or foreign report) goes last instead of breaking the sort."""
    if mark.line is None:
        return (0, 0, "")
    if isinstance(mark.line, int) and not isinstance(mark.line, bool):
        return (1, mark.line, "")
    return (2, 0, str(mark.line))


def _line_marks(
    problems: list[dict[str, Any]], found: list[tuple[int, str, str | None, str, Box | None]]
) -> tuple[list[LineMark], int]:
    """Each reported problem with the box(es) it stands for; (marks, reported boxes not found again)."""
    marks: list[LineMark] = []
    stale = 0
    left = list(found)
    for p in problems:
        line, kind, reason = p.get("line"), str(p.get("kind", "")), str(p.get("reason", ""))
        if kind not in BOX_KINDS:
            marks.append(LineMark(line, kind, reason, "line"))
            continue
        if kind in ("empty_label", "filename_mismatch"):  # one problem for every box of the line
            hits = [f for f in left if f[0] == line and f[1] == kind and f[2] is None]
        else:  # one problem per box
            hits = [next((f for f in left if f[0] == line and f[1] == kind and f[2] == reason), None)]
            hits = [h for h in hits if h is not None]
        if not hits:
            stale += 1
            marks.append(
                LineMark(
                    line, kind, reason, "line", None, "not found when the txt was read again: it changed "
                    "after convert (run convert again)"
                )
            )  # fmt: skip
            continue
        for h in hits:
            left.remove(h)
            status = "clipped" if h[3] == "clipped" else "dropped"
            not_drawn = "" if h[4] is not None else "lies outside the picture"
            marks.append(LineMark(line, kind, reason, status, h[4], not_drawn))
    marks.sort(key=_file_order)  # in file order (stable within a line)
    return marks, stale


#: problem kinds of the box checks (converters/parse.py check_box): the report gives where such a box lies
CHECK_KINDS = frozenset({"box_fixed", "box_outside", "box_zero_area", "box_too_small"})


def _report_marks(problems: list[dict[str, Any]]) -> list[LineMark]:
    """Each reported problem of an annotation that is not the seed's txt (labelme, VOC, YOLO, COCO, masks),
    drawn where the report says its box lies (those formats' own entries are not read again here)."""
    marks = []
    for p in problems:
        line, kind, reason = p.get("line"), str(p.get("kind", "")), str(p.get("reason", ""))
        box = p.get("box")
        where: Box | None = None
        if isinstance(box, list) and len(box) == 4:
            where = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        if kind not in CHECK_KINDS:
            marks.append(LineMark(line, kind, reason, "line"))
        elif kind == "box_fixed" and where is not None:
            marks.append(LineMark(line, kind, reason, "clipped", where))
        else:
            not_drawn = "" if where is not None else "lies outside the picture"
            marks.append(LineMark(line, kind, reason, "dropped", where, not_drawn))
    marks.sort(key=_file_order)
    return marks


def _image_notes(converted: dict[str, dict[str, Any]], key: str, problems: list[dict[str, Any]]) -> list[str]:
    notes = []
    c = converted.get(key)
    if c is not None:
        why = "; ".join(
            REASON_TEXT.get(r, r).format(mode=c.get("mode"), orientation=c.get("orientation"))
            for r in c.get("reasons", [])
        )
        notes.append(f"the trainer loads the converters' upright 8-bit RGB copy {c.get('copy')} ({why})")
    notes += [f"{p.get('kind')}: {p.get('reason')}" for p in problems]
    return notes


def load_preview(cfg: DataConfig, config_path: str, split: str | None = None) -> PreviewData:
    """Read out_dir (regions, dataset_meta.json, prepare_report.json) and attach each problem to its sample.

    ``split`` None: every split. A missing output raises ConvertError naming the file and what to run."""
    out = cfg.out_dir
    splits = SPLITS if split is None else (split,)
    regions = {sp: _required(out / f"regions_{sp}.jsonl", config_path) for sp in SPLITS}
    _required(out / META_FILE, config_path)
    report_path = _required(out / REPORT_FILE, config_path)
    meta = load_dataset_meta(out)
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{report_path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    try:  # the published contract (qwenvl_roi/schemas/prepare_report.py)
        PrepareReport.model_validate(report)
    except ValidationError as exc:
        raise ConvertError(
            f"{report_path}: not a prepare report ({errors_text(exc)}); run convert again"
        ) from None
    problems = report["problems"]
    index = _ProblemIndex(problems, _roots(cfg))
    converted = {c["image"]: c for c in (report.get("images") or {}).get("converted_images", [])}
    roots = {"abnormal": cfg.abnormal_dir, "normal": cfg.normal_dir}
    samples: list[PreviewSample] = []
    marked: dict[tuple[str, str], tuple[list[LineMark], int]] = {}  # image -> (marks, stale boxes)
    stale = 0
    in_sets = {
        str(m.get("image"))
        for st in (report.get("near_duplicates") or {}).get("sets", [])
        for m in st.get("images", [])
    }
    twins: dict[str, TwinPicture] = {}
    # the seed's txt is read again to draw its problems' boxes (older reports give no box); other formats'
    # problems are drawn where the report puts them
    seed_txt = cfg.annotation_format == "txt" and cfg.dataset_layout is None
    for sp in SPLITS:  # every split, so problems of images in other splits are not listed as left out
        not_found = f"{regions[sp]} not found"
        for lineno, s in iter_jsonl(regions[sp], ConvertError, not_found):
            try:  # the published contract (qwenvl_roi/schemas/regions.py)
                RegionSample.model_validate(s)
            except ValidationError as exc:
                raise ConvertError(
                    f"{regions[sp]}:{lineno}: not a regions sample ({errors_text(exc)}); run convert again"
                ) from None
            source, _, rest = str(s["sample_id"]).partition("/")
            rel = rest.rpartition("#")[0]
            if not rel:
                raise ConvertError(
                    f"{regions[sp]}:{lineno}: not a regions sample (sample_id malformed); run convert again"
                )
            width, height = int(s["width"]), int(s["height"])
            txt_problems, image_problems = index.for_sample(source, rel)
            if f"{source}/{rel}" in in_sets:  # every split: a set shows all its pictures
                twin = twins.setdefault(
                    f"{source}/{rel}", TwinPicture(resolve_image(s["image"], regions[sp]), (width, height))
                )
                for r in s["regions"]:
                    if r.get("positive") and (r["box"], str(r.get("label"))) not in twin.positives:
                        twin.positives.append((r["box"], str(r.get("label"))))
            if sp not in splits:
                continue
            item = PreviewSample(s, resolve_image(s["image"], regions[sp]))
            item.image_notes = _image_notes(converted, f"{source}/{rel}", image_problems)
            if txt_problems:
                root = roots.get(source)
                txt_label = str(txt_problems[0]["file"])
                item.txt = ", ".join(dict.fromkeys(str(p.get("file")) for p in txt_problems))
                key = (source, rel)
                if key not in marked:  # once per image (an image may give several samples)
                    if seed_txt:
                        found = []
                        if root is not None and any(p.get("kind") in BOX_KINDS for p in txt_problems):
                            txt_rel = txt_label[len(root.as_posix()) + 1 :]
                            found = _found_boxes(root / txt_rel, txt_label, rel, width, height, cfg)
                        marked[key] = _line_marks(txt_problems, found)
                    else:
                        marked[key] = (_report_marks(txt_problems), 0)
                    stale += marked[key][1]
                item.marks = marked[key][0]
            samples.append(item)
    samples.sort(key=PreviewSample.sort_key)
    return PreviewData(cfg, meta, report, samples, splits, index.unattached(), stale, twins)
