"""COCO JSON (CVAT, Roboflow, detectron-style tools): one file for the whole dataset (``coco_json``) with
``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations`` (``image_id``, ``category_id``,
``bbox`` = ``[x, y, w, h]`` in pixels) and ``categories`` (``id``, ``name``; ids need not start at 0 or 1
nor be contiguous).

``file_name`` is relative to abnormal_dir (backslashes and a leading ``./`` accepted). Problems name
``images[i]``, ``annotations[k]`` or ``categories[j]``. An annotation whose ``image_id`` is not in
``images`` (dangling) is reported and its box dropped; one whose ``category_id`` is unknown likewise (it
still marks its defect); an image listed but not on disk is reported with its boxes; an image on disk not
listed is reported and skipped. An id given to several ``images`` entries (two CVAT tasks, both numbered
from 1, joined into one file) cannot say which picture its annotations belong to: they are reported and
their boxes dropped, and every image of that id is skipped (``ambiguous_image_id``; pycocotools would give
them all to the last entry). A listed image without annotations is a normal image. ``segmentation`` is
not read (``bbox`` is its extent); ``iscrowd`` boxes are kept. A detector's results file (a bare list of
``{image_id, category_id, bbox, score}``) is read by ``parse_annotations`` with the images of the ground
truth; ``score`` is kept.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from qwenvl_roi.fileio import json_refusal

from ..names import shown
from ..parse import Problem, RawBox
from ..walk import Skip, file_label
from .base import Dropped, Read, Record, Source, SourceError, SourceSettings, finite, read_named_file


@dataclass
class CocoImage:
    """One entry of ``images``."""

    index: int
    id: Hashable
    file_name: str
    read: Read = field(default_factory=Read)  # its annotations (for a shared id: the first entry holds all)
    shared: bool = False  # other entries have its id: its annotations cannot be attributed


@dataclass
class CocoFile:
    """A COCO file, checked: its images by id, each with the Read of its annotations."""

    images: dict[Hashable, CocoImage]  # by id: the first entry of each id
    problems: list[Problem]  # entries of images / categories that cannot be used; ids given several times
    dangling: Read  # annotations whose image_id names no image (their boxes dropped)
    categories: dict[Hashable, str]
    annotations: int = 0
    entries: list[CocoImage] = field(default_factory=list)  # every usable images entry, in file order
    ambiguous: Read = field(default_factory=Read)  # annotations of a shared id (their boxes dropped)


def _key(value: Any) -> Hashable | None:
    """An id as a dict key: an int (a whole float too) or a non-empty str; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) or (isinstance(value, str) and value):
        return value
    return None


def norm_file_name(name: str) -> str:
    """A file_name as a POSIX path relative to abnormal_dir."""
    return posixpath.normpath(name.strip().replace("\\", "/")).removeprefix("./")


def parse_categories(cats: Any, label: str, problems: list[Problem]) -> dict[Hashable, str]:
    """Category id -> name (stripped); bad or repeated entries reported."""
    out: dict[Hashable, str] = {}
    for j, c in enumerate(cats if isinstance(cats, list) else []):
        key = _key(c.get("id")) if isinstance(c, dict) else None
        if key is None:
            problems.append(
                Problem(label, f"categories[{j}]", "bad_entry", "category without a usable id; ignored")
            )
        elif key in out:
            problems.append(
                Problem(
                    label,
                    f"categories[{j}]",
                    "bad_entry",
                    f"category id {key!r} given twice; the first is used",
                )
            )
        else:
            name = c.get("name")
            out[key] = name.strip() if isinstance(name, str) else ""
    return out


