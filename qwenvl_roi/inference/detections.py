"""Detector boxes in: the images and candidate boxes an upstream detector proposes, read line by line.

Four forms (``--boxes-format``; without it a file is JSONL and a folder txt), all about the image as shown
(EXIF orientation applied, the frame labelling tools and the converters read boxes in):

- ``jsonl``: one image per line: ``{"image": <path relative to --images or absolute>,
  "boxes": [[x1, y1, x2, y2], ...], "id": <optional>}``, original pixels;
- ``txt``: a folder of same-stem ``.txt`` files in the annotation format (``filename ; coords [; label]``,
  the label column optional, xyxy pixels), read by the converters' parser with its problem reporting;
  ``a/b/x.txt`` belongs to the image ``a/b/x.<ext>`` under --images;
- ``yolo``: a folder of ``.txt`` files paired the same way, ``class cx cy w h [conf]`` (or polygons) as
  fractions of the displayed size, read by the converters' YOLO reader (converters/sources/yolo.py); the
  class ids are not needed to score, so no names file; made pixels once the image's size is read (rounded
  to 1e-6 pixel, so a box written from whole pixels reads back as those);
- ``coco``: a COCO dataset file (``images`` with ``file_name`` relative to --images, ``annotations`` with
  ``bbox`` [x, y, w, h] pixels), or a results list ``[{"image_id", "category_id", "bbox", "score"}]`` with
  the dataset file its ids refer to given as ``--coco-images``; read by the converters' COCO reader
  (converters/sources/coco.py), category names not needed. Images in ``images`` order, boxes in
  annotation order; the size ``images`` states is checked as the converters check it (frame.fit_frame).

The txt, YOLO and COCO rows are named by the image's path relative to --images, as a JSONL line without an
"id" whose "image" is that path: the same boxes give the same rows in every form (byte for byte in the same
order and batch size; padding moves a prompt's scores by about 1e-8 with the others of its batch). In the
folder forms every image under --images has a row, one without a file none of boxes (a detector writes no
file where it found nothing).

Nothing stops at a bad line: every problem is kept with its file and line, and the image's output row says
what was wrong. Images are prepared as the converters prepared the training images (upright, 8-bit RGB;
16/32-bit scaled by the dataset's bit depth), in memory. Box order is kept. An image with more boxes than
the model was trained to judge at once (``max_boxes_per_image`` of dataset_meta.json) is split into
several prompts of consecutive boxes.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from qwenvl_roi.converters.meta import DatasetMeta
from qwenvl_roi.converters.names import is_utf8, not_utf8_reason, shown
from qwenvl_roi.converters.sources.frame import to_pixels
from qwenvl_roi.errors import InputError
from qwenvl_roi.fileio import json_refusal

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
BOX_FORMATS = ("jsonl", "txt", "yolo", "coco")


@dataclass
class ImageJob:
    """One input image: where it came from, its boxes in input order, and what was wrong."""

    key: str  # the output row's id: the line's "id", else the image as given
    image: str  # as given
    source: str  # file:line (JSONL) or the txt file
    path: Path | None = None  # resolved file
    boxes: list[list[float]] = field(default_factory=list)  # as given (NaN: unusable entry)
    box_sources: list[str] = field(default_factory=list)  # file:line of each box (txt form)
    problems: list[str] = field(default_factory=list)  # "file:line: reason"; nothing dropped silently
    error: str | None = None  # set when the image cannot be scored at all
    normalized: bool = False  # boxes are fractions of the displayed size (YOLO), made pixels by check()
    # the image size the boxes' file states (COCO images[]), checked by check() as the converters check it
    stated: tuple[float, float] | None = None
    stated_at: str = ""  # where it is stated: file:images[i]


def _box(value: Any) -> list[float] | None:
    if not isinstance(value, list | tuple) or len(value) != 4 or any(isinstance(v, bool) for v in value):
        return None
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too big for a float
        return None
    return box if all(math.isfinite(v) for v in box) else None


def _path(image: str) -> Path:
    """A JSONL line's image path, ``~`` expanded where it can be (``~nosuchuser`` stays as written)."""
    try:
        return Path(image).expanduser()
    except RuntimeError:
        return Path(image)


