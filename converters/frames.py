"""Coordinate frames: the image size the model actually sees, and boxes written in that frame.

Which frame a family reads, and how each frame writes a coordinate, is in the family table
(qwenvl_roi/families.py ``FRAMES``, a family's ``frame``): Qwen2.5-VL reads box coordinates as absolute
pixels of the image after LLaMA-Factory's resize (llamafactory/data/mm_plugin.py:
``BasePlugin._preprocess_image`` then ``Qwen2VLPlugin``'s override, which Qwen3-VL's plugin inherits) and
the processor's ``smart_resize`` to multiples of the family's grid factor; Qwen2-VL reads them normalised to
[0, 1000); Qwen3-VL and Qwen3.5 read relative integers on 0..1000.
LLaMA-Factory never rescales coordinates written as text, so the converters must.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np

from qwenvl_roi.families import DEFAULT_FAMILY, ModelFamily
from qwenvl_roi.families import family as _family

# the default family's grid factor: 28 (Qwen2-VL / Qwen2.5-VL; Qwen3-VL / Qwen3.5: 32)
FACTOR = _family(DEFAULT_FAMILY).grid_factor


def llamafactory_resize(
    width: int, height: int, image_max_pixels: int, image_min_pixels: int
) -> tuple[int, int]:
    """(w, h) after LLaMA-Factory 0.9.5's Qwen2-VL plugin pre-processing, op by op."""
    w, h = int(width), int(height)
    if w * h > image_max_pixels:
        resize_factor = math.sqrt(image_max_pixels / (w * h))
        w, h = int(w * resize_factor), int(h * resize_factor)
    if w * h < image_min_pixels:
        resize_factor = math.sqrt(image_min_pixels / (w * h))
        w, h = int(w * resize_factor), int(h * resize_factor)
    # Qwen2VLPlugin._preprocess_image
    if min(w, h) < 28:
        w, h = max(w, 28), max(h, 28)
    if w / h > 200:
        w, h = h * 180, h
    if h / w > 200:
        w, h = w, w * 180
    return w, h


