"""Coordinate frames: the image size the model actually sees, and boxes written in that frame.

Qwen2.5-VL reads box coordinates as absolute pixels of the image after LLaMA-Factory's resize
(llamafactory/data/mm_plugin.py: ``BasePlugin._preprocess_image`` then ``Qwen2VLPlugin``'s override)
and the processor's ``smart_resize`` to multiples of 28; Qwen2-VL reads them normalised to [0, 1000).
LLaMA-Factory never rescales coordinates written as text, so the converters must.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

FACTOR = 28  # patch_size 14 * merge_size 2 for both Qwen2-VL and Qwen2.5-VL
ModelFamily = Literal["qwen2_5_vl", "qwen2_vl"]


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
    processor_min_pixels: int = 3136,
    processor_max_pixels: int = 12845056,
) -> tuple[int, int]:
    """(W, H) of the pixel grid the vision tower sees for an original ``width`` x ``height`` image."""
    w, h = llamafactory_resize(width, height, image_max_pixels, image_min_pixels)
    hh, ww = smart_resize(h, w, processor_min_pixels, processor_max_pixels)
    return ww, hh


def boxes_to_frame(
    boxes: Sequence[Sequence[float]],
    width: int,
    height: int,
    family: ModelFamily,
    frame_size: tuple[int, int] | None = None,
) -> list[list[int]]:
    """Original-pixel xyxy boxes of one image in the model's coordinate frame (integers).

    qwen2_5_vl: absolute pixels of the resized image (``frame_size`` = model_frame_size(...), required),
    rounded half up and clamped to the frame; qwen2_vl: ``int(v * 1000 / side)`` clamped to [0, 999].
    """
    if family == "qwen2_vl":
        return [
            [
                min(999, max(0, int(x1 * 1000 / width))),
                min(999, max(0, int(y1 * 1000 / height))),
                min(999, max(0, int(x2 * 1000 / width))),
                min(999, max(0, int(y2 * 1000 / height))),
            ]
            for x1, y1, x2, y2 in boxes
        ]
    if family != "qwen2_5_vl":
        raise ValueError(f"unknown model family {family!r}")
    if frame_size is None:
        raise ValueError("qwen2_5_vl boxes need frame_size = model_frame_size(...)")
    fw, fh = frame_size
    sx, sy = fw / width, fh / height
    out = []
    # clamp at 0 first so int(v + 0.5) equals floor(v + 0.5) (round half up), then clamp to the frame
    for x1, y1, x2, y2 in boxes:
        a, b, c, d = x1 * sx, y1 * sy, x2 * sx, y2 * sy
        a = int(a + 0.5) if a > 0 else 0
        b = int(b + 0.5) if b > 0 else 0
        c = int(c + 0.5) if c > 0 else 0
        d = int(d + 0.5) if d > 0 else 0
        out.append([a if a < fw else fw, b if b < fh else fh, c if c < fw else fw, d if d < fh else fh])
    return out


def box_to_frame(
    box: Sequence[float],
    width: int,
    height: int,
    family: ModelFamily,
    frame_size: tuple[int, int] | None = None,
) -> list[int]:
    """One original-pixel xyxy box in the model's coordinate frame (see boxes_to_frame)."""
    return boxes_to_frame([box], width, height, family, frame_size)[0]
