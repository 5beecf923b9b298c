"""Synthetic industrial-defect dataset in the users' real, messy on-disk format.

Why: the demo and the tests need data that looks like what users have (nested batch folders, same-stem
txt files with full-width separators, several boxes on one line, a few broken lines, mixed encodings)
and that a tiny model can learn from in minutes on a CPU: high-contrast defects of three kinds that look
different (thin dark cracks, soft dark seepage blotches, bright spalling patches) on a textured surface.
Everything is seeded per image, so the same config gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from qwenvl_roi.fileio import atomic_dir

MANIFEST = "synth_manifest.json"

# What the annotators wrote in the third column (Chinese, the users' domain), with the spelling variants
# real files carry; scan-labels folds these into one canonical label each.
LABEL_SPELLINGS: dict[str, list[str]] = {
    "crack": ["裂缝", "裂缝 ", "Crack"],
    "seepage": ["渗漏", "渗水"],
    "spalling": ["掉块", "剥落"],
}
KINDS: tuple[str, ...] = ("crack", "seepage", "spalling")


class SynthConfig(BaseModel):
    """How much data to draw and how; the defaults are the demo's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_abnormal: int = Field(320, ge=1, description="images with at least one defect (each gets a txt)")
    n_normal: int = Field(320, ge=1, description="defect-free images (no txt)")
    size: int = Field(224, ge=96, le=2048, description="image side in pixels (square images)")
    images_per_batch: int = Field(8, ge=1, description="images per nested batch folder (the split group)")
    max_defects: int = Field(3, ge=1, le=6, description="defects per abnormal image, drawn from 1..max")
    bad_line_every: int = Field(
        25, ge=0, description="every Nth abnormal txt gets one deliberately broken extra line (0 = none)"
    )
    seed: int = 0


class Defect(BaseModel):
    """One drawn defect: its kind and tight box (xyxy, pixels)."""

    kind: Literal["crack", "seepage", "spalling"]
    box: tuple[int, int, int, int]


def _rng(seed: int, *key: object) -> np.random.Generator:
    """A generator seeded from (seed, key), independent of generation order."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32), -1.5, 1.5)


def _surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey concrete-like surface: several octaves of noise plus fine grain."""
    base = rng.uniform(125.0, 150.0)
    tex = (
        14.0 * _smooth_noise(rng, size, 4)
        + 8.0 * _smooth_noise(rng, size, 12)
        + 5.0 * _smooth_noise(rng, size, 40)
        + rng.normal(0.0, 4.0, size=(size, size)).astype(np.float32)
    )
    return base + tex