def smart_resize(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int = FACTOR
) -> tuple[int, int]:
    """(h, w) rounded to multiples of ``factor`` in [min_pixels, max_pixels], as the Qwen processor does."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@lru_cache(maxsize=65536)
def model_frame_size(
    width: int,
    height: int,
    image_max_pixels: int = 1048576,
    image_min_pixels: int = 1024,
    processor_min_pixels: int | None = None,
    processor_max_pixels: int | None = None,
    factor: int | None = None,
    family: ModelFamily = DEFAULT_FAMILY,
) -> tuple[int, int]:
    """(W, H) of the pixel grid the vision tower sees for an original ``width`` x ``height`` image.

    The processor limits and the grid ``factor`` left None are ``family``'s (the family table), so a caller
    that names only the family cannot mix one family's grid with another's limits."""
    fam = _family(family)
    pmin = fam.processor_min_pixels if processor_min_pixels is None else processor_min_pixels
    pmax = fam.processor_max_pixels if processor_max_pixels is None else processor_max_pixels
    w, h = llamafactory_resize(width, height, image_max_pixels, image_min_pixels)
    hh, ww = smart_resize(h, w, pmin, pmax, fam.grid_factor if factor is None else factor)
    return ww, hh


class PixelLimits(Protocol):
    """What fixes a picture's frame: the limits a dataset was converted with and its model family
    (schemas.dataset_meta.DatasetMeta, pictures.FrameSettings)."""

    model_family: ModelFamily
    image_max_pixels: int
    image_min_pixels: int
    processor_min_pixels: int | None
    processor_max_pixels: int | None


def frame_size_of(limits: PixelLimits, width: int, height: int) -> tuple[int, int]:
    """(W, H) of the grid the vision tower sees for an original ``width`` x ``height`` picture under
    ``limits`` (processor limits left None: the family's; the family's grid factor)."""
    return model_frame_size(
        width,
        height,
        limits.image_max_pixels,
        limits.image_min_pixels,
        limits.processor_min_pixels,
        limits.processor_max_pixels,
        family=limits.model_family,
    )


def boxes_to_frame(
    boxes: Sequence[Sequence[float]],
    width: int,
    height: int,
    family: ModelFamily,
    frame_size: tuple[int, int] | None = None,
) -> list[list[int]]:
    """Original-pixel xyxy boxes of one image in the model's coordinate frame (integers).

    By the encoder of the family's ``frame`` (qwenvl_roi/families.py ``FRAMES``): ``pixels`` (Qwen2.5-VL):
    absolute pixels of the resized image (``frame_size`` = model_frame_size(...), required), rounded half up
    and clamped to the frame; ``floor`` (Qwen2-VL): ``int(v * 1000 / side)`` clamped to [0, 999]; ``round``
    (Qwen3-VL, Qwen3.5): ``round(v / side * 1000)`` (Python's round, as Qwen3-VL's process_bbox tool and
    ms-swift's norm1000) clamped to [0, 1000]. The scale (1000) and clamp come from the frame. Relative
    coordinates do not change under the resize, so they need no frame size.
    """
    frame = _family(family).frame
    # each coordinate clamped to the image first, so no encoder sees a negative value or overflows on one near
    # float's limit (the regions contract accepts any finite number); each then clamps to its frame's high end
    boxes = [
        (min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height))
        for x1, y1, x2, y2 in boxes
    ]
    if frame.encoder == "round":
        scale, hi = frame.scale, frame.high
        assert scale is not None and hi is not None  # a normalised frame has both (families.FRAMES)
        return [
            [
                min(hi, round(x1 / width * scale)),
                min(hi, round(y1 / height * scale)),
                min(hi, round(x2 / width * scale)),
                min(hi, round(y2 / height * scale)),
            ]
            for x1, y1, x2, y2 in boxes
        ]
    if frame.encoder == "floor":
        scale, hi = frame.scale, frame.high
        assert scale is not None and hi is not None  # a normalised frame has both (families.FRAMES)
        return [
            [
                min(hi, int(x1 * scale / width)),
                min(hi, int(y1 * scale / height)),
                min(hi, int(x2 * scale / width)),
                min(hi, int(y2 * scale / height)),
            ]
            for x1, y1, x2, y2 in boxes
        ]
    if frame_size is None:
        raise ValueError(f"{family} boxes need frame_size = model_frame_size(...)")
    fw, fh = frame_size
    sx, sy = fw / width, fh / height
    out = []
    # the coordinates are >= 0, so int(v + 0.5) is floor(v + 0.5) (round half up); then clamped to the frame
    for x1, y1, x2, y2 in boxes:
        a, b, c, d = int(x1 * sx + 0.5), int(y1 * sy + 0.5), int(x2 * sx + 0.5), int(y2 * sy + 0.5)
        out.append([a if a < fw else fw, b if b < fh else fh, c if c < fw else fw, d if d < fh else fh])
    return out


def boxes_to_frame_many(
    boxes: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    family: ModelFamily,
    frame_w: np.ndarray | None = None,
    frame_h: np.ndarray | None = None,
) -> np.ndarray:
    """boxes_to_frame for many boxes of many images at once (build-sft frames every region of a split in
    one go): ``boxes`` (n, 4) original-pixel xyxy, each row with its image's ``width`` and ``height`` (n,)
    and, for the ``pixels`` frame, its frame size (n,). The same integers, op for op: np.rint rounds half
    to even as Python's round does, np.trunc cuts as int() does."""
    frame = _family(family).frame
    w, h = width[:, None].astype(np.float64), height[:, None].astype(np.float64)
    side = np.concatenate([w, h, w, h], axis=1)
    boxes = np.clip(boxes, 0.0, side)  # as boxes_to_frame: clamped to the image first
    if frame.encoder in ("round", "floor"):
        scale, hi = frame.scale, frame.high
        assert scale is not None and hi is not None  # a normalised frame has both (families.FRAMES)
        v = np.rint(boxes / side * scale) if frame.encoder == "round" else np.trunc(boxes * scale / side)
        return np.minimum(v, hi).astype(np.int64)
    if frame_w is None or frame_h is None:
        raise ValueError(f"{family} boxes need the frame size of every image")
    fw, fh = frame_w[:, None].astype(np.float64), frame_h[:, None].astype(np.float64)
    fs = np.concatenate([fw, fh, fw, fh], axis=1)
    v = boxes * (fs / side)  # as boxes_to_frame: sx = fw / width, then x1 * sx
    v = np.floor(v + 0.5)  # v >= 0: round half up, as int(v + 0.5)
    return np.minimum(v, fs).astype(np.int64)


def box_to_frame(
    box: Sequence[float],
    width: int,
    height: int,
    family: ModelFamily,
    frame_size: tuple[int, int] | None = None,
) -> list[int]:
    """One original-pixel xyxy box in the model's coordinate frame (see boxes_to_frame)."""
    return boxes_to_frame([box], width, height, family, frame_size)[0]
