"""Pictures as the model sees them, with candidate boxes drawn in the model's frame.

Why: a wrong coordinate frame, a rotated picture or a 16-bit image that the trainer clips to white can
only be seen on the pixels the trainer actually loads. LLaMA-Factory 0.9.5 opens the file with
``Image.open`` (no EXIF rotation), shrinks it to ``image_max_pixels`` / grows it to ``image_min_pixels``,
converts it to RGB (``mm_plugin.BasePlugin._preprocess_image``), applies the Qwen2-VL plugin's size
rules, and the Qwen processor resizes it to the ``smart_resize`` grid (multiples of the family's grid
factor, 28 or 32): that grid is the frame the model's coordinates live in (converters/frames.py).
:func:`model_view` replays those steps; boxes (original pixels of the picture at ``image``, xyxy) are
scaled into that frame and then into the thumbnail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from qwenvl_roi.converters.frames import box_to_frame, frame_size_of
from qwenvl_roi.families import DEFAULT_FAMILY, ModelFamily, family

if TYPE_CHECKING:
    from qwenvl_roi.converters.meta import DatasetMeta

#: a JPEG may be decoded this much smaller than the thumbnail (then enlarged by at most 1/0.9)
DRAFT_SLACK = 0.9


@dataclass(frozen=True)
class FrameSettings:
    """The pixel limits and model family a dataset was converted with (dataset_meta.json).

    Processor limits left None are the family's released processor's (the family table), so settings made
    from a family name alone never pair one family's grid with another family's limits."""

    model_family: ModelFamily = DEFAULT_FAMILY
    image_max_pixels: int = 1048576
    image_min_pixels: int = 1024
    processor_min_pixels: int | None = None
    processor_max_pixels: int | None = None

    def __post_init__(self) -> None:
        fam = family(self.model_family)
        if self.processor_min_pixels is None:
            object.__setattr__(self, "processor_min_pixels", fam.processor_min_pixels)
        if self.processor_max_pixels is None:
            object.__setattr__(self, "processor_max_pixels", fam.processor_max_pixels)

    @classmethod
    def from_meta(cls, meta: DatasetMeta) -> FrameSettings:
        """The settings a converted dataset records in its dataset_meta.json."""
        return cls(
            model_family=meta.model_family,
            image_max_pixels=meta.image_max_pixels,
            image_min_pixels=meta.image_min_pixels,
            processor_min_pixels=meta.processor_min_pixels,
            processor_max_pixels=meta.processor_max_pixels,
        )

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) of the grid the vision tower sees for an original ``width`` x ``height`` picture."""
        return frame_size_of(self, width, height)


def frame_settings(
    regions_file: str | Path, model_family: ModelFamily = DEFAULT_FAMILY
) -> tuple[FrameSettings, str | None]:
    """Settings from dataset_meta.json beside the regions file; when it is missing, (``model_family``'s
    defaults, warning): LLaMA-Factory's default pixel limits and that family's processor limits and grid."""
    from qwenvl_roi.converters.meta import load_dataset_meta
    from qwenvl_roi.errors import ConvertError

    try:
        meta = load_dataset_meta(regions_file)
    except ConvertError as exc:
        return FrameSettings(model_family), f"pictures use LLaMA-Factory's default pixel limits ({exc})"
    return FrameSettings.from_meta(meta), None


