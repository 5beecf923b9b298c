"""YOLO txt (Ultralytics, Roboflow, CVAT): ``labels/<...>/<stem>.txt`` mirroring ``images/<...>/``, one
object per line: ``class cx cy w h`` as fractions of the image's width and height.

Also read: YOLO-seg lines ``class x1 y1 x2 y2 ...`` (three or more points; their extent is the box) and a
trailing confidence column (detector output: ``class cx cy w h conf``; ``class x1 y1 ... conf``). Class
ids index the names of ``yolo_names``: a ``classes.txt`` (one name a line) or an Ultralytics dataset YAML
(``names:`` a list or a mapping id -> name). An id without a name is reported and its box dropped (it still
marks its defect). An empty txt is a normal image; a missing one is reported (Ultralytics would take it as
background; here an image without an annotation is never normal). Fractions are of the image as displayed
(Ultralytics applies EXIF orientation), turned into pixels by prepare once the image's size is known.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from qwenvl_roi.fileio import split_lines

from ..parse import Problem, RawBox
from ..walk import Skip, file_label, stem_key
from .base import (
    Dropped,
    PerImageFiles,
    Read,
    Record,
    SourceError,
    SourceSettings,
    extent,
    failed,
    read_named_file,
    read_text,
)

#: the file labelImg keeps its class list in, beside the YOLO labels
CLASS_LIST = "classes.txt"


def load_names(path: Path) -> dict[int, str]:
    """Class id -> name from a classes.txt or an Ultralytics dataset YAML; SourceError when unusable.

    The YAML is read without YAML's type guessing (``names: [no, 3号划痕]`` are the texts written, not a
    boolean), as the names are labels."""
    text = read_named_file(path, "yolo_names", str(path))
    if path.suffix.lower() not in (".yaml", ".yml"):
        lines = [line.strip() for line in split_lines(text)]
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise SourceError(f"yolo_names {path}: no class names (one name a line)")
        return dict(enumerate(lines))
    try:
        doc = yaml.load(text, Loader=yaml.BaseLoader)  # every scalar a string
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise SourceError(f"yolo_names {where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, list):
        return {i: str(n).strip() for i, n in enumerate(names)}
    if isinstance(names, dict):
        out: dict[int, str] = {}
        for k, v in names.items():
            if not (isinstance(k, str) and k.strip().isdigit()) or not isinstance(v, str):
                raise SourceError(f"yolo_names {path}: names: key {k!r} is not a class id (0, 1, ...)")
            out[int(k)] = v.strip()
        return out
    raise SourceError(f"yolo_names {path}: no 'names:' list or mapping (Ultralytics dataset YAML)")


def _class_id(token: str) -> int | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return int(value) if value.is_integer() and value >= 0 else None


def _ids(names: Mapping[int, str]) -> str:
    ids = sorted(names)
    if len(ids) > 10 or ids == list(range(len(ids))):
        return f"ids {ids[0]}..{ids[-1]}" if ids else "no ids"
    return "ids " + ", ".join(map(str, ids))


def parse_yolo(text: str, label: str, names: Mapping[int, str] | None) -> Read:
    """YOLO txt content as a Read in fractions (``normalized``); ``names`` None: labels are the ids."""
    out = Read(normalized=True)
    for lineno, line in enumerate(split_lines(text), start=1):
        tokens = line.split()
        if not tokens:
            continue
        out.entries += 1
        cls = _class_id(tokens[0])
        values: list[float] = []
        bad: list[str] = []
        for t in tokens[1:]:
            try:
                v = float(t)
            except ValueError:
                v = math.nan
            if math.isfinite(v):
                values.append(v)
            else:
                bad.append(t)
        if cls is None or bad:
            what = (
                f"class id {tokens[0]!r} is not a whole number >= 0" if cls is None else f"token(s) {bad[:5]}"
            )
            out.problems.append(Problem(label, lineno, "non_numeric", f"{what}; line skipped"))
            out.skipped += 1
            continue
        n = len(values)
        score = None
        if n in (4, 5):
            cx, cy, w, h = values[:4]
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            score = values[4] if n == 5 else None
        elif n >= 6:
            if n % 2:
                score, values = values[-1], values[:-1]
            box = extent([(values[i], values[i + 1]) for i in range(0, len(values), 2)])
        else:
            why = (
                f"{n} number(s) after the class id: expected 4 (cx cy w h), 5 (with a confidence) or 6+ (a "
                "polygon); line skipped"
            )
            out.problems.append(Problem(label, lineno, "coord_count", why))
            out.skipped += 1
            continue
        name = str(cls) if names is None else names.get(cls)
        raw = RawBox(lineno, box, name or "", score)
        if name is None:
            known = _ids(names or {})
            out.problems.append(
                Problem(
                    label,
                    lineno,
                    "unknown_class",
                    f"class id {cls} has no name in yolo_names ({known}); box dropped",
                )
            )
            out.dropped.append(Dropped(raw, "unknown_class", marks=True))
            out.skipped += 1
        elif not name:
            out.problems.append(
                Problem(label, lineno, "empty_label", f"class id {cls} has an empty name; box dropped")
            )
            out.dropped.append(Dropped(raw, "empty_label", marks=True))
            out.skipped += 1
        else:
            out.boxes.append(raw)
    return out


def read_yolo(path: str, label: str, names: Mapping[int, str] | None) -> Read:
    """One YOLO txt file as a Read (fractions of the image size)."""
    got = read_text(path, label)
    if isinstance(got, Problem):
        return failed(got)
    text, encoding = got
    out = parse_yolo(text, label, names)
    out.encoding = encoding
    return out


class YoloSource(PerImageFiles):
    """``annotation_format: yolo``: ``<stem>.txt`` under annotations_dir (labels/) or beside the images."""

    format = "yolo"
    extension = ".txt"
    noun = "YOLO txt"
    keys = PerImageFiles.keys | {"yolo_names"}
    required = ("yolo_names",)

    def __init__(self, settings: SourceSettings):
        super().__init__(settings)
        assert settings.yolo_names is not None  # config.py requires it
        self.names_file = settings.yolo_names
        self.names = load_names(settings.yolo_names)
        self._image_stems: set[str] | None = None  # while records runs: the images' stem_keys
        self._class_lists: list[tuple[Path, str]] = []  # labelImg class lists found beside the labels

    def wanted(self, root: Path, rel: str) -> bool:
        """Not the names file itself, nor a ``classes.txt`` that no image pairs with: labelImg keeps its class
        list in the label folder (checked against yolo_names in ``records``)."""
        name = os.path.basename(rel).casefold()
        if name == self.names_file.name.casefold():
            try:
                if os.path.samefile(root / rel, self.names_file):
                    return False
            except OSError:
                pass
        if name == CLASS_LIST and (self._image_stems is None or stem_key(rel) not in self._image_stems):
            self._class_lists.append((root, rel))
            return False
        return True

    def records(self, images: list[str], beside: list[str]) -> Iterator[Record]:
        self._image_stems, self._class_lists = {stem_key(rel) for rel in images}, []
        try:
            yield from super().records(images, beside)
        finally:
            self._image_stems = None
        problems = self._class_list_problems()
        if problems:
            yield Record(None, Read(problems=problems))

    def scan(self, problems: list[Problem], skip: Skip | None = None) -> Iterator[tuple[str, Read]]:
        self._class_lists = []
        yield from super().scan(problems, skip)
        problems += self._class_list_problems()

    def _class_list_problems(self) -> list[Problem]:
        """A class list beside the labels that names other classes than yolo_names: the ids are read by
        yolo_names, but one of the two is wrong (a label swap nobody would see)."""
        out = []
        for root, rel in self._class_lists:
            try:
                listed = load_names(root / rel)
            except SourceError as exc:
                listed, why = None, str(exc)
            if listed == self.names:
                continue
            if listed is not None:
                why = (
                    f"labelImg's class list names {list(listed.values())}, but yolo_names "
                    f"({self.names_file}) names {list(self.names.values())}: class ids are read by "
                    "yolo_names; check which is right"
                )
            out.append(Problem(file_label(root, rel), None, "class_list_differs", why))
        return out

    def read_file(self, path: str, label: str, image_name: str | None) -> Read:
        return read_yolo(path, label, self.names)
