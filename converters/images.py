"""Images as the trainer will load them: EXIF orientation and pixel modes checked, fixed copies cached.

LLaMA-Factory 0.9.5 loads an image with ``Image.open`` and ``image.convert("RGB")``
(llamafactory/data/mm_plugin.py: ``BasePlugin._regularize_images`` -> ``_preprocess_image``), with no
``exif_transpose``. So a JPEG whose EXIF says "rotate" is trained on as stored, while labelling tools show it
(and its boxes) rotated; and 16-/32-bit or float grey is clipped at 255 (a 12-bit defect at 3000 on a 1000
background becomes white on white). Palette, CMYK and alpha images depend on what PIL's conversion does.

Every image's header is read (no pixel decoding) for its size, mode and orientation: by PIL, or for a plain
JPEG/PNG by image_header.py, which gives PIL's answer faster. Images that need nothing (8-bit RGB/L/1, no
orientation) are used where they are. Every other image gets an upright 8-bit RGB PNG copy under
``out_dir/image_cache/`` that the datasets point to (``image_fixes: fix``), or is reported and left out
(``image_fixes: flag``). High bit depths are scaled by the bit depth the dataset actually uses (the largest
pixel value over all such images) or ``image_bit_depth``; anything clipped is reported.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from qwenvl_roi.fileio import atomic_open, write_json

from .image_header import plain_header
from .names import is_utf8, not_utf8_reason, safe_rel, shown
from .paths import relative_to_folder

CACHE_DIR = "image_cache"
INDEX_FILE = "index.json"
CACHE_VERSION = 1

FINE_MODES = frozenset({"RGB", "L", "1"})  # convert("RGB") reproduces these exactly
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_EXIF_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")

# why a copy is made (report keys, in this order)
REASONS = ("exif_orientation", "16_bit", "32_bit", "float", "palette", "cmyk", "alpha", "other_mode")
REASONS += ("file_name",)  # not the pixels: a name the UTF-8 datasets cannot hold
REASON_TEXT = {
    "exif_orientation": "EXIF orientation {orientation}: shown turned by labelling tools, not by the trainer",
    "16_bit": "16-bit grey ({mode}): the trainer's convert('RGB') clips it at 255",
    "32_bit": "32-bit integer grey ({mode}): the trainer's convert('RGB') clips it at 255",
    "float": "float grey ({mode}): the trainer's convert('RGB') clips it at 255",
    "palette": "palette image ({mode})",
    "cmyk": "CMYK image",
    "alpha": "alpha channel ({mode}): composited over white",
    "other_mode": "pixel mode {mode}",
    "file_name": "file name not UTF-8: the UTF-8 datasets cannot name it (copied under a UTF-8 name)",
}


def mode_reason(mode: str) -> str | None:
    """Why an image of this PIL mode needs an 8-bit RGB copy; None when the trainer's conversion is exact."""
    if mode in FINE_MODES:
        return None
    if mode.startswith("I;16"):
        return "16_bit"
    if mode == "I":
        return "32_bit"
    if mode == "F":
        return "float"
    if mode in ("P", "PA"):
        return "palette"
    if mode == "CMYK":
        return "cmyk"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        return "alpha"
    return "other_mode"


@dataclass(frozen=True)
class Inspection:
    """What an image header says: size as displayed (after orientation), mode, orientation, fixes needed."""

    width: int
    height: int
    mode: str
    orientation: int
    reasons: tuple[str, ...]
    note: str = ""  # e.g. unreadable EXIF (the image is used as stored)

    def describe(self) -> str:
        texts = (REASON_TEXT[r].format(mode=self.mode, orientation=self.orientation) for r in self.reasons)
        return "; ".join(texts)


#: formats whose Pillow reader already gives the size as displayed (orientations 5-8 swapped) and turns the
#: pixels itself on load (TiffImagePlugin: ``_setup`` and ``load_end``); the others give the stored size
SIZE_AS_DISPLAYED = frozenset({"TIFF"})


def _orientation(im: Image.Image) -> tuple[int, str]:
    """EXIF orientation (1 when absent or not 2-8) read from the header, and a note if EXIF is unreadable."""
    if not hasattr(im, "tag_v2") and not any(k in im.info for k in _EXIF_SOURCES):
        return 1, ""
    try:
        # the base method parses what the header gave; PNG's override would decode the pixels first
        value = Image.Image.getexif(im).get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # corrupt EXIF blocks raise many types
        return 1, f"EXIF unreadable ({type(exc).__name__}: {exc}); image used as stored"
    return (value if isinstance(value, int) and 2 <= value <= 8 else 1), ""


