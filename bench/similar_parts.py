"""Synthetic product photos that are alike by design, and twins planted the way they arise.

A product line's pictures share what the near-duplicate search must not be fooled by: one fixture and table
(textured), one part shape with its holes and groove, one lighting (a vignette and a gradient). What differs
between two *units* (distinct pictures, "siblings") is what differs on a real line: where the part lies
(shifts up to ``max_shift`` of the width), the unit's own surface (brushed grain and faint blotches, weak
against the shared structure), its defects (scratches, stains, cracks at random places, or none), the
exposure (gain within 2 %) and sensor noise. Twins are made from a sibling's saved file as they arise:
re-encoded JPEG (quality 85 -> 70), brightness +3 %, resized to 90 %, PNG <-> JPEG, and an EXIF-rotated
copy (stored turned with an Orientation tag, so it displays the same). A ``reshot`` (the same unit
photographed again: shifted, other noise) is generated for the benchmark's information only.

Used by tests/converters/test_near_duplicates.py and bench/near_duplicates.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TWIN_KINDS = ("reencode_q70", "brightness_3pct", "resize_90pct", "png_jpeg", "exif_rotated")
ORIENTATION_TAG = 0x0112


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, aniso: float = 1.0) -> np.ndarray:
    """Noise with features about ``cell`` pixels across (``aniso`` > 1 stretches them along x), unit std."""
    gh = max(2, int(h / cell))
    gw = max(2, int(w / (cell * aniso)))
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
    return (big - big.mean()) / (big.std() + 1e-6)


@dataclass
class Unit:
    """One physical part: its own surface and defects (a re-shot of it shares both)."""

    grain: np.ndarray  # (H, W) float32, the part's surface (part frame)
    defects: np.ndarray  # (H, W) float32, added grey levels (part frame)
    boxes: list[tuple[str, int, int, int, int]]  # label, x1, y1, x2, y2 in the part frame (no shift)


class ProductLine:
    """Pictures of one product from one fixed camera: ``unit`` draws a part, ``shot`` photographs it."""

    def __init__(self, seed: int, width: int = 1024, height: int = 768, max_shift: float = 0.02):
        self.rng = np.random.default_rng(seed)
        self.w, self.h = width, height
        self.max_shift = max_shift
        rng = self.rng
        u = width / 1024  # texture sizes are set for 1024 pixels wide and scale with the picture
        self.u = u
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.yy, self.xx = yy, xx
        cx, cy = width / 2, height / 2
        # the table/fixture: dark, textured; the lighting: vignette plus a gradient
        self.table = (
            55 + 10 * _smooth_noise(rng, height, width, 40) + 4 * _smooth_noise(rng, height, width, 4)
        )
        r2 = ((xx - cx) / width) ** 2 + ((yy - cy) / height) ** 2
        self.light = (1.0 - 0.9 * r2) * (1.0 + 0.08 * (xx - cx) / width)
        # the part: a rounded plate with holes and a machined groove (same for every unit)
        self.part_half = (0.34 * width, 0.36 * height)
        self.holes = [
            (cx + dx * width, cy + dy * height, rad * width)
            for dx, dy, rad in ((-0.22, -0.22, 0.035), (0.22, -0.22, 0.035), (-0.22, 0.22, 0.035),
                                (0.22, 0.22, 0.035), (0.0, 0.0, 0.08))
        ]  # fmt: skip
        self.tint = np.array([1.0, 0.98, 0.93], dtype=np.float32)

    def _part_shape(self, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
        """(mask, shading) of the part lying shifted by (dx, dy) pixels."""
        cx, cy = self.w / 2 + dx, self.h / 2 + dy
        hx, hy = self.part_half
        corner = 0.06 * self.w
        qx = np.maximum(np.abs(self.xx - cx) - (hx - corner), 0)
        qy = np.maximum(np.abs(self.yy - cy) - (hy - corner), 0)
        outside = np.sqrt(qx**2 + qy**2) - corner
        mask = np.clip(0.5 - outside, 0, 1)  # anti-aliased edge
        shade = 150 + 25 * (self.yy - cy) / self.h
        for hx_, hy_, rad in self.holes:
            d = np.sqrt((self.xx - hx_ - dx) ** 2 + (self.yy - hy_ - dy) ** 2)
            mask = mask * np.clip(d - rad + 0.5, 0, 1)
            ring = np.exp(-(((d - rad * 1.6) / (0.004 * self.w)) ** 2))
            shade = shade - 35 * ring  # a chamfer around each hole
        groove = np.exp(-(((np.abs(self.xx - cx) - 0.3 * self.w) / (0.003 * self.w)) ** 2))
        return mask, shade - 30 * groove

    def unit(self, defects: int | None = None) -> Unit:
        """A new physical unit with its surface and 0-3 defects (``defects`` to fix the count)."""
        rng = self.rng
        h, w = self.h, self.w
        u = self.u
        grain = 3.0 * _smooth_noise(rng, h, w, 2.0 * u, aniso=12.0) + 3.0 * _smooth_noise(rng, h, w, 60.0 * u)
        add = np.zeros((h, w), dtype=np.float32)
        boxes = []
        n = int(rng.integers(0, 4)) if defects is None else defects
        for _ in range(n):
            kind = str(rng.choice(["scratch", "stain", "crack"]))
            size = float(rng.uniform(0.02, 0.07)) * w
            x0 = float(rng.uniform(0.2, 0.8)) * w
            y0 = float(rng.uniform(0.2, 0.8)) * h
            if kind == "stain":
                d2 = ((self.xx - x0) / size) ** 2 + ((self.yy - y0) / (0.6 * size)) ** 2
                add -= 45 * np.exp(-2 * d2)
                box = (x0 - size, y0 - 0.6 * size, x0 + size, y0 + 0.6 * size)
            else:
                angle = float(rng.uniform(0, np.pi))
                ux, uy = np.cos(angle), np.sin(angle)
                along = (self.xx - x0) * ux + (self.yy - y0) * uy
                across = -(self.xx - x0) * uy + (self.yy - y0) * ux
                if kind == "crack":
                    across = across + 0.04 * size * np.sin(along / (0.05 * size))
                width = 0.0025 * w if kind == "scratch" else 0.0018 * w
                line = np.exp(-((across / width) ** 2)) * (np.abs(along) < size)
                add += (60 if kind == "scratch" else -70) * line
                ex, ey = abs(ux) * size + 3, abs(uy) * size + 3
                box = (x0 - ex, y0 - ey, x0 + ex, y0 + ey)
            boxes.append((kind, *(int(round(v)) for v in box)))
        return Unit(grain.astype(np.float32), add, boxes)

    def shot(self, unit: Unit, shift: tuple[float, float] | None = None) -> np.ndarray:
        """Photograph ``unit`` lying shifted (random within max_shift when None): (H, W, 3) uint8."""
        rng = self.rng
        if shift is None:
            s = self.max_shift * self.w
            shift = (float(rng.uniform(-s, s)), float(rng.uniform(-s, s)))
        dx, dy = int(round(shift[0])), int(round(shift[1]))
        mask, shade = self._part_shape(dx, dy)
        surface = np.roll(unit.grain + unit.defects, (dy, dx), axis=(0, 1))
        grey = self.table * (1 - mask) + (shade + surface) * mask
        gain = float(rng.uniform(0.98, 1.02))
        grey = grey * self.light * gain
        rgb = grey[..., None] * self.tint + rng.normal(0, 2.0, (self.h, self.w, 3)).astype(np.float32)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def save(arr: np.ndarray, path: Path, quality: int = 85) -> Path:
    """Save as the extension says (JPEG at ``quality``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=quality)
    else:
        im.save(path, compress_level=1)
    return path