def read_jsonl(path: Path, root: Path) -> list[ImageJob]:
    """Jobs from a JSONL file of detections, one per non-blank line (lines end at "\\n" only, so a
    U+2028 inside a string does not shift the line numbers; a line that is not UTF-8 is its own error)."""
    jobs: list[ImageJob] = []
    seen: dict[str, str] = {}
    files: dict[str, tuple[str, str]] = {}  # a line without "id": its file, normalised -> (image, where)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the boxes file ({exc})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{shown(str(path))}:{lineno}"
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            error = f"{where}: not UTF-8 ({exc.reason} at byte {exc.start + 1})"
            jobs.append(ImageJob(f"<line {lineno}>", "", where, error=error))
            continue
        except json.JSONDecodeError as exc:
            jobs.append(ImageJob(f"<line {lineno}>", "", where, error=f"{where}: not valid JSON ({exc.msg})"))
            continue
        except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
            error = f"{where}: not valid JSON ({json_refusal(exc)})"
            jobs.append(ImageJob(f"<line {lineno}>", "", where, error=error))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"]:
            jobs.append(ImageJob(f"<line {lineno}>", "", where, error=f'{where}: needs an "image" string'))
            continue
        key = shown(str(obj["id"]) if obj.get("id") is not None else obj["image"])
        image = _path(obj["image"])
        image_path = image if image.is_absolute() else root / image
        if "\\" in obj["image"] and not image_path.exists():  # a Windows tool's path: as the COCO reader does
            posix = root / _path(obj["image"].replace("\\", "/"))  # an absolute one replaces root
            if posix.exists():
                image_path = posix
        job = ImageJob(key, shown(obj["image"]), where, image_path)
        if not is_utf8(obj["image"]):  # "\\udcc8": a Python tool's json.dumps of a GBK file name
            job.problems.append(f"{where}: image {not_utf8_reason(obj['image'])}")
        file = os.path.normpath(image_path) if obj.get("id") is None else None  # a line with an id: its own
        same = files.get(file) if file is not None else None
        if key in seen:
            job.error = f"{where}: {key!r} was already given at {seen[key]}"
        elif same is not None:  # "./a.png" after "a.png": one picture, scored once (give an "id" for more)
            job.error = f"{where}: {job.image!r} is the file {same[0]!r} given at {same[1]}"
        elif not isinstance(obj.get("boxes"), list):
            job.error = f'{where}: needs "boxes": a list of [x1, y1, x2, y2]'
        else:
            seen[key] = where
            if file is not None:
                files[file] = (job.image, where)
            for k, value in enumerate(obj["boxes"]):
                box = _box(value)
                if box is None:
                    job.problems.append(f"{where}: box {k + 1} {value!r} is not 4 finite numbers; not scored")
                job.boxes.append(box or [math.nan] * 4)  # keeps its place in the output
        jobs.append(job)
    return jobs


def read_txt_folder(folder: Path, root: Path) -> list[ImageJob]:
    """Jobs from a folder of same-stem txt files (label column optional), in sorted path order."""
    from qwenvl_roi.converters.parse import LineParser, parse_txt

    parser = LineParser(label_optional=True)

    def fill(job: ImageJob, txt: Path, where: str, image: str) -> None:
        parsed = parse_txt(txt, where, Path(image).name, parser)
        job.problems += [str(p) for p in parsed.problems]
        job.boxes = [list(raw.coords) for raw in parsed.boxes]
        job.box_sources = [f"{where}:{raw.line}" for raw in parsed.boxes]

    return _read_folder(folder, root, fill)


def read_yolo_folder(folder: Path, root: Path) -> list[ImageJob]:
    """Jobs from a folder of YOLO txt files mirroring --images (fractions, an optional confidence column),
    in sorted path order; a ``classes.txt`` without an image of that name is the class list, not boxes."""
    from qwenvl_roi.converters.sources.yolo import read_yolo

    def fill(job: ImageJob, txt: Path, where: str, image: str) -> None:
        read = read_yolo(str(txt), where, None)  # class ids as labels: names are not needed to score
        job.problems += [str(p) for p in read.problems]
        job.boxes = [list(raw.coords) for raw in read.boxes]
        job.box_sources = [f"{where}:{raw.line}" for raw in read.boxes]
        job.normalized = True

    return _read_folder(folder, root, fill, ignore="classes.txt")


