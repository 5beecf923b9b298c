"""Static HTML pages of drawn thumbnails: the pieces the eval gallery and the annotation preview share.

Why: both show pictures as the model sees them (qwenvl_roi/pictures.py) with boxes drawn, on pages that
open from disk (no server, no script), capped and paged so a 20,000-image dataset writes in seconds and
opens in a browser. Here: the size/format options, one thumbnail drawn and saved (or why there is none),
thumbnails drawn in parallel in a fixed order under rank names, the ``<img>`` element, and the paged
HTML. Same inputs give the same files, byte for byte (no dates, no encoder metadata).
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from qwenvl_roi.pictures import FrameSettings, Mark, View, draw_marks, model_view

INDEX_HTML = "index.html"
IMG_DIR = "img"
MIN_DISPLAY_SIDE = 256  # CSS pixels: smaller thumbnails are shown enlarged

T = TypeVar("T")

CSS = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;border:1px solid #ccc;padding:6px;max-width:540px;background:#fafafa}
figure img{max-width:100%;height:auto;display:block}
img.px{image-rendering:pixelated}
figcaption{font-size:12px;word-break:break-all}
table{border-collapse:collapse;font-size:12px;margin-top:4px}
td,th{border:1px solid #ddd;padding:1px 4px;text-align:left}
.sw{display:inline-block;width:12px;height:12px;margin:0 3px 0 10px;vertical-align:middle}
.badge{font-weight:bold;padding:0 4px;border-radius:3px}
.problem{color:#b00}
nav a,nav b{margin-right:6px}
"""


class PageOptions(BaseModel):
    """How many pictures the pages show, how many a page, and how big and in which format thumbnails are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(1000, ge=0, description="pictures shown (the most important first); 0: none")
    page_size: int = Field(200, ge=1)
    max_side: int = Field(512, ge=64, description="thumbnail size bound in pixels")
    image_format: Literal["jpeg", "png"] = "jpeg"
    workers: int = Field(0, ge=0, description="threads drawing thumbnails; 0: one per CPU, at most 8")

    @property
    def extension(self) -> str:
        return "png" if self.image_format == "png" else "jpg"


@dataclass(frozen=True)
class Thumb:
    """A written thumbnail (file name and size) or why there is none, plus a note for the card."""

    name: str | None
    size: tuple[int, int] | None
    problem: str | None = None
    note: str | None = None


def esc(x: object) -> str:
    """Text for HTML content and attribute values."""
    return html.escape(str(x), quote=True)


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def page_name(k: int) -> str:
    """File name of page ``k`` (1-based): the first page is index.html."""
    return INDEX_HTML if k == 1 else f"page-{k}.html"


def save_picture(image: Image.Image, path: Path, image_format: str) -> None:
    """PNG, or JPEG at quality 90 without chroma subsampling (sharp coloured outlines); no metadata."""
    if image_format == "png":
        image.save(path, "PNG")
    else:
        image.save(path, "JPEG", quality=90, subsampling=0)


def size_note(recorded: Sequence[int] | None, loaded: tuple[int, int]) -> str | None:
    """A warning when the size a regions file records differs from the picture the trainer loads."""
    if recorded is None or tuple(recorded) == loaded:
        return None
    return (
        f"the regions file says {recorded[0]}x{recorded[1]} but the trainer loads "
        f"{loaded[0]}x{loaded[1]} pixels: boxes may be in another frame"
    )


def draw_thumbnail(
    path: Path,
    name: str,
    folder: Path,
    settings: FrameSettings,
    options: PageOptions,
    font_path: str,
    marks_for: Callable[[View], list[Mark]],
    recorded_size: Sequence[int] | None = None,
) -> Thumb:
    """Load ``path`` as the model sees it, draw ``marks_for(view)`` and save it as ``folder/name``; a file
    that is missing or unreadable gives a Thumb without picture that says why (nothing is written)."""
    try:
        view = model_view(path, settings, options.max_side)
    except FileNotFoundError:
        return Thumb(None, None, f"{path}: file not found")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # unreadable, truncated, too big
        return Thumb(None, None, f"{path}: cannot be read ({exc})")
    image = draw_marks(view.image, marks_for(view), font_path)
    save_picture(image, folder / name, options.image_format)
    return Thumb(name, image.size, None, size_note(recorded_size, view.original_size))


def draw_all(items: Sequence[T], draw: Callable[[str, T], Thumb], options: PageOptions) -> list[Thumb]:
    """``draw(name, item)`` for every item, in threads; names are ranks (``001.jpg``...), so the files do
    not depend on the number of threads or on which one finishes first."""
    width = len(str(max(len(items), 1)))
    workers = options.workers or min(8, os.cpu_count() or 1)
    names = [f"{k:0{width}d}.{options.extension}" for k in range(1, len(items) + 1)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(draw, names, items))


def img_html(thumb: Thumb, alt: str) -> str:
    """The thumbnail, linked to itself; small ones shown enlarged by a whole factor with sharp pixels."""
    if thumb.name is None or thumb.size is None:
        return ""
    k = max(1, -(-MIN_DISPLAY_SIDE // max(thumb.size)))
    css = ' class="px"' if k > 1 else ""
    src = f"{IMG_DIR}/{esc(thumb.name)}"
    return (
        f'<a href="{src}"><img src="{src}"{css} '
        f'width="{thumb.size[0] * k}" height="{thumb.size[1] * k}" loading="lazy" alt="{esc(alt)}"></a>'
    )


def grid_html(cards: Sequence[str]) -> str:
    """Cards side by side, wrapping."""
    return '<div class="grid">\n' + "\n".join(cards) + "\n</div>"


def page_html(title: str, k: int, n_pages: int, body: str, header: str, css: str = CSS) -> str:
    """Page ``k`` of ``n_pages``: title, header, page links (when there are several), body, page links."""
    nav = ["<nav>pages: "]
    for j in range(1, n_pages + 1):
        nav.append(f"<b>{j}</b>" if j == k else f'<a href="{page_name(j)}">{j}</a>')
    nav.append("</nav>")
    navs = "".join(nav) if n_pages > 1 else ""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}, page {k} of {n_pages}</title>\n<style>{css}</style>\n</head>\n<body>\n"
        f"{header}\n{navs}\n{body}\n{navs}\n</body>\n</html>\n"
    )


def write_pages(
    folder: Path,
    cards: Sequence[T],
    page_size: int,
    body: Callable[[Sequence[T]], str],
    title: str,
    header: str,
    css: str = CSS,
    lead: str = "",
) -> int:
    """Split ``cards`` into pages of ``page_size`` (at least one page), write each with ``body(its cards)``;
    ``lead`` goes above the first page's cards only (a section too large to repeat). Returns the number of
    pages."""
    n_pages = max(1, -(-len(cards) // page_size))
    for k in range(1, n_pages + 1):
        chunk = cards[(k - 1) * page_size : k * page_size]
        first = lead + "\n" if k == 1 and lead else ""
        text = page_html(title, k, n_pages, first + body(chunk), header, css)
        (folder / page_name(k)).write_text(text, encoding="utf-8")
    return n_pages
