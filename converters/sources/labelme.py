"""labelme / X-AnyLabeling JSON: one ``<stem>.json`` per image, ``shapes`` with ``label``, ``points`` and
``shape_type``.

Shapes become their extents: ``rectangle`` (two opposite corners in either order; X-AnyLabeling writes all
four), ``polygon`` (also the default when ``shape_type`` is missing, as in old labelme files), ``rotation``
(X-AnyLabeling's turned rectangle), ``oriented_rectangle`` (labelme 6's turned rectangle, four corners),
``mask`` (the box around the pixels its ``mask``, a base64 PNG crop, marks, placed at its first point as
labelme's ``shapes_to_label`` pastes it; without mask data, its points are the crop's first and last pixel,
both included) and ``circle`` (centre and a point on the rim). ``point``, ``line``, ``linestrip`` and
anything else mark no region: reported and skipped. ``imagePath`` is relative to the json; its file name
must name the paired image. ``imageWidth``/``imageHeight`` are checked against the image as displayed
(prepare does it).
"""

from __future__ import annotations

import base64
import io
import json
import math
import posixpath
from typing import Any

import numpy as np
from PIL import Image

from qwenvl_roi.fileio import json_refusal

from ..parse import Problem, RawBox, image_name_keys, name_key
from .base import Dropped, PerImageFiles, Read, extent, failed, finite, read_text

#: shapes whose points bound a region (their extent is the box)
EXTENT_SHAPES = frozenset({"rectangle", "polygon", "rotation", "oriented_rectangle", "mask"})
#: the fewest points of a shape (the others: 3)
LEAST_POINTS = {"rectangle": 2, "mask": 2, "oriented_rectangle": 4}


def _points(value: Any) -> list[tuple[float, float]] | None:
    """``[[x, y], ...]`` as float pairs, or None when it is not a list of pairs of finite numbers."""
    if not isinstance(value, list):
        return None
    out: list[tuple[float, float]] = []
    for p in value:
        xy = finite(p) if isinstance(p, list | tuple) and len(p) == 2 else None
        if xy is None:
            return None
        out.append((xy[0], xy[1]))
    return out


def shape_box(shape: dict[str, Any]) -> tuple[tuple[float, float, float, float] | None, str, str]:
    """(the box a shape marks, or None with (problem kind, reason))."""
    shape_type = shape.get("shape_type") or "polygon"
    if not isinstance(shape_type, str):
        return None, "unsupported_shape", f"shape_type {shape_type!r} is not a name; skipped"
    if shape_type not in EXTENT_SHAPES and shape_type != "circle":
        return None, "unsupported_shape", f"shape_type {shape_type!r} marks no region; skipped"
    points = _points(shape.get("points"))
    if points is None:
        return None, "non_numeric", f"{shape_type} points are not a list of [x, y] numbers; skipped"
    if shape_type == "circle":
        if len(points) != 2:
            return None, "coord_count", f"circle needs 2 points (centre, rim), got {len(points)}; skipped"
        (cx, cy), (px, py) = points
        r = math.hypot(px - cx, py - cy)
        return (cx - r, cy - r, cx + r, cy + r), "", ""
    least = LEAST_POINTS.get(shape_type, 3)
    if len(points) < least:
        return None, "coord_count", f"{shape_type} needs at least {least} points, got {len(points)}; skipped"
    x1, y1, x2, y2 = extent(points)
    if shape_type == "mask":
        return _mask_box(shape.get("mask"), x1, y1, x2, y2)
    return (x1, y1, x2, y2), "", ""


