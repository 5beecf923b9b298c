"""Annotation txt -> raw boxes with 1-based line numbers, plus every problem found (never guesses).

Line format: ``filename ; coords ; defect_type``. First column = text before the first column delimiter,
last column = text after the last one, coords = everything between (it may itself hold ``;``/``；``,
commas and spaces, and several boxes: every 4 numbers make one box).
"""

from __future__ import annotations

import math
import posixpath
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from qwenvl_roi.fileio import split_lines

from .names import gbk_reading, is_utf8, shown

FULLWIDTH_SEMICOLON = "；"


@dataclass(frozen=True)
class Problem:
    """One thing a person must know about: where and why.

    ``line``: the 1-based line of a text or XML file, the JSON path of an entry in a JSON file
    (``shapes[3]``, ``annotations[17]``), or None for the whole file.
    ``image``: the image an annotation's problem concerns (as problems name files), when ``file`` is not the
    image itself: a COCO file, a mask or a labels tree names no image by its own path, and the preview
    attaches each problem to its image's samples by this. ``box``: where a box the checks clipped or
    dropped lies on the picture (pixels of the displayed frame; absent when it lies wholly outside).
    """

    file: str
    line: int | str | None
    kind: str
    reason: str
    image: str | None = None
    box: tuple[float, float, float, float] | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "file": self.file,
            "line": self.line,
            "kind": self.kind,
            "reason": self.reason,
        }
        if self.image is not None:
            out["image"] = self.image
        if self.box is not None:
            out["box"] = [tidy_number(v) for v in self.box]
        return out

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class RawBox:
    """A box as written in its annotation (xyxy after an optional cx,cy,w,h conversion), not yet checked.

    ``line`` is where it is written (a line number, or a JSON path such as ``shapes[3]``); ``score`` is a
    detector's confidence when the file gives one (YOLO txt, COCO results), else None.
    """

    line: int | str
    coords: tuple[float, float, float, float]
    label: str  # raw label text (stripped)
    score: float | None = None