def plant_twin(source: Path, kind: str, out: Path) -> Path:
    """Write a twin of the picture at ``source`` made the way ``kind`` says; returns its path (the
    extension may change: png_jpeg turns a JPEG into a PNG and a PNG into a JPEG)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as im:
        im.load()
        pic = im.convert("RGB")
    if kind == "reencode_q70":
        # the frame re-saved by a tool at a lower quality
        path = out.with_suffix(".jpg")
        pic.save(path, quality=70)
    elif kind == "brightness_3pct":
        arr = np.asarray(pic, dtype=np.float32) * 1.03
        path = out.with_suffix(".jpg")
        Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).save(path, quality=90)
    elif kind == "resize_90pct":
        small = pic.resize((round(pic.width * 0.9), round(pic.height * 0.9)), Image.Resampling.LANCZOS)
        path = out.with_suffix(".jpg")
        small.save(path, quality=85)
    elif kind == "png_jpeg":
        if source.suffix.lower() == ".png":
            path = out.with_suffix(".jpg")
            pic.save(path, quality=85)
        else:
            path = out.with_suffix(".png")
            pic.save(path, compress_level=1)
    elif kind == "exif_rotated":
        # stored turned 90 degrees anticlockwise; Orientation 6 tells viewers to turn it back clockwise
        path = out.with_suffix(".jpg")
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = 6
        pic.transpose(Image.Transpose.ROTATE_90).save(path, quality=85, exif=exif)
    else:
        raise ValueError(f"unknown twin kind {kind!r}")
    return path


@dataclass
class Planted:
    """A generated set: sibling pictures, and twins (twin path, its original, kind)."""

    siblings: list[Path]
    twins: list[tuple[Path, Path, str]]
    boxes: dict[Path, list[tuple[str, int, int, int, int]]]


def generate(
    root: Path,
    n_siblings: int,
    twins_per_kind: int,
    seed: int = 0,
    width: int = 1024,
    height: int = 768,
    lines: int = 1,
    max_shift: float = 0.02,
) -> Planted:
    """``n_siblings`` distinct pictures over ``lines`` product lines (even ones JPEG, odd ones PNG), in batch
    folders of 10, and ``twins_per_kind`` twins of each kind, of distinct originals (a JPEG first, then a
    PNG, ...), in their own folder ``resent/``."""
    products = [ProductLine(seed * 1000 + k, width, height, max_shift) for k in range(lines)]
    rng = np.random.default_rng(seed)
    siblings: list[Path] = []
    boxes: dict[Path, list[tuple[str, int, int, int, int]]] = {}
    for k in range(n_siblings):
        line = products[k % lines]
        unit = line.unit()
        ext = ".jpg" if k % 2 == 0 else ".png"
        s = max_shift * width
        dx, dy = round(float(rng.uniform(-s, s))), round(float(rng.uniform(-s, s)))
        path = save(
            line.shot(unit, (dx, dy)), root / f"line{k % lines}" / f"batch{k // 10:03d}" / f"part{k:04d}{ext}"
        )
        siblings.append(path)
        boxes[path] = [(lab, x1 + dx, y1 + dy, x2 + dx, y2 + dy) for lab, x1, y1, x2, y2 in unit.boxes]
    twins: list[tuple[Path, Path, str]] = []
    # distinct originals, alternately a JPEG and a PNG for each kind (png_jpeg goes both ways)
    pools = [[i for i in rng.permutation(len(siblings)).tolist() if (i % 2) == parity] for parity in (0, 1)]
    for r in range(twins_per_kind):
        for kind in TWIN_KINDS:
            src = siblings[pools[r % 2].pop()]
            path = plant_twin(src, kind, root / "resent" / f"{kind}_{src.stem}")
            twins.append((path, src, kind))
            boxes[path] = boxes[src]
    return Planted(siblings, twins, boxes)
