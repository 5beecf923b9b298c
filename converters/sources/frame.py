"""A source's boxes in the image's displayed frame, once prepare knows the image: fractions (YOLO) made
pixels, and the size the annotation states checked.

Labelling tools show an image upright (EXIF orientation applied) and write boxes, and the size, in that
frame. A tool that ignored the orientation states the stored size instead: for orientations 5-8 (which
swap width and height) that is recognisable, and its boxes are turned into the displayed frame (reported
as ``size_stored_frame``). Any other disagreement (``size_mismatch``) means the boxes were drawn on another
picture: the image is left out. Orientations 2-4, and square images, cannot be told apart this way: their
boxes are taken as drawn on the displayed image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..parse import Problem, RawBox
from .base import Dropped, Read

Coords = tuple[float, float, float, float]


def stored_to_displayed(coords: Coords, orientation: int, width: int, height: int) -> Coords:
    """A box drawn on the stored pixels (``width`` x ``height``) in the frame ImageOps.exif_transpose
    shows: 2 mirror, 3 turn 180, 4 flip, 5 transpose, 6 turn 90 clockwise, 7 transverse, 8 turn 90
    anticlockwise (PIL's methods for each orientation)."""
    x1, y1, x2, y2 = coords
    w, h = float(width), float(height)
    corners = {
        1: ((x1, y1), (x2, y2)),
        2: ((w - x1, y1), (w - x2, y2)),
        3: ((w - x1, h - y1), (w - x2, h - y2)),
        4: ((x1, h - y1), (x2, h - y2)),
        5: ((y1, x1), (y2, x2)),
        6: ((h - y1, x1), (h - y2, x2)),
        7: ((h - y1, w - x1), (h - y2, w - x2)),
        8: ((y1, w - x1), (y2, w - x2)),
    }[orientation]
    (ax, ay), (bx, by) = corners
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


@dataclass
class Fitted:
    """A Read's boxes in pixels of the displayed image, problems found, and whether the sizes disagree."""

    boxes: list[RawBox]
    dropped: list[Dropped]
    problems: list[Problem] = field(default_factory=list)
    mismatch: bool = False


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


#: a fraction times the image side within this share of the side of a whole pixel is that pixel: YOLO tools
#: write 6 decimals (labelImg, CVAT, Roboflow) or 6 significant digits (Ultralytics), so a box drawn to the
#: image's edge comes back as 64.000032 and would be reported as clipped
SNAP = 1e-5
PLACES = 6


def to_pixels(fraction: float, side: int) -> float:
    """A normalised coordinate in pixels of a side ``side`` long: a whole pixel when it is one but for the
    rounding of the written fraction, else to PLACES decimals (the float error of cx - w / 2 removed)."""
    v = fraction * side
    whole = round(v)
    return whole if abs(v - whole) <= SNAP * side else round(v, PLACES)


def _mapped(
    boxes: list[RawBox], dropped: list[Dropped], fn: Callable[[Coords], Coords]
) -> tuple[list[RawBox], list[Dropped]]:
    return (
        [replace(b, coords=fn(b.coords)) for b in boxes],
        [replace(d, raw=replace(d.raw, coords=fn(d.raw.coords))) for d in dropped],
    )


def fit_frame(read: Read, annotation: str, width: int, height: int, orientation: int) -> Fitted:
    """``read``'s boxes in the displayed frame of an image shown ``width`` x ``height``."""
    boxes, dropped = read.boxes, read.dropped
    if read.normalized:
        boxes, dropped = _mapped(
            boxes,
            dropped,
            lambda c: (
                to_pixels(c[0], width),
                to_pixels(c[1], height),
                to_pixels(c[2], width),
                to_pixels(c[3], height),
            ),
        )
    if read.size is None or read.size == (width, height):
        return Fitted(boxes, dropped)
    sw, sh = read.size
    stated = f"{_num(sw)}x{_num(sh)}"
    if orientation >= 5 and (sw, sh) == (height, width):
        boxes, dropped = _mapped(boxes, dropped, lambda c: stored_to_displayed(c, orientation, height, width))
        why = (
            f"the annotation states {stated}, the stored size of an image shown {width}x{height} (EXIF "
            f"orientation {orientation}): its boxes were drawn on the unturned pixels; turned upright"
        )
        return Fitted(boxes, dropped, [Problem(annotation, read.size_at, "size_stored_frame", why)])
    turned = f" (EXIF orientation {orientation})" if orientation != 1 else ""
    why = (
        f"the annotation states the image is {stated}, the image is {width}x{height}{turned}: its boxes "
        "belong to another picture; image left out, boxes dropped"
    )
    return Fitted(boxes, dropped, [Problem(annotation, read.size_at, "size_mismatch", why)], mismatch=True)