def trainer_image(image: Image.Image, settings: FrameSettings) -> Image.Image:
    """The RGB picture LLaMA-Factory 0.9.5's Qwen2-VL plugin hands to the processor, op by op."""
    # BasePlugin._preprocess_image: shrink, then grow, each with Image.resize's default filter; RGB
    if image.width * image.height > settings.image_max_pixels:
        f = math.sqrt(settings.image_max_pixels / (image.width * image.height))
        image = image.resize((int(image.width * f), int(image.height * f)))
    if image.width * image.height < settings.image_min_pixels:
        f = math.sqrt(settings.image_min_pixels / (image.width * image.height))
        image = image.resize((int(image.width * f), int(image.height * f)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    # Qwen2VLPlugin._preprocess_image: at least 28 px a side, aspect ratio at most 200
    if min(image.width, image.height) < 28:
        image = image.resize((max(image.width, 28), max(image.height, 28)))
    if image.width / image.height > 200:
        image = image.resize((image.height * 180, image.height))
    if image.height / image.width > 200:
        image = image.resize((image.width, image.width * 180))
    return image


@dataclass(frozen=True)
class View:
    """A picture as the model sees it, scaled by ``scale`` (<= 1) to fit a thumbnail."""

    image: Image.Image
    original_size: tuple[int, int]  # (w, h) of the file as the trainer loads it (no EXIF rotation)
    frame_size: tuple[int, int]  # (W, H) of the model's frame
    scale: float  # thumbnail pixels per frame pixel


def model_view(path: str | Path, settings: FrameSettings, max_side: int) -> View:
    """Load ``path`` as the trainer does and resize it to the model's frame, shrunk to ``max_side``.

    When the frame fits in ``max_side`` the result is the frame's pixels exactly (trainer picture resized
    to the frame with bicubic filtering, as the Qwen image processor does). Larger frames are shrunk in
    one step from the decoded file (a JPEG decoded at a reduced scale when that is at most 10% smaller
    than the thumbnail): a thumbnail of the same picture, much faster for big camera images.
    """
    with Image.open(path) as im:
        original = im.size
        frame = settings.frame_size(*original)
        scale = min(1.0, max_side / max(frame))
        if scale >= 1.0:
            im.load()
            out = trainer_image(im, settings)
            if out.size != frame:
                out = out.resize(frame, Image.Resampling.BICUBIC)
        else:
            target = (max(1, round(frame[0] * scale)), max(1, round(frame[1] * scale)))
            if im.format == "JPEG":  # DCT scaling: decode at 1/2, 1/4 or 1/8 when that is (nearly) enough
                im.draft("RGB", (math.ceil(target[0] * DRAFT_SLACK), math.ceil(target[1] * DRAFT_SLACK)))
            out = im.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
            if out.mode != "RGB":
                out = out.convert("RGB")
            scale = target[0] / frame[0]
    return View(out, original, frame, scale)


def box_in_frame(
    box: Sequence[float], original: tuple[int, int], frame: tuple[int, int], model_family: ModelFamily
) -> list[float]:
    """An original-pixel xyxy box as the model reads it, in frame pixels.

    Qwen2.5-VL reads the integers converters/frames.py writes (frame pixels); Qwen2-VL, Qwen3-VL and Qwen3.5
    read integers on 0..1000 (the family table's coordinate frame), mapped back onto the frame here. Each
    is what the prompt told the model.
    """
    scale = family(model_family).frame.scale
    if scale is not None:
        v = box_to_frame(box, original[0], original[1], model_family)
        return [
            v[0] * frame[0] / scale,
            v[1] * frame[1] / scale,
            v[2] * frame[0] / scale,
            v[3] * frame[1] / scale,
        ]
    return [float(c) for c in box_to_frame(box, original[0], original[1], model_family, frame)]


@dataclass(frozen=True)
class Mark:
    """One box to draw: display-pixel xyxy (edges, exclusive right/bottom), colour and a short tag."""

    box: Sequence[float]
    color: tuple[int, int, int]
    tag: str
    text_color: tuple[int, int, int] = (255, 255, 255)


def line_width(size: tuple[int, int]) -> int:
    """Outline width for a picture of this size: 1 px up to 384 px, then about 1 px per 256 px."""
    return max(1, round(max(size) / 256))


def tag_font_size(size: tuple[int, int]) -> int:
    """Tag text size: readable on small thumbnails, not dominating large ones."""
    return max(10, min(16, round(max(size) / 40)))


def draw_marks(image: Image.Image, marks: Sequence[Mark], font_path: str) -> Image.Image:
    """Draw each box's outline inside its edges, then its tag just above the box (below or inside when
    there is no room). Later marks are drawn over earlier ones; the picture is changed in place."""
    draw = ImageDraw.Draw(image)
    width = line_width(image.size)
    font = ImageFont.truetype(font_path, tag_font_size(image.size))
    w_img, h_img = image.size
    pixel_boxes = []
    for mark in marks:
        x1, y1, x2, y2 = (round(v) for v in mark.box)
        x1, x2 = max(0, min(x1, w_img - 1)), max(0, min(x2 - 1, w_img - 1))
        y1, y2 = max(0, min(y1, h_img - 1)), max(0, min(y2 - 1, h_img - 1))
        x2, y2 = max(x1, x2), max(y1, y2)
        pixel_boxes.append((x1, y1, x2, y2))
        draw.rectangle((x1, y1, x2, y2), outline=mark.color, width=width)
    for mark, (x1, y1, _x2, y2) in zip(marks, pixel_boxes, strict=True):
        if not mark.tag:
            continue
        left, top, right, bottom = font.getbbox(mark.tag)
        tw, th = right - left + 4, bottom - top + 2
        if y1 - th >= 0:
            ty = y1 - th
        elif y2 + 1 + th <= h_img:
            ty = y2 + 1
        else:
            ty = y1
        tx = max(0, min(x1, w_img - tw))
        draw.rectangle((tx, ty, tx + tw - 1, ty + th - 1), fill=mark.color)
        draw.text((tx + 2 - left, ty + 1 - top), mark.tag, fill=mark.text_color, font=font)
    return image