def parse_annotation(
    ann: Any, k: int, label: str, categories: Mapping[Hashable, str]
) -> tuple[Hashable | None, RawBox | Dropped | Problem]:
    """(its image id, the box / the dropped box / the problem that skips it) of ``annotations[k]``."""
    where = f"annotations[{k}]"
    if not isinstance(ann, dict):
        return None, Problem(label, where, "bad_entry", "annotation is not an object; skipped")
    image_id = _key(ann.get("image_id"))
    bbox = ann.get("bbox")
    if bbox is None:
        return image_id, Problem(label, where, "no_coords", "annotation without bbox; skipped")
    values = finite(bbox) if isinstance(bbox, list) and len(bbox) == 4 else None
    if values is None:
        return image_id, Problem(
            label, where, "non_numeric", f"bbox {bbox!r} is not 4 numbers [x, y, w, h]; skipped"
        )
    x, y, w, h = values
    score = ann.get("score")
    score = float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None
    cat = _key(ann.get("category_id"))
    name = categories.get(cat) if cat is not None else None
    raw = RawBox(where, (x, y, x + w, y + h), name or "", score)
    if name is None:
        return image_id, Dropped(raw, "unknown_category", marks=True)
    if not name:
        return image_id, Dropped(raw, "empty_label", marks=True)
    return image_id, raw


def named_by_id(annotations: Any) -> list[dict[str, Any]]:
    """A ``categories`` list naming every usable ``category_id`` of ``annotations`` by itself: for readers
    that need the boxes, not the class names (predict --boxes scores a box whatever its class)."""
    out: dict[Hashable, dict[str, Any]] = {}
    for ann in annotations if isinstance(annotations, list) else []:
        key = _key(ann.get("category_id")) if isinstance(ann, dict) else None
        if key is not None:
            out.setdefault(key, {"id": key, "name": str(key)})
    return list(out.values())


def parse_coco(obj: Any, label: str) -> CocoFile:
    """A decoded COCO object, checked entry by entry; SourceError when it is not a COCO file."""
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise SourceError(f"coco_json {label}: not a COCO file (no 'images' list)")
    anns = obj.get("annotations", [])
    if not isinstance(anns, list):
        raise SourceError(f"coco_json {label}: 'annotations' is not a list")
    problems: list[Problem] = []
    categories = parse_categories(obj.get("categories"), label, problems)
    by_id: dict[Hashable, list[CocoImage]] = {}  # the entries of each id, in file order
    entries: list[CocoImage] = []
    for i, im in enumerate(obj["images"]):
        where = f"images[{i}]"
        key = _key(im.get("id")) if isinstance(im, dict) else None
        name = im.get("file_name") if isinstance(im, dict) else None
        if key is None or not isinstance(name, str) or not name.strip():
            problems.append(
                Problem(label, where, "bad_entry", "image without a usable id and file_name; ignored")
            )
            continue
        entry = CocoImage(i, key, norm_file_name(name))
        given = by_id.setdefault(key, [])
        same = next((e for e in given if e.file_name.casefold() == entry.file_name.casefold()), None)
        if same is not None:  # the same entry twice (a file joined with itself): not two pictures
            why = f"image id {key!r} and file_name already given by images[{same.index}]; ignored"
            problems.append(Problem(label, where, "bad_entry", why))
            continue
        given.append(entry)
        entries.append(entry)
        wh = finite([im.get("width", 0) or 0, im.get("height", 0) or 0])
        if wh is not None and min(wh) > 0:
            entry.read.size, entry.read.size_at = (wh[0], wh[1]), where
    images = {key: group[0] for key, group in by_id.items()}  # annotations go to an id's first entry
    shared = {key: group for key, group in by_id.items() if len(group) > 1}
    dangling = Read(ok=False)
    for k, ann in enumerate(anns):
        image_id, got = parse_annotation(ann, k, label, categories)
        target = images.get(image_id) if image_id is not None else None
        read = target.read if target is not None else dangling
        read.entries += 1
        where = f"annotations[{k}]"
        if target is None and not isinstance(got, Problem):
            raw = got.raw if isinstance(got, Dropped) else got
            reason = f"image_id {ann.get('image_id')!r} is not in images; box dropped"
            read.problems.append(Problem(label, where, "dangling_image_id", reason))
            read.dropped.append(Dropped(raw, "dangling_image_id"))
            read.skipped += 1
        elif isinstance(got, Problem):
            if target is None:
                got = Problem(
                    got.file, got.line, got.kind, f"{got.reason} (its image_id {image_id!r} names no image)"
                )
            read.problems.append(got)
            read.skipped += 1
        elif isinstance(got, Dropped):
            if got.kind == "unknown_category":
                why = f"category_id {ann.get('category_id')!r} is not in categories; box dropped"
            else:
                why = f"category {ann.get('category_id')!r} has an empty name; box dropped"
            read.problems.append(Problem(label, where, got.kind, why))
            read.dropped.append(got)
            read.skipped += 1
        else:
            read.boxes.append(got)
    ambiguous = Read(ok=False)
    for key, group in shared.items():
        read = group[0].read  # every annotation of the id went to its first entry
        listed = ", ".join(f"images[{e.index}] {e.file_name!r}" for e in group)
        why = (
            f"image id {key!r} is given to {listed}: its {read.entries} annotation(s) cannot be told apart "
            "(joined files need their ids renumbered); their boxes dropped and these images skipped"
        )
        problems.append(Problem(label, f"images[{group[1].index}]", "ambiguous_image_id", why))
        ambiguous.problems += read.problems
        ambiguous.dropped += read.all_dropped("ambiguous_image_id")
        ambiguous.entries += read.entries
        for e in group:
            e.shared = True
    return CocoFile(images, problems, dangling, categories, len(anns), entries, ambiguous)