def _crack(rng: np.random.Generator, canvas: np.ndarray, cx: float, cy: float) -> tuple[int, int, int, int]:
    """A thin dark random-walk polyline (2-3 px wide), sometimes with a branch."""
    size = canvas.shape[0]
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    width = int(rng.integers(2, 4))
    angle = rng.uniform(0, math.pi)
    n_seg = int(rng.integers(8, 12))
    pts = [(cx, cy)]
    for direction in (1.0, -1.0):
        x, y, a = cx, cy, angle + (0 if direction > 0 else math.pi)
        for _ in range(n_seg // 2):
            a += rng.uniform(-0.6, 0.6)
            step = rng.uniform(5.0, 9.0)
            x, y = x + step * math.cos(a), y + step * math.sin(a)
            if direction > 0:
                pts.append((x, y))
            else:
                pts.insert(0, (x, y))
    draw.line(pts, fill=255, width=width, joint="curve")
    if rng.random() < 0.5:
        bx, by = pts[len(pts) // 3]
        a = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
        branch = [(bx, by)]
        for _ in range(3):
            a += rng.uniform(-0.4, 0.4)
            bx, by = bx + 6 * math.cos(a), by + 6 * math.sin(a)
            branch.append((bx, by))
        draw.line(branch, fill=255, width=max(2, width - 1), joint="curve")
    mask = np.asarray(layer, dtype=np.float32) / 255.0
    darkness = rng.uniform(85.0, 110.0)
    canvas -= darkness * mask
    return _mask_box(mask > 0.5)


def _seepage(rng: np.random.Generator, canvas: np.ndarray, cx: float, cy: float) -> tuple[int, int, int, int]:
    """A soft dark blotch: an anisotropic Gaussian with a ragged edge."""
    size = canvas.shape[0]
    sx, sy = rng.uniform(9.0, 16.0), rng.uniform(9.0, 16.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    g = np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2) / 2.0)
    ragged = 1.0 + 0.35 * _smooth_noise(rng, size, 16)
    blotch = np.clip(g * ragged, 0.0, 1.0)
    canvas -= rng.uniform(85.0, 105.0) * blotch
    return _mask_box(blotch > 0.25)


def _spalling(
    rng: np.random.Generator, canvas: np.ndarray, cx: float, cy: float
) -> tuple[int, int, int, int]:
    """A bright irregular patch (exposed aggregate) with a thin dark rim."""
    size = canvas.shape[0]
    n = int(rng.integers(7, 12))
    r0 = rng.uniform(11.0, 18.0)
    angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
    poly = [
        (cx + r0 * rng.uniform(0.7, 1.2) * math.cos(a), cy + r0 * rng.uniform(0.7, 1.2) * math.sin(a))
        for a in angles
    ]
    layer = Image.new("L", (size, size), 0)
    ImageDraw.Draw(layer).polygon(poly, fill=255, outline=255)
    mask = np.asarray(layer, dtype=np.float32) / 255.0
    rim = np.asarray(layer.filter(ImageFilter.MaxFilter(3)), dtype=np.float32) / 255.0 - mask
    fill = rng.uniform(225.0, 245.0) + rng.normal(0.0, 6.0, size=canvas.shape).astype(np.float32)
    canvas[:] = canvas * (1.0 - mask) + fill * mask
    canvas -= 50.0 * rim
    return _mask_box((mask + rim) > 0.5)


DRAWERS = {"crack": _crack, "seepage": _seepage, "spalling": _spalling}


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight xyxy box (x2/y2 exclusive) of a boolean mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _annotator_box(
    tight: tuple[int, int, int, int], size: int, pad: int = 3, min_side: int = 32
) -> tuple[int, int, int, int]:
    """The box an annotator would draw: a small margin, at least `min_side` per side, inside the image."""
    x1, y1, x2, y2 = tight[0] - pad, tight[1] - pad, tight[2] + pad, tight[3] + pad
    out = []
    for lo, hi in ((x1, x2), (y1, y2)):
        grow = max(0, min_side - (hi - lo))
        lo, hi = lo - grow // 2, hi + grow - grow // 2
        shift = max(0, -lo) - max(0, hi - size)
        out.append((lo + shift, hi + shift))
    return (out[0][0], out[1][0], out[0][1], out[1][1])


def _place(rng: np.random.Generator, size: int, taken: list[tuple[float, float]]) -> tuple[float, float]:
    """A defect centre away from the border and from other defects (so boxes do not overlap)."""
    margin = 0.16 * size
    best = (size / 2, size / 2)
    for _ in range(200):
        c = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
        if all(math.dist(c, t) > 0.3 * size for t in taken):
            return c
        best = c
    return best


def draw_image(cfg: SynthConfig, index: int, abnormal: bool) -> tuple[Image.Image, list[Defect]]:
    """One surface image and the defects drawn on it (none for a normal image)."""
    rng = _rng(cfg.seed, "abnormal" if abnormal else "normal", index)
    canvas = _surface(rng, cfg.size)
    defects: list[Defect] = []
    if abnormal:
        n = int(rng.integers(1, cfg.max_defects + 1))
        taken: list[tuple[float, float]] = []
        for _ in range(n):
            kind = KINDS[int(rng.integers(0, len(KINDS)))]
            cx, cy = _place(rng, cfg.size, taken)
            taken.append((cx, cy))
            tight = DRAWERS[kind](rng, canvas, cx, cy)
            defects.append(Defect(kind=kind, box=_annotator_box(tight, cfg.size)))
    pixels = np.clip(canvas, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB"), defects


def _coords_text(rng: np.random.Generator, boxes: list[tuple[int, int, int, int]]) -> str:
    """The coords column in the messy styles seen in real files; several boxes are space-separated."""
    style = int(rng.integers(0, 4))
    seps = ["；", "，", ",", ";"]
    parts = []
    for box in boxes:
        if style == 3:  # mixed separators inside one box
            nums = [str(v) for v in box]
            parts.append(nums[0] + "，" + nums[1] + "；" + nums[2] + " , " + nums[3])
        else:
            parts.append(seps[style].join(str(v) for v in box))
    return "  ".join(parts)


BAD_LINES: list[tuple[str, str]] = [
    ("{name}；12；40；88；{label}", "3 numbers: not a multiple of 4"),
    ("{name}；12；4O；88；96；{label}", "non-numeric token (letter O for zero)"),
    ("{name}；50；50；50；90；{label}", "zero-width box"),
    ("{name}；9000；9000；9100；9100；{label}", "box entirely outside the image"),
    ("{name}；{label}", "no coordinates"),
]


def _txt_lines(
    cfg: SynthConfig, rng: np.random.Generator, name: str, defects: list[Defect], index: int
) -> tuple[list[str], list[dict]]:
    """Annotation lines for one image: same-label boxes often share a line; maybe one broken line."""
    by_kind: dict[str, list[tuple[int, int, int, int]]] = {}
    for d in defects:
        by_kind.setdefault(d.kind, []).append(d.box)
    lines: list[str] = []
    for kind, boxes in by_kind.items():
        spellings = LABEL_SPELLINGS[kind]
        label = spellings[int(rng.integers(0, len(spellings)))]
        delim = "；" if rng.random() < 0.6 else ";"
        groups = [boxes] if rng.random() < 0.7 else [[b] for b in boxes]
        for group in groups:
            lines.append(
                f"{name}{delim}{_coords_text(rng, group)}{delim}{label}" + (" " if rng.random() < 0.2 else "")
            )
    bad: list[dict] = []
    if cfg.bad_line_every and index % cfg.bad_line_every == cfg.bad_line_every - 1:
        template, reason = BAD_LINES[(index // cfg.bad_line_every) % len(BAD_LINES)]
        lines.append(template.format(name=name, label=LABEL_SPELLINGS["crack"][0]))
        bad.append({"line": len(lines), "reason": reason})
    if rng.random() < 0.15:
        lines.insert(0, "")  # a blank first line
        for b in bad:
            b["line"] += 1
    return lines, bad


def _write_txt(path: Path, lines: list[str], rng: np.random.Generator) -> str:
    """Encode like the tools users have: UTF-8, UTF-8 with BOM or GBK; LF or CRLF."""
    enc = ["utf-8", "utf-8", "utf-8-sig", "gbk"][int(rng.integers(0, 4))]
    newline = "\r\n" if rng.random() < 0.4 else "\n"
    path.write_bytes((newline.join(lines) + newline).encode(enc))
    return enc


def _rel_folder(kind: str, index: int, cfg: SynthConfig) -> Path:
    """Nested batch folders: <line>/<batch>; one batch is one split group."""
    batch = index // cfg.images_per_batch
    return Path(f"line_{batch % 4 + 1}") / f"{'A' if kind == 'abnormal' else 'N'}batch_{batch:03d}"


def _config_digest(cfg: SynthConfig) -> str:
    """Identity of a generated dataset: config plus this module's source (drawing code changes count)."""
    src = Path(__file__).read_bytes()
    return hashlib.sha256(cfg.model_dump_json().encode() + src).hexdigest()[:16]


def generate(out_root: Path, cfg: SynthConfig | None = None, *, progress: bool = True) -> dict:
    """Write `<out_root>/abnormal` and `<out_root>/normal` plus a manifest; return the manifest.

    Re-run safe: an existing dataset made from the same config is reused as is; otherwise a complete new
    one is built in a temporary sibling folder and swapped in, so a killed run never leaves half a dataset.
    """
    cfg = cfg or SynthConfig()
    out_root = Path(out_root)
    digest = _config_digest(cfg)
    manifest_path = out_root / MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if old.get("digest") == digest:
            return old
    with atomic_dir(out_root) as tmp:
        manifest = _generate_into(tmp, cfg, digest, progress)
    return manifest


def _generate_into(root: Path, cfg: SynthConfig, digest: str, progress: bool) -> dict:
    images: list[dict] = []
    bad_lines: list[dict] = []
    jobs = [("abnormal", i) for i in range(cfg.n_abnormal)] + [("normal", i) for i in range(cfg.n_normal)]
    for kind, i in tqdm(jobs, desc="synth images", disable=not progress, unit="img"):
        abnormal = kind == "abnormal"
        img, defects = draw_image(cfg, i, abnormal)
        rng = _rng(cfg.seed, "files", kind, i)
        ext = ".png" if rng.random() < 0.75 else ".PNG"
        folder = root / kind / _rel_folder(kind, i, cfg)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{'defect' if abnormal else 'surface'}_{i:05d}"
        img_path = folder / f"{stem}{ext}"
        img.save(img_path, format="PNG", optimize=False)
        rel = img_path.relative_to(root).as_posix()
        entry: dict = {"image": rel, "source": kind, "defects": [d.model_dump(mode="json") for d in defects]}
        if abnormal:
            lines, bad = _txt_lines(cfg, rng, img_path.name, defects, i)
            txt = img_path.with_suffix(".txt")
            entry["txt_encoding"] = _write_txt(txt, lines, rng)
            for b in bad:
                bad_lines.append({"file": txt.relative_to(root).as_posix(), **b})
        images.append(entry)
    counts = {k: sum(d["kind"] == k for e in images for d in e["defects"]) for k in KINDS}
    manifest = {
        "digest": digest,
        "config": cfg.model_dump(mode="json"),
        "abnormal_dir": "abnormal",
        "normal_dir": "normal",
        "n_images": len(images),
        "defects_per_kind": counts,
        "bad_lines": bad_lines,
        "images": images,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return manifest