def _read_folder(
    folder: Path, root: Path, fill: Callable[[ImageJob, Path, str, str], None], ignore: str | None = None
) -> list[ImageJob]:
    """Jobs from a folder of same-stem txt files, each read by ``fill(job, file, its name, image)``: one per
    image under ``root``, in its path order, then the files that found no image.

    Files are found and paired as the converters pair annotations with images (converters/prepare.py:
    extensions in any case, hidden files skipped, the same relative path without its last extension). An
    image without a file has no boxes (a row with nothing to score): a detector writes no file for an image
    where it found nothing (Ultralytics' save_txt), and the other forms give such an image its row too.
    ``ignore``: a file name (any case) left alone when no image has its stem.
    """
    from qwenvl_roi.converters.parse import Problem
    from qwenvl_roi.converters.prepare import stem_key, walk_files

    folder_problems: list[Problem] = []  # symlink loops, folders linked twice, unreadable folders
    images = walk_files(root, folder_problems)[0]
    by_stem: dict[str, list[str]] = {}
    for rel in images:
        by_stem.setdefault(stem_key(rel), []).append(rel)
    txts = walk_files(folder, folder_problems)[1]
    txt_by_stem: dict[str, list[str]] = {}
    for rel_txt in txts:
        txt_by_stem.setdefault(stem_key(rel_txt), []).append(rel_txt)
    of_stem: dict[str, list[ImageJob]] = {}  # the rows of each stem that has files, in file order
    orphans: list[ImageJob] = []  # files without an image
    for rel_txt in txts:
        txt = folder / rel_txt
        where = shown(str(txt))  # names that are not UTF-8 (GBK from a Windows zip) as \xNN
        stem = rel_txt[: -len(".txt")]
        twins = txt_by_stem[stem_key(rel_txt)]
        matches = by_stem.get(stem_key(rel_txt), [])
        rows = of_stem.setdefault(stem_key(rel_txt), []) if matches else orphans
        if (
            len(twins) > 1
        ):  # case.txt and CASE.TXT: which boxes belong to the image? (as prepare's ambiguous_txt)
            if rel_txt == twins[0]:
                names = ", ".join(map(shown, twins))
                error = f"{where}: several txt files match: {names}"
                rows.append(ImageJob(shown(stem), shown(stem), where, error=error))
            continue
        if not matches and ignore is not None and Path(rel_txt).name.casefold() == ignore:
            continue
        image = matches[0] if len(matches) == 1 else stem
        job = ImageJob(shown(image), shown(image), where, root / image if len(matches) == 1 else None)
        if not is_utf8(image):
            job.problems.append(f"{where}: image {not_utf8_reason(image)}")
        if not matches:
            exts = "|".join(s[1:] for s in IMAGE_SUFFIXES)
            job.error = f"{where}: no image {shown(stem)}.<{exts}> under {shown(str(root))}"
        elif len(matches) > 1:
            names = ", ".join(map(shown, matches))
            job.error = f"{where}: several images under {shown(str(root))} have its name: {names}"
        else:
            fill(job, txt, where, image)
        rows.append(job)
    jobs: list[ImageJob] = []
    for rel in images:
        if stem_key(rel) in txt_by_stem:
            jobs += of_stem.pop(stem_key(rel), [])  # the stem's rows, at its first image
        else:  # no file: no boxes, nothing to score
            where = shown(str(folder / posixpath.splitext(rel)[0])) + ".txt"
            job = ImageJob(shown(rel), shown(rel), where, root / rel)
            if not is_utf8(rel):
                job.problems.append(f"{where}: image {not_utf8_reason(rel)}")
            jobs.append(job)
    jobs += orphans
    reported: set[tuple[str, str]] = set()  # --images and --boxes may be one folder, walked twice
    for p in folder_problems:
        if (p.file, p.kind) not in reported:
            reported.add((p.file, p.kind))
            jobs.append(ImageJob(f"<{p.file}>", "", p.file, error=str(p)))
    return jobs