def _mask_box(
    data: Any, x1: float, y1: float, x2: float, y2: float
) -> tuple[tuple[float, float, float, float] | None, str, str]:
    """A mask shape's box: the pixels its crop marks, the crop pasted at (int(x1), int(y1)) as labelme's
    shapes_to_label does (whatever convention a labelme version used for the second point); without
    mask data, pixels x1..x2 and y1..y2 both included."""
    if data is None:
        return (x1, y1, x2 + 1, y2 + 1), "", ""
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as im:
            crop = np.asarray(im.convert("L")) > 0  # labelme reads it as a bool array
    except (TypeError, ValueError, OSError):  # not base64 (binascii.Error is a ValueError), not an image
        return None, "non_numeric", "mask data is not a base64 image; skipped"
    where = np.argwhere(crop)
    if not len(where):
        return None, "unsupported_shape", "mask marks no pixel; skipped"
    (top, left), (bottom, right) = where.min(0), where.max(0) + 1
    ox, oy = int(x1), int(y1)
    return (ox + int(left), oy + int(top), ox + int(right), oy + int(bottom)), "", ""


def parse_labelme(obj: Any, label: str, image_name: str | None = None) -> Read:
    """A decoded labelme JSON object as a Read (problems at ``shapes[i]`` and the other keys)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("shapes"), list):
        return failed(Problem(label, None, "unreadable_annotation", "not a labelme file (no 'shapes' list)"))
    out = Read()
    width, height = obj.get("imageWidth"), obj.get("imageHeight")
    if width is not None or height is not None:
        size = finite([width, height])
        if size is None or min(size) <= 0:
            why = f"imageWidth/imageHeight {width!r}/{height!r} are not positive numbers; not checked"
            out.problems.append(Problem(label, "imageWidth", "size_unreadable", why))
        else:
            out.size, out.size_at = (size[0], size[1]), "imageWidth"
    path = obj.get("imagePath")
    mismatch = ""
    if isinstance(path, str) and path.strip() and image_name is not None:
        named = posixpath.basename(path.strip().replace("\\", "/"))
        if name_key(named) not in image_name_keys(image_name):
            mismatch = f"imagePath names {path!r}, not this json's image {image_name!r}"
    for i, shape in enumerate(obj["shapes"]):
        where = f"shapes[{i}]"
        out.entries += 1
        if not isinstance(shape, dict):
            out.problems.append(Problem(label, where, "bad_entry", "shape is not an object; skipped"))
            out.skipped += 1
            continue
        box, kind, reason = shape_box(shape)
        if box is None:
            out.problems.append(Problem(label, where, kind, reason))
            out.skipped += 1
            continue
        text = shape.get("label")
        raw = RawBox(where, box, text.strip() if isinstance(text, str) else "")
        if mismatch:
            out.dropped.append(Dropped(raw, "filename_mismatch"))
            out.skipped += 1
        elif not raw.label:
            out.problems.append(Problem(label, where, "empty_label", "empty label; box dropped"))
            out.dropped.append(Dropped(raw, "empty_label", marks=True))
            out.skipped += 1
        else:
            out.boxes.append(raw)
    if mismatch:
        out.problems.append(Problem(label, "imagePath", "filename_mismatch", f"{mismatch}; shapes dropped"))
        out.ok = False
    return out


def read_labelme(path: str, label: str, image_name: str | None = None) -> Read:
    """One labelme JSON file as a Read (``image_name``: its image, checked against imagePath)."""
    got = read_text(path, label)
    if isinstance(got, Problem):
        return failed(got)
    text, encoding = got
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return failed(
            Problem(label, exc.lineno, "unreadable_annotation", f"invalid JSON: {exc.msg}"), encoding
        )
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
        why = f"invalid JSON ({json_refusal(exc)})"
        return failed(Problem(label, None, "unreadable_annotation", why), encoding)
    out = parse_labelme(obj, label, image_name)
    out.encoding = encoding
    return out


class LabelmeSource(PerImageFiles):
    """``annotation_format: labelme``: ``<stem>.json`` beside each image (or under annotations_dir)."""

    format = "labelme"
    extension = ".json"
    noun = "labelme json"

    def read_file(self, path: str, label: str, image_name: str | None) -> Read:
        return read_labelme(path, label, image_name)