@contextmanager
def _recording() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised inside, recorded (none shown). PIL only warns, without a file name, about a
    corrupt EXIF block ("Possibly corrupt EXIF data", "Truncated File Read"): such a warning becomes the
    image's note in the report."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def inspect(path: str | Path) -> Inspection | str:
    """Header-only inspection, or the reason the image cannot be read."""
    with _recording() as caught:
        return _inspect(path, caught)


def _inspect(path: str | Path, caught: list[warnings.WarningMessage]) -> Inspection | str:
    """inspect's work inside ``_recording``, whose list is ``caught``: emptied first, so that it holds this
    image's warnings only (a survey records once for every image)."""
    caught.clear()
    plain = plain_header(path)
    if plain is not None:  # a plain JPEG or PNG: Pillow's answer without Pillow's parsing
        w, h, mode = plain
        why = mode_reason(mode)
        return Inspection(w, h, mode, 1, (why,) if why else ())
    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
            orientation, note = _orientation(im)
            displayed = im.format in SIZE_AS_DISPLAYED
        said = [str(x.message) for x in caught if not issubclass(x.category, Image.DecompressionBombWarning)]
        if said and not note:
            note = f"EXIF or header damaged ({said[0]}); orientation read as {orientation}"
    except Image.DecompressionBombError as exc:
        return f"too large for PIL ({exc})"
    except Exception as exc:  # PIL raises many exception types for corrupt headers
        return f"{type(exc).__name__}: {exc}"
    if w <= 0 or h <= 0:
        return f"image has size {w}x{h}"
    reasons = []
    if orientation != 1:
        reasons.append("exif_orientation")
        if orientation >= 5 and not displayed:  # 5-8 swap the axes
            w, h = h, w
    why = mode_reason(mode)
    if why:
        reasons.append(why)
    return Inspection(w, h, mode, orientation, tuple(reasons), note)


def _white_composite(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


@dataclass
class Rendered:
    """An 8-bit RGB image to cache, and how many pixel values had to be clipped (NaN counted too)."""

    image: Image.Image
    clipped: int = 0


def render(path: str | Path, insp: Inspection, bit_depth: int) -> Rendered:
    """Decode, turn upright, and convert to 8-bit RGB; high bit depths scaled by ``bit_depth``."""
    with Image.open(path) as src:
        src.load()
        im = ImageOps.exif_transpose(src) if insp.orientation != 1 else src.copy()
    clipped = 0
    if im.mode in HIGH_DEPTH_MODES:
        arr = np.asarray(im, dtype=np.float64)
        invalid = ~np.isfinite(arr)
        arr = np.where(invalid, 0.0, arr)
        top = 1.0 if im.mode == "F" and arr.min() >= 0.0 and arr.max() <= 1.0 else float(2**bit_depth - 1)
        clipped = int(invalid.sum() + (arr < 0).sum() + (arr > top).sum())
        grey = np.rint(np.clip(arr, 0.0, top) * (255.0 / top)).astype(np.uint8)
        out = Image.fromarray(grey).convert("RGB")  # uint8 2-D: mode L
    elif im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info):
        out = _white_composite(im)
    else:
        out = im.convert("RGB")  # P, CMYK, L, 1, RGB after turning, YCbCr ...; raises for impossible modes
    return Rendered(out, clipped)


def pixel_range(path: str | Path) -> tuple[float, float]:
    """(min, max) of a high-bit-depth image's finite pixel values (decodes it)."""
    with Image.open(path) as im:
        arr = np.asarray(im, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def depth_for(max_value: float) -> int:
    """The fewest bits (at least 8) that hold ``max_value``: 4095 -> 12, 4096 -> 13, 65535 -> 16."""
    return max(8, math.ceil(math.log2(max(max_value, 0.0) + 1.0)))


@dataclass
class Outcome:
    """What the trainer will load for one input image."""

    path: str  # absolute path of the file to load (the original, or its cached copy)
    image: str  # the same file relative to out_dir (what regions_*.jsonl records)
    width: int
    height: int
    copy: bool
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, reason) to report