def _load_json(path: Path, flag: str) -> Any:
    """A JSON file (UTF-8 with or without BOM, UTF-16, GBK); InputError naming the flag, file and line."""
    from qwenvl_roi.converters.parse import read_decoded

    try:
        decoded = read_decoded(path)
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot read ({exc.strerror or exc})") from None
    if decoded is None:
        raise InputError(f"{flag} {path}: neither UTF-8, UTF-16 nor GBK")
    try:
        return json.loads(decoded[0])
    except json.JSONDecodeError as exc:
        raise InputError(f"{flag} {path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
        raise InputError(f"{flag} {path}: invalid JSON ({json_refusal(exc)})") from None


def read_coco(path: Path, root: Path, images_file: Path | None = None) -> list[ImageJob]:
    """Jobs from a COCO dataset file, or a results list with ``images_file`` (the dataset its image_id
    refer to): one per entry of ``images``, in order; boxes in annotation order. Entries the reader cannot
    use (a bad ``images`` entry, an annotation whose image_id names no image) are rows of their own."""
    from qwenvl_roi.converters.sources import SourceError
    from qwenvl_roi.converters.sources.coco import named_by_id, parse_coco

    obj = _load_json(path, "--boxes")
    label = shown(str(path))
    images_label = shown(str(images_file)) if images_file is not None else label
    if images_file is not None:
        doc = _load_json(images_file, "--coco-images")
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise InputError(f"--coco-images {images_file}: not a COCO dataset file (no 'images' list)")
        images, anns = doc["images"], obj if isinstance(obj, list) else None
        if isinstance(obj, dict):
            anns = obj.get("annotations", [])
    elif isinstance(obj, dict) and isinstance(obj.get("images"), list):
        images, anns = obj["images"], obj.get("annotations", [])
    elif isinstance(obj, list):
        raise InputError(
            f"--boxes {path}: a COCO results list names images by id only; give the COCO dataset file its "
            "image_id refer to with --coco-images"
        )
    else:
        raise InputError(f"--boxes {path}: not COCO (a dataset file with 'images', or a results list)")
    if not isinstance(anns, list):
        raise InputError(f"--boxes {path}: 'annotations' is not a list")
    try:  # categories named by their ids: a box is scored whatever its class
        coco = parse_coco({"images": images, "annotations": anns, "categories": named_by_id(anns)}, label)
    except SourceError as exc:
        raise InputError(str(exc)) from None
    jobs: list[ImageJob] = []
    first: dict[str, str] = {}
    for im in coco.entries:
        where = f"{label}:images[{im.index}]"
        image = _path(im.file_name)
        job = ImageJob(
            shown(im.file_name), shown(im.file_name), where, image if image.is_absolute() else root / image
        )
        if im.shared:  # its boxes cannot be attributed: no scores, the row says why
            job.error = f"{where}: its id {im.id!r} is given to other images entries too; boxes not scored"
        elif im.file_name in first:
            job.error = f"{where}: {im.file_name!r} was already listed at {first[im.file_name]}"
        else:
            first[im.file_name] = where
            job.problems += [str(p) for p in im.read.problems]
            job.boxes = [list(raw.coords) for raw in im.read.boxes]
            job.box_sources = [f"{label}:{raw.line}" for raw in im.read.boxes]
            if im.read.size is not None:  # stated in the file that lists the images
                job.stated, job.stated_at = im.read.size, f"{images_label}:{im.read.size_at}"
        jobs.append(job)
    # an id given to several entries is said by each entry's row
    for p in [p for p in coco.problems if p.kind != "ambiguous_image_id"] + coco.dangling.problems:
        jobs.append(ImageJob(f"<{p.file}:{p.line}>", "", f"{p.file}:{p.line}", error=str(p)))
    return jobs


def read_jobs(
    boxes: Path, root: Path, boxes_format: str | None = None, coco_images: Path | None = None
) -> list[ImageJob]:
    """Jobs from --boxes in ``boxes_format`` (BOX_FORMATS; None: a folder is txt, a file JSONL) with images
    under --images; ``coco_images``: the COCO dataset file of a results list."""
    fmt = boxes_format or ("txt" if boxes.is_dir() else "jsonl")
    if coco_images is not None and fmt != "coco":
        raise InputError("--coco-images goes with --boxes-format coco")
    if fmt in ("txt", "yolo"):
        if not boxes.is_dir():
            raise InputError(f"--boxes {boxes}: --boxes-format {fmt} reads a folder of .txt files")
        return read_txt_folder(boxes, root) if fmt == "txt" else read_yolo_folder(boxes, root)
    if not boxes.is_file():
        what = "no such file or folder" if boxes_format is None else f"--boxes-format {fmt} reads a file"
        raise InputError(f"--boxes {boxes}: {what}")
    if fmt == "coco":
        return read_coco(boxes, root, coco_images)
    return read_jsonl(boxes, root)


def split_boxes(n: int, per_prompt: int) -> list[range]:
    """Consecutive, nearly equal groups of at most `per_prompt` of n boxes (input order kept)."""
    if n == 0:
        return []
    parts = math.ceil(n / per_prompt)
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


@dataclass
class PreparedImage:
    """An image ready for prompts: what the model loads, its size as shown, and its usable boxes."""

    job: ImageJob
    inspection: Any = None  # the converters' header inspection (converters/images.py)
    picture: Any = None  # a path (str) or an in-memory upright 8-bit RGB PIL image
    width: int = 0
    height: int = 0
    usable: list[tuple[int, list[float]]] = field(default_factory=list)  # (input index, checked box)
    notes: dict[int, str] = field(default_factory=dict)  # input index -> what happened to that box

    def samples(self, meta: DatasetMeta) -> list[dict[str, Any]]:
        """The prompts of this image: consecutive groups of its usable boxes, ids R1.. in each."""
        out = []
        for k, group in enumerate(split_boxes(len(self.usable), meta.max_boxes_per_image)):
            regions = [
                {"id": f"{meta.region_id_prefix}{i + 1}", "box": self.usable[j][1]}
                for i, j in enumerate(group)
            ]
            out.append(
                {
                    "sample_id": f"{self.job.key}#{k}",
                    "image": self.picture,
                    "width": self.width,
                    "height": self.height,
                    "regions": regions,
                }
            )
        return out


def _copy(job: ImageJob) -> ImageJob:
    """A job whose problems can grow without touching the caller's."""
    return replace(job, problems=list(job.problems))


def check(job: ImageJob) -> PreparedImage:
    """Read the image header (size as shown, what the converters would fix) and check every box against it.

    Cheap (no pixels decoded), so `--strict` can check a whole input before anything is scored. `job` is
    left as it is (it may be checked again, or scored after `--strict` checked it): the problems found are
    in the returned image's own copy, ``.job``.
    """
    from qwenvl_roi.converters.images import inspect
    from qwenvl_roi.converters.parse import RawBox, check_box

    job = _copy(job)
    prepared = PreparedImage(job)
    if job.error is not None:
        return prepared
    assert job.path is not None
    if not job.path.is_file():
        job.error = f"{job.source}: image {shown(str(job.path))} not found"
        return prepared
    insp = inspect(job.path)
    if isinstance(insp, str):
        job.error = f"{job.source}: cannot read image {shown(str(job.path))}: {insp}"
        return prepared
    if insp.note:
        job.problems.append(f"{job.source}: {insp.note}")
    prepared.inspection = insp
    prepared.width, prepared.height = insp.width, insp.height
    if job.stated is not None and not _fit_stated(job, insp):
        return prepared
    if job.normalized:  # YOLO fractions of the size as shown
        w, h = insp.width, insp.height
        job.boxes = [
            [float(to_pixels(v, side)) for v, side in zip(b, (w, h, w, h), strict=True)] for b in job.boxes
        ]
        job.normalized = False
    for i, box in enumerate(job.boxes):
        if any(math.isnan(v) for v in box):
            prepared.notes[i] = "not 4 finite numbers"
            continue
        checked = check_box(RawBox(0, (box[0], box[1], box[2], box[3]), ""), insp.width, insp.height, 0.0)
        if checked.reason:
            prepared.notes[i] = checked.reason
            where = job.box_sources[i] if i < len(job.box_sources) else job.source
            job.problems.append(f"{where}: box {i + 1}: {checked.reason}")
        if checked.box is not None:
            prepared.usable.append((i, list(checked.box)))
    return prepared


def _fit_stated(job: ImageJob, insp: Any) -> bool:
    """The size the boxes' file states, checked against the image as the converters check it
    (converters/sources/frame.py fit_frame): boxes drawn on the unturned pixels of an EXIF-turned image are
    turned upright (reported); another size means the boxes belong to another picture: the job's error
    (False)."""
    from qwenvl_roi.converters.parse import RawBox
    from qwenvl_roi.converters.sources.base import Read
    from qwenvl_roi.converters.sources.frame import fit_frame

    read = Read(
        boxes=[RawBox(i, (b[0], b[1], b[2], b[3]), "") for i, b in enumerate(job.boxes)],
        size=job.stated,
        size_at=job.stated_at,
    )
    fitted = fit_frame(read, "", insp.width, insp.height, insp.orientation)
    reasons = [f"{p.line}: {p.reason}" for p in fitted.problems]
    if fitted.mismatch:
        job.error = "; ".join(reasons)
        return False
    job.problems += reasons
    job.boxes = [list(b.coords) for b in fitted.boxes]
    return True


def load(prepared: PreparedImage, meta: DatasetMeta) -> PreparedImage:
    """The image with what the model loads: the file itself, or (EXIF-rotated, 16/32-bit, palette, ...) an
    upright 8-bit RGB copy in memory made exactly as the converters made the training copies. `prepared` is
    left as it is; a file broken past its header is the returned image's ``job.error``."""
    from qwenvl_roi.converters.images import HIGH_DEPTH_MODES, depth_for, pixel_range, render

    job, insp = prepared.job, prepared.inspection
    if job.error is not None or insp is None:
        return replace(prepared, job=_copy(job))
    assert job.path is not None
    name = shown(str(job.path))  # for messages: UTF-8 even when the file name is not
    if not insp.reasons:  # decoded as LLaMA-Factory decodes a path (Image.open), but here: a broken file
        try:  # is this image's error row, not a crash of its whole batch
            image = Image.open(job.path)
            image.load()  # (not `with`: closing an image frees its pixels; load() closes the file)
        except Exception as exc:  # PIL raises many types for broken files
            error = f"{job.source}: cannot decode image {name} ({type(exc).__name__}: {exc})"
            return replace(prepared, job=replace(_copy(job), error=error))
        return replace(prepared, job=_copy(job), picture=image)
    depth = meta.image_bit_depth
    try:
        if insp.mode in HIGH_DEPTH_MODES and depth is None:
            depth = depth_for(pixel_range(job.path)[1])
        rendered = render(job.path, insp, depth or 8)
    except Exception as exc:  # PIL raises many types for broken files
        error = f"{job.source}: cannot convert image {name} ({type(exc).__name__}: {exc})"
        return replace(prepared, job=replace(_copy(job), error=error))
    done = replace(prepared, job=_copy(job), picture=rendered.image)
    done.job.problems.append(f"{job.source}: {insp.describe()}: read upright as 8-bit RGB, as for training")
    return done


def output_row(prepared: PreparedImage, scored: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The predictions row of one input image: every input box in order, then the image-level verdict."""
    job = prepared.job
    # every text as UTF-8 can write it (a message may quote a path whose name is not UTF-8)
    row: dict[str, Any] = {"id": shown(job.key), "image": shown(job.image)}
    problems = [shown(p) for p in job.problems]
    if job.error is not None:
        return {**row, "error": shown(job.error), "problems": problems}
    by_index = {}
    regions = [r for s in scored for r in s["regions"]]
    for (index, _), region in zip(prepared.usable, regions, strict=True):
        by_index[index] = region
    boxes = []
    for i, box in enumerate(job.boxes):
        got = by_index.get(i)
        entry: dict[str, Any] = {"box": box if not any(math.isnan(v) for v in box) else None}
        if got is None:
            entry.update({"score": None, "label": None, "greedy": None, "abnormal": None})
        else:
            entry.update({k: got[k] for k in ("score", "label", "greedy", "abnormal")})
        if i in prepared.notes:
            entry["note"] = prepared.notes[i]
        boxes.append(entry)
    scores = [b["score"] for b in boxes if b["score"] is not None]
    lines = [s["image_line_score"] for s in scored]
    row.update(
        {
            "width": prepared.width,
            "height": prepared.height,
            "prompts": len(scored),
            "boxes": boxes,
            "image_score": max(scores) if scores else None,
            "image_abnormal": (max(scores) >= threshold) if scores else None,
            "image_line_score": max(lines) if lines else None,
            "problems": problems,
        }
    )
    return row