@dataclass
class ParsedTxt:
    """Everything read from one txt file."""

    encoding: str | None
    boxes: list[RawBox] = field(default_factory=list)
    # boxes from lines that cannot be used (reason per box), e.g. the filename column names another image
    rejected: list[tuple[RawBox, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    lines_with_content: int = 0
    lines_dropped: int = 0


def _bare_utf16(data: bytes) -> str | None:
    """ "utf-16-le" / "utf-16-be" for UTF-16 text written without a BOM (.NET's Encoding.Unicode without
    preamble, some exporters), else None. Its ASCII characters (digits, delimiters, file names) put a zero
    byte beside every character, which UTF-8 would accept as NUL characters and parse as bad numbers; no
    annotation text holds NUL, so zeros on one side of the byte pairs and none on the other tell it."""
    if len(data) < 2 or len(data) % 2 or b"\x00" not in data:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    if odd >= len(data) // 4 and even <= odd // 16:  # a few CJK characters have a zero low byte (U+4E00)
        return "utf-16-le"
    if even >= len(data) // 4 and odd <= even // 16:
        return "utf-16-be"
    return None


def decode_text(data: bytes) -> tuple[str | None, str | None]:
    """Decode UTF-8 (with or without BOM), UTF-16 (with BOM, or without: see _bare_utf16), or GBK/GB18030
    text; (None, None) if none fits."""
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError:
            return None, None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            return None, None
    bare = _bare_utf16(data)
    if bare is not None:
        try:
            return data.decode(bare), bare
        except UnicodeDecodeError:
            return None, None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030"), "gbk"
    except UnicodeDecodeError:
        return None, None


def image_name_keys(image_name: str) -> set[str]:
    """The name_keys a txt line's filename column may use for this image: the name with or without its
    extension; for a name that is not UTF-8 (a GBK name from a Windows zip) also its GBK reading, which is
    how the txt (decoded as GBK) writes it."""
    names = [image_name]
    if not is_utf8(image_name):
        names += [n for n in (gbk_reading(image_name), shown(image_name)) if n is not None]
    return {name_key(k) for n in names for k in (n, posixpath.splitext(n)[0])}


def name_key(name: str) -> str:
    """Compare file names the way people mean them: width-folded, case-folded, basename only."""
    if not name.isascii():
        name = unicodedata.normalize("NFKC", name)
    name = name.strip().replace("\\", "/")
    return name.rsplit("/", 1)[-1].casefold()


class LineParser:
    """Splits lines into columns and coordinates according to the config's delimiters."""

    def __init__(
        self,
        column_delim: str = ";",
        inner_coord_delims: list[str] | None = None,
        xyxy: bool = True,
        label_optional: bool = False,
    ):
        self.column_delims = sorted({column_delim, FULLWIDTH_SEMICOLON}, key=len, reverse=True)
        inner = inner_coord_delims if inner_coord_delims is not None else ["；", ";", "，", ",", " "]
        seps = {unicodedata.normalize("NFKC", d) for d in [*inner, column_delim, FULLWIDTH_SEMICOLON]}
        seps |= {"\t", "\u3000"}
        visible = [s for s in seps if s.strip()]
        self._table = {ord(s): " " for s in visible if len(s) == 1}
        self._multi = sorted((s for s in visible if len(s) > 1), key=len, reverse=True)
        self.xyxy = xyxy
        # detector output: 'filename ; coords' without a label column (the label, when present, is not a
        # number: a last column that is one belongs to the coordinates)
        self.label_optional = label_optional

    def split_columns(self, line: str) -> tuple[str, str, str] | None:
        """(filename, coords, label) or None when there are fewer than two column delimiters (fewer than
        one when the label is optional; the label is then "")."""
        first: tuple[int, int] | None = None
        last: tuple[int, int] | None = None
        for d in self.column_delims:
            i = line.find(d)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, len(d))
            j = line.rfind(d)
            if j >= 0 and (last is None or j > last[0]):
                last = (j, len(d))
        if first is None or last is None:
            return None
        name, rest = line[: first[0]].strip(), line[first[0] + first[1] :].strip()
        if last[0] < first[0] + first[1]:
            return (name, rest, "") if self.label_optional else None
        label = line[last[0] + last[1] :].strip()
        if self.label_optional and not self.numbers(label)[1] and self.numbers(label)[0]:
            values, bad = self.numbers(rest)
            if not bad and len(values) % 4 == 0:
                return name, rest, ""  # the last column is a coordinate, not a label
            # else a numeric label (a detector's class id): 'a.png;10;10;50;50;0'
        return name, line[first[0] + first[1] : last[0]].strip(), label

    def numbers(self, coords: str) -> tuple[list[float], list[str]]:
        """All numbers of the coords column, and the tokens that are not finite numbers."""
        text = coords if coords.isascii() else unicodedata.normalize("NFKC", coords)
        for s in self._multi:
            text = text.replace(s, " ")
        tokens = text.translate(self._table).split()
        try:  # fast path: every token a finite number
            values = [float(t) for t in tokens]
            if all(map(math.isfinite, values)):
                return values, []
        except ValueError:
            pass
        values = []
        bad: list[str] = []
        for tok in tokens:
            try:
                v = float(tok)
            except ValueError:
                bad.append(tok)
                continue
            if not math.isfinite(v):
                bad.append(tok)
            else:
                values.append(v)
        return values, bad

    def to_xyxy(self, q: list[float]) -> tuple[float, float, float, float]:
        if self.xyxy:
            return (q[0], q[1], q[2], q[3])
        cx, cy, w, h = q
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def parse_text(
    text: str, file_label: str, image_name: str | None, parser: LineParser, encoding: str
) -> ParsedTxt:
    """Parse decoded txt content. ``image_name`` is the image this txt belongs to (for the filename check)."""
    out = ParsedTxt(encoding=encoding)
    wanted = image_name_keys(image_name) if image_name else set()
    if "\ufeff" in text:
        text = text.replace("\ufeff", "")

    def drop(kind: str, reason: str) -> None:
        out.problems.append(Problem(file_label, lineno, kind, reason))
        out.lines_dropped += 1

    for lineno, raw in enumerate(split_lines(text), start=1):  # U+2028 in a label does not end a line
        line = raw.strip()
        if not line:
            continue
        out.lines_with_content += 1
        cols = parser.split_columns(line)
        if cols is None:
            if parser.label_optional:
                drop("columns", "expected 'filename ; coords [; defect_type]'; line skipped")
            else:
                drop("columns", "expected 'filename ; coords ; defect_type' (3 columns); line skipped")
            continue
        fname, coords, label = cols
        values, bad = parser.numbers(coords)
        if bad:
            tokens = ", ".join(repr(b if len(b) <= 40 else f"{b[:20]}...({len(b)} chars)") for b in bad[:5])
            drop(
                "non_numeric",
                f"coordinate token(s) {tokens} not a number, or too large for one; line skipped",
            )
            continue
        if not values:
            drop("no_coords", "no coordinates in the coords column; line skipped")
            continue
        if len(values) % 4:
            drop(
                "coord_count",
                f"{len(values)} numbers in the coords column, not a multiple of 4; line skipped",
            )
            continue
        boxes = [RawBox(lineno, parser.to_xyxy(values[i : i + 4]), label) for i in range(0, len(values), 4)]
        if not all(math.isfinite(v) for b in boxes for v in b.coords):  # cx + w/2 beyond the float range
            drop("coord_overflow", "a box's corners are too large for a number (cx, cy, w, h); line skipped")
            continue
        if not label and not parser.label_optional:
            out.problems.append(
                Problem(file_label, lineno, "empty_label", "empty defect_type column; boxes dropped")
            )
            out.rejected += [(b, "empty defect_type") for b in boxes]
            out.lines_dropped += 1
            continue
        if not fname:
            out.problems.append(
                Problem(
                    file_label,
                    lineno,
                    "empty_filename",
                    f"empty filename column; boxes used for {image_name}",
                )
            )
        elif wanted and name_key(fname) not in wanted:
            out.problems.append(
                Problem(
                    file_label,
                    lineno,
                    "filename_mismatch",
                    f"filename column names {fname!r} but this txt belongs to {shown(image_name or '')!r}; "
                    "boxes dropped",
                )
            )
            out.rejected += [(b, "filename column names another image") for b in boxes]
            out.lines_dropped += 1
            continue
        out.boxes += boxes
    return out


def read_decoded(path: str | Path) -> tuple[str, str] | None:
    """A text file's content, every BOM removed, and its encoding as decode_text finds it; None when it is
    none of those encodings. OSError when the file cannot be read: each reader reports both its own way."""
    with open(path, "rb") as fh:
        data = fh.read()
    text, encoding = decode_text(data)
    if text is None or encoding is None:
        return None
    return (text.replace("\ufeff", "") if "\ufeff" in text else text), encoding


def parse_txt(path: str | Path, file_label: str, image_name: str | None, parser: LineParser) -> ParsedTxt:
    """Read and parse one annotation file; undecodable or unreadable files become one problem."""
    try:
        decoded = read_decoded(path)
    except OSError as exc:
        out = ParsedTxt(encoding=None)
        out.problems.append(
            Problem(file_label, None, "unreadable_txt", f"cannot read txt: {exc.strerror or exc}")
        )
        return out
    if decoded is None:
        out = ParsedTxt(encoding=None)
        out.problems.append(
            Problem(
                file_label, None, "encoding", "txt is neither UTF-8 (with or without BOM), UTF-16 nor GBK"
            )
        )
        return out
    text, encoding = decoded
    return parse_text(text, file_label, image_name, parser, encoding)


@dataclass(frozen=True)
class CheckedBox:
    """A raw box after checking against the image: kept as is, fixed (clipped/swapped) or dropped."""

    raw: RawBox
    box: tuple[float, float, float, float] | None
    status: str  # "kept" | "clipped" | "dropped"
    reason: str = ""
    kind: str = ""  # problem kind: box_fixed | box_outside | box_zero_area | box_too_small


def tidy_number(v: float) -> float:
    """A coordinate as a report shows it: an integer when whole, else rounded to 3 decimals."""
    return int(v) if float(v).is_integer() else round(v, 3)


def check_box(raw: RawBox, width: int, height: int, min_box_size: float) -> CheckedBox:
    """Swap reversed corners, clip to the image, drop empty/outside/tiny boxes, with a reason for each."""
    x1, y1, x2, y2 = raw.coords
    notes: list[str] = []
    if x2 < x1 or y2 < y1:
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
        notes.append("corners reversed (x2<x1 or y2<y1), swapped")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        reason = f"box {list(map(tidy_number, raw.coords))} lies outside the image {width}x{height}; dropped"
        return CheckedBox(raw, None, "dropped", reason, "box_outside")
    cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        notes.append(f"clipped to the image {width}x{height}")
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        return CheckedBox(
            raw,
            None,
            "dropped",
            f"box {list(map(tidy_number, raw.coords))} has zero area; dropped",
            "box_zero_area",
        )
    if min(cx2 - cx1, cy2 - cy1) < min_box_size:
        return CheckedBox(
            raw,
            None,
            "dropped",
            f"box {tidy_number(cx2 - cx1)}x{tidy_number(cy2 - cy1)} is smaller than min_box_size "
            f"{tidy_number(min_box_size)}; dropped",
            "box_too_small",
        )
    box = (tidy_number(cx1), tidy_number(cy1), tidy_number(cx2), tidy_number(cy2))
    if notes:
        return CheckedBox(
            raw, box, "clipped", f"box {list(map(tidy_number, raw.coords))}: " + "; ".join(notes), "box_fixed"
        )
    return CheckedBox(raw, box, "kept")