class ImageFixer:
    """Decides, per image, what the trainer loads; writes and reuses the cached copies under out_dir.

    Use: ``survey`` every candidate image first (headers, plus pixel ranges of high-bit-depth images, so one
    bit depth serves the whole dataset), then ``use`` each image, then ``finish`` for the report section.
    The cache keeps an index (source size, mtime, recipe), so unchanged copies are not rewritten.
    """

    def __init__(self, out_dir: Path, mode: str, configured_depth: int | None, write_dir: Path | None = None):
        self.out_dir = out_dir  # what paths are relative to
        self.write_dir = write_dir or out_dir  # where the cache lives during this run (a staging folder)
        self.cache = self.write_dir / CACHE_DIR
        self.mode = mode
        self.configured_depth = configured_depth
        self.inspections: dict[str, Inspection | str] = {}
        self.ranges: dict[str, tuple[float, float, bool]] = {}  # path -> (min, max, float in [0, 1])
        self._old = self._load_index()
        self._new: dict[str, dict[str, Any]] = {"copies": {}, "ranges": {}}
        self.converted: list[dict[str, Any]] = []
        self.left_out = 0
        self.headers_only = 0
        self._rel_roots: dict[str, str] = {}
        # set by survey: the largest value of the high-bit-depth images read as counts (floats in [0, 1]
        # excluded) and the bit depth that scales them
        self.counts_max: float | None = None
        self.bit_depth = configured_depth or 8

    # --- cache index -------------------------------------------------------------------------------------
    def _load_index(self) -> dict[str, Any]:
        try:
            data = json.loads((self.cache / INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"copies": {}, "ranges": {}}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {"copies": {}, "ranges": {}}
        return {"copies": data.get("copies") or {}, "ranges": data.get("ranges") or {}}

    def _stamp(self, path: str) -> dict[str, int]:
        st = os.stat(path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    # --- survey ------------------------------------------------------------------------------------------
    def survey(self, paths: list[str]) -> None:
        """Inspect every header; read the pixel range of each high-bit-depth image (cached by size+mtime)."""
        with _recording() as caught:  # once, not once per image
            for p in paths:
                self.inspections[p] = _inspect(p, caught)
        for p in paths:
            insp = self.inspections[p]
            if isinstance(insp, str) or not insp.reasons or self.mode != "fix":
                continue
            if insp.mode in HIGH_DEPTH_MODES:
                key = shown(relative_to_folder(p, self.out_dir))
                stamp = self._stamp(p)
                old = self._old["ranges"].get(key)
                if isinstance(old, dict) and all(old.get(k) == v for k, v in stamp.items()):
                    lo, hi = float(old["min"]), float(old["max"])
                else:
                    try:
                        lo, hi = pixel_range(p)
                    except Exception as exc:
                        self.inspections[p] = f"cannot decode pixels: {type(exc).__name__}: {exc}"
                        continue
                self.ranges[p] = (lo, hi, insp.mode == "F" and lo >= 0.0 and hi <= 1.0)
                self._new["ranges"][key] = {**stamp, "min": lo, "max": hi}
        values = [hi for _, hi, unit in self.ranges.values() if not unit]
        self.counts_max = max(values) if values else None
        if self.configured_depth is not None:
            self.bit_depth = self.configured_depth
        else:
            self.bit_depth = 8 if self.counts_max is None else depth_for(self.counts_max)

    # --- per image ---------------------------------------------------------------------------------------
    def check(self, path: str) -> Inspection | tuple[str, str]:
        """The image's inspection, or (problem kind, reason) when it is unreadable or left out (flag mode)."""
        insp = self.inspections.get(path)
        if insp is None:
            insp = self.inspections[path] = inspect(path)
        if isinstance(insp, str):
            return "unreadable_image", f"cannot read image: {insp}; skipped"
        if "file_name" not in insp.reasons and not is_utf8(path):  # GBK from a Windows zip: needs a copy
            insp = self.inspections[path] = replace(insp, reasons=(*insp.reasons, "file_name"))
        if insp.reasons and self.mode == "flag":
            self.left_out += 1
            return "image_needs_fix", f"{insp.describe()}; left out (image_fixes: flag)"
        return insp

    def use(self, path: str, source: str, rel: str) -> Outcome | tuple[str, str]:
        """What the trainer loads for this image (its copy written now if needed), or (kind, reason)."""
        insp = self.check(path)
        if isinstance(insp, tuple):
            return insp
        problems = [("exif_unreadable", insp.note)] if insp.note else []
        if not insp.reasons:
            self.headers_only += 1
            return Outcome(path, self._relative(path, rel), insp.width, insp.height, False, problems)
        depth_dependent = insp.mode in HIGH_DEPTH_MODES
        recipe = f"v{CACHE_VERSION};orientation={insp.orientation};mode={insp.mode}"
        if depth_dependent:
            recipe += f";depth={self.bit_depth}"
        copy_rel = f"{CACHE_DIR}/{source}/{safe_rel(rel, '.png')}"  # UTF-8, each name <= 255 bytes
        copy = self.write_dir / copy_rel
        stamp = self._stamp(path)
        old = self._old["copies"].get(copy_rel)
        entry = {"source": shown(relative_to_folder(path, self.out_dir)), **stamp, "recipe": recipe}
        clipped = 0
        if isinstance(old, dict) and copy.is_file() and {k: old.get(k) for k in entry} == entry:
            clipped = int(old.get("clipped", 0))  # unchanged source and recipe: the copy is reused
        else:
            try:
                rendered = render(path, insp, self.bit_depth)
            except Exception as exc:
                return "unreadable_image", f"cannot convert image ({type(exc).__name__}: {exc}); skipped"
            if rendered.image.size != (insp.width, insp.height):  # a header that lied about its size
                return "unreadable_image", (
                    f"decoded size {rendered.image.size} differs from the header's "
                    f"{(insp.width, insp.height)}; skipped"
                )
            with atomic_open(copy, "wb") as fh:
                rendered.image.save(fh, format="PNG", compress_level=1)
            clipped = rendered.clipped
        self._new["copies"][copy_rel] = {**entry, "clipped": clipped}
        if clipped:
            unit = self.ranges.get(path, (0.0, 0.0, False))[2]
            top = "1.0 (float image in [0, 1])" if unit else str(2**self.bit_depth - 1)
            problems.append(
                (
                    "pixels_clipped",
                    f"{clipped} pixel value(s) outside 0..{top} (bit depth {self.bit_depth}) or not finite "
                    "were clipped in the 8-bit copy",
                )
            )
        if "file_name" in insp.reasons:
            why = f"{not_utf8_reason(rel)}; the datasets use its copy {copy_rel}"
            problems.append(("file_name_not_utf8", why))
        self.converted.append(
            {
                "image": f"{source}/{shown(rel)}",
                "copy": copy_rel,
                "reasons": list(insp.reasons),
                "mode": insp.mode,
                "orientation": insp.orientation,
            }
        )
        return Outcome(str(copy.resolve()), copy_rel, insp.width, insp.height, True, problems)

    def _relative(self, path: str, rel: str) -> str:
        """``path`` (= <root>/<rel>) relative to out_dir; one os.path.relpath per root, not per image."""
        root = path[: -len(rel) - 1]
        prefix = self._rel_roots.get(root)
        if prefix is None:
            prefix = self._rel_roots[root] = relative_to_folder(root, self.out_dir)
        return rel if prefix == "." else f"{prefix}/{rel}"

    # --- end ---------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Write the cache index, delete copies no longer used, and return the report's ``images`` section."""
        for copy_rel in set(self._old["copies"]) - set(self._new["copies"]):
            stale = self.write_dir / copy_rel
            if posixpath.normpath(copy_rel).startswith(f"{CACHE_DIR}/") and stale.is_file():
                stale.unlink()
        if self._new["copies"] or self._old["copies"] or self._new["ranges"]:
            write_json(
                self.cache / INDEX_FILE,
                {
                    "version": CACHE_VERSION,
                    "copies": dict(sorted(self._new["copies"].items())),
                    "ranges": dict(sorted(self._new["ranges"].items())),
                },
            )
        by_reason = {r: sum(r in c["reasons"] for c in self.converted) for r in REASONS}
        high = sum(not unit for _, _, unit in self.ranges.values())
        depth_info: dict[str, Any] | None = None
        if self.ranges:
            depth_info = {
                "used": self.bit_depth,
                "how": "configured (image_bit_depth)" if self.configured_depth is not None else "detected",
                "max_value": self.counts_max,
                "images": high,
            }
        return {
            "image_fixes": self.mode,
            "used_as_is": self.headers_only,
            "converted": len(self.converted),
            "converted_by_reason": {r: n for r, n in by_reason.items() if n},
            "left_out": self.left_out,
            "bit_depth": depth_info,
            "cache_dir": CACHE_DIR,
            "converted_images": sorted(self.converted, key=lambda c: c["image"]),
        }