def load_coco(path: Any) -> CocoFile:
    """Read and check a COCO file; SourceError naming the file (and line) when it cannot be read."""
    label = shown(str(path))
    text = read_named_file(path, "coco_json", label)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"coco_json {label}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
        raise SourceError(f"coco_json {label}: invalid JSON ({json_refusal(exc)})") from None
    return parse_coco(obj, label)


class CocoSource(Source):
    """``annotation_format: coco``: one ``coco_json`` whose ``file_name``s are relative to abnormal_dir."""

    format = "coco"
    keys = frozenset({"coco_json"})
    required = ("coco_json",)

    def __init__(self, settings: SourceSettings):
        super().__init__(settings)
        assert settings.coco_json is not None  # config.py requires it
        self.path = settings.coco_json
        self.label = self.path.as_posix()
        self.coco: CocoFile | None = None

    def _load(self) -> CocoFile:
        if self.coco is None:
            self.coco = load_coco(self.path)
            self.files_found = len(self.coco.images)
        return self.coco

    def inputs(self) -> dict[str, int | str]:
        coco = self.coco
        return {
            "annotation_format": self.format,
            "coco_images_listed": len(coco.images) if coco else 0,
            "coco_annotations": coco.annotations if coco else 0,
        }

    def records(self, images: list[str], beside: list[str]) -> Iterator[Record]:
        coco = self._load()
        root = self.images_root
        by_name: dict[str, list[CocoImage]] = {}
        for im in coco.entries:
            by_name.setdefault(im.file_name, []).append(im)
        folded: dict[str, list[CocoImage]] = {}
        for name, ims in by_name.items():
            folded.setdefault(name.casefold(), []).extend(ims)
        listed: dict[str, list[CocoImage]] = {}
        by_case: dict[str, list[str]] = {}  # files no file_name names exactly, by their case-folded name
        on_disk: dict[str, list[str]] = {}  # every file, by its case-folded name
        for rel in images:
            name = shown(rel)
            on_disk.setdefault(name.casefold(), []).append(rel)
            if name in by_name:
                listed[rel] = by_name[name]
            else:
                by_case.setdefault(name.casefold(), []).append(rel)
        exact = {id(im) for ims in listed.values() for im in ims}
        listed_names = {shown(rel) for rel in listed}  # the files some file_name names exactly
        # an entry naming no file exactly names a file by letter case only when no other file has its
        # name but for case; else it names several: (the unnamed ones, every one), each reported
        clash: dict[str, tuple[list[str], list[str]]] = {}
        for fold, rels in by_case.items():
            loose = [im for im in folded.get(fold, []) if id(im) not in exact]
            for rel in rels:
                listed[rel] = loose
                if loose and len(on_disk[fold]) > 1:
                    clash[rel] = (rels, on_disk[fold])
        found = {id(im) for ims in listed.values() for im in ims}
        if coco.problems or coco.dangling.entries or coco.ambiguous.entries:
            d, a = coco.dangling, coco.ambiguous
            yield Record(
                None, Read(dropped=d.dropped + a.dropped, problems=coco.problems + d.problems + a.problems)
            )
        named = {name.casefold(): ims[0] for name, ims in by_name.items() if name in listed_names}
        for im in coco.entries:
            if id(im) in found:
                continue
            other = named.get(im.file_name.casefold())
            if other is not None:  # its file is there, named exactly by another entry, which annotates it
                why = (
                    f"image {im.file_name!r} names {other.file_name!r} only by letter case, and "
                    f"images[{other.index}] names that file exactly; its annotations dropped"
                )
                kind = "ambiguous_annotation"
            else:
                why = f"image {im.file_name!r} is not under {root.as_posix()}; its annotations dropped"
                kind = "image_missing"
            problem = Problem(self.label, f"images[{im.index}]", kind, why)
            dropped = [] if im.shared else im.read.all_dropped(kind)  # a shared id's: dropped above
            yield Record(None, Read(dropped=dropped, problems=[problem]))
        for rel in images:
            label = file_label(root, rel)
            ims = listed[rel]
            if rel in clash:
                unnamed, every = clash[rel]
                where = ", ".join(f"images[{im.index}] {im.file_name!r}" for im in ims)
                others = ", ".join(shown(r) for r in every if r != rel)
                why = f"{where} names this file only by letter case, and also {others}; skipped"
                first = rel == unnamed[0]  # the entries' boxes are dropped once
                dropped = (
                    [d for im in ims if not im.shared for d in im.read.all_dropped("ambiguous_annotation")]
                    if first
                    else []
                )
                problem = Problem(label, None, "ambiguous_annotation", why)
                yield Record(rel, Read(dropped=dropped, problems=[problem]), skip=True)
            elif not ims:
                why = f"image is not listed in the coco_json's images ({self.label}); skipped"
                yield Record(
                    rel, Read(problems=[Problem(label, None, "image_without_annotation", why)]), skip=True
                )
            elif len(ims) > 1:
                where = ", ".join(f"images[{im.index}]" for im in ims)
                problem = Problem(
                    label, None, "ambiguous_annotation", f"listed several times ({where}); skipped"
                )
                dropped = [
                    d for im in ims if not im.shared for d in im.read.all_dropped("ambiguous_annotation")
                ]
                yield Record(rel, Read(dropped=dropped, problems=[problem]), skip=True)
            elif ims[0].shared:
                why = (
                    f"listed as images[{ims[0].index}], whose id {ims[0].id!r} other images entries have too "
                    "(see that problem); skipped"
                )
                problem = Problem(label, None, "ambiguous_image_id", why)
                yield Record(rel, Read(problems=[problem]), skip=True)
            else:
                read = ims[0].read
                yield Record(rel, read, self.label, normal=read.lists_nothing)

    def scan(self, problems: list[Problem], skip: Skip | None = None) -> Iterator[tuple[str, Read]]:
        coco = self._load()
        problems += coco.problems + coco.dangling.problems + coco.ambiguous.problems
        for im in coco.images.values():
            if not im.shared:  # a shared id's boxes belong to no known picture: convert drops them too
                yield im.file_name, im.read
