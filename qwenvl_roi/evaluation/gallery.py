"""gallery/index.html: the evaluated pictures with their candidates coloured by outcome, mistakes first.

Why: a model is judged by looking at its misses and false alarms. The gallery is static HTML that opens
from disk (no server, no script): per picture, the image as the model sees it with every candidate drawn
in the model's frame (qwenvl_roi/pictures.py), coloured TP / FP / FN / TN (and TP with a wrong label),
with score, predicted and gold label. Pictures with a false negative come first (most confident miss
first), then false positives (highest score first), then label confusions, then the rest, up to
``limit`` pictures, ``page_size`` a page. Thumbnails are written once per picture, bounded to
``max_side`` pixels, named by rank, so the same inputs give the same files byte for byte.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from qwenvl_roi.atomic import atomic_dir
from qwenvl_roi.converters.paths import resolve_image
from qwenvl_roi.evaluation.metrics import NORMAL_CLASS, gold_class, predicted_class
from qwenvl_roi.evaluation.records import JoinedRegion
from qwenvl_roi.fonts import LabelFont, display_names, find_label_font
from qwenvl_roi.pictures import FrameSettings, Mark, box_in_frame, draw_marks, model_view

GALLERY_DIR = "gallery"
MIN_DISPLAY_SIDE = 256  # CSS pixels: smaller thumbnails are shown enlarged
INDEX_HTML = "index.html"

Outcome = Literal["TP", "LABEL", "FP", "FN", "TN"]
#: Okabe-Ito colours (readable with colour-vision deficiencies) and the tag text colour on them
COLORS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "TP": ((0, 158, 115), (255, 255, 255)),
    "LABEL": ((240, 228, 66), (0, 0, 0)),
    "FP": ((213, 94, 0), (255, 255, 255)),
    "FN": ((0, 114, 178), (255, 255, 255)),
    "TN": ((187, 187, 187), (0, 0, 0)),
}
OUTCOME_TEXT = {
    "TP": "TP",
    "LABEL": "TP, wrong label",
    "FP": "FP",
    "FN": "FN",
    "TN": "TN",
}
#: drawing order: errors last, so they are on top
DRAW_ORDER = {"TN": 0, "TP": 1, "LABEL": 2, "FP": 3, "FN": 4}
CATEGORIES = ("FN", "FP", "LABEL", "rest")
#: a picture's kind: the first of these its regions show (FN, then FP, then a wrong label), else "rest"
CATEGORY_TEXT = {
    "FN": "false negative",
    "FP": "false positive",
    "LABEL": "wrong label",
    "rest": "no mistake",
}


class GalleryOptions(BaseModel):
    """How much of the evaluation the gallery shows and how big its thumbnails are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(1000, ge=0, description="pictures in the gallery (mistakes first); 0: no gallery")
    page_size: int = Field(200, ge=1)
    max_side: int = Field(512, ge=64, description="thumbnail size bound in pixels")
    image_format: Literal["jpeg", "png"] = "jpeg"
    workers: int = Field(0, ge=0, description="threads drawing thumbnails; 0: one per CPU, at most 8")


def region_outcome(r: JoinedRegion, threshold: float) -> Outcome:
    """TP / FP / FN / TN at the threshold; a flagged positive with the wrong label is LABEL."""
    pred = predicted_class(r, threshold) != NORMAL_CLASS
    if pred and r.positive:
        return "LABEL" if r.gold_label is not None and r.pred_label != r.gold_label else "TP"
    if pred:
        return "FP"
    return "FN" if r.positive else "TN"


@dataclass
class Entry:
    """One picture of the gallery: its regions over all its samples, their tags and outcomes."""

    image: str
    path: Path
    regions: list[JoinedRegion] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def category(self) -> str:
        return next((c for c in CATEGORIES[:-1] if c in self.outcomes), "rest")

    def sort_key(self) -> tuple:
        """Category, then the most confident mistake first, then the image path."""
        scores = {
            o: [r.score or 0.0 for r, x in zip(self.regions, self.outcomes, strict=True) if x == o]
            for o in ("FN", "FP", "LABEL")
        }
        cat = self.category
        if cat == "FN":
            severity = min(scores["FN"])
        elif cat in ("FP", "LABEL"):
            severity = -max(scores[cat])
        else:
            severity = 0.0
        return (CATEGORIES.index(cat), severity, self.image)


def entries(regions: Sequence[JoinedRegion], threshold: float, regions_file: str | Path) -> list[Entry]:
    """Pictures in gallery order, each with all its regions (tagged ``R1``, or ``2/R1`` when the picture
    has several samples: the sample's position among the picture's samples, then the region id)."""
    by_image: dict[str, Entry] = {}
    samples: dict[str, list[str]] = {}
    for r in regions:
        entry = by_image.get(r.image)
        if entry is None:
            entry = by_image[r.image] = Entry(r.image, resolve_image(r.image, regions_file))
            samples[r.image] = []
        if r.sample_id not in samples[r.image]:
            samples[r.image].append(r.sample_id)
        entry.regions.append(r)
        entry.outcomes.append(region_outcome(r, threshold))
    for image, entry in by_image.items():
        ids = samples[image]
        entry.tags = [
            r.region_id if len(ids) == 1 else f"{ids.index(r.sample_id) + 1}/{r.region_id}"
            for r in entry.regions
        ]
    return sorted(by_image.values(), key=Entry.sort_key)


def _score_text(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.2f}"


def _tag(entry: Entry, i: int, names: dict[str, str], sep: str) -> str:
    r, outcome = entry.regions[i], entry.outcomes[i]
    head = f"{entry.tags[i]} {_score_text(r.score)}"
    if outcome in ("TP", "FP"):
        return f"{head} {names.get(r.pred_label or '', r.pred_label or '?')}"
    if outcome == "LABEL":
        return f"{head} {names.get(r.pred_label or '', '?')}{sep}{names.get(r.gold_label or '', '?')}"
    if outcome == "FN":
        return f"{head} {names.get(r.gold_label or '', r.gold_label or '?')}"
    return entry.tags[i]


@dataclass(frozen=True)
class Thumb:
    """A written thumbnail (file name and size) or why there is none, plus a note for the card."""

    name: str | None
    size: tuple[int, int] | None
    problem: str | None = None
    note: str | None = None


def _thumbnail(
    entry: Entry,
    name: str,
    folder: Path,
    settings: FrameSettings,
    options: GalleryOptions,
    font: LabelFont,
    names: dict[str, str],
) -> Thumb:
    try:
        view = model_view(entry.path, settings, options.max_side)
    except FileNotFoundError:
        return Thumb(None, None, f"{entry.path}: file not found")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # unreadable, truncated, too big
        return Thumb(None, None, f"{entry.path}: cannot be read ({exc})")
    note = None
    recorded = next((r.image_size for r in entry.regions if r.image_size is not None), None)
    if recorded is not None and tuple(recorded) != view.original_size:
        note = (
            f"the regions file says {recorded[0]}x{recorded[1]} but the trainer loads "
            f"{view.original_size[0]}x{view.original_size[1]} pixels: boxes may be in another frame"
        )
    sep = "≠" if font.can_draw("≠") else "!="
    order = sorted(range(len(entry.regions)), key=lambda i: DRAW_ORDER[entry.outcomes[i]])
    marks = []
    for i in order:
        box = entry.regions[i].box
        if box is None:
            continue
        fb = box_in_frame(box, view.original_size, view.frame_size, settings.model_family)
        color, text_color = COLORS[entry.outcomes[i]]
        marks.append(Mark([v * view.scale for v in fb], color, _tag(entry, i, names, sep), text_color))
    image = draw_marks(view.image, marks, font.path)
    if options.image_format == "png":
        image.save(folder / name, "PNG")
    else:
        image.save(folder / name, "JPEG", quality=90, subsampling=0)
    if not marks:
        note = "no boxes in the regions file" if note is None else note
    return Thumb(name, image.size, None, note)


_CSS = """
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


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _page_name(k: int) -> str:
    return INDEX_HTML if k == 1 else f"page-{k}.html"


def _card(entry: Entry, thumb: Thumb, threshold: float) -> str:
    color, text_color = COLORS.get(entry.category, ((255, 255, 255), (0, 0, 0)))
    badge = (
        f'<span class="badge" style="background:{_hex(color)};color:{_hex(text_color)}">'
        f"{_esc(CATEGORY_TEXT[entry.category])}</span>"
        if entry.category != "rest"
        else ""
    )
    gold_abn = any(r.positive for r in entry.regions)
    img_score = max((r.score or 0.0) for r in entry.regions)
    pred_abn = any(o in ("TP", "LABEL", "FP") for o in entry.outcomes)
    parts = ["<figure>"]
    if thumb.name is not None and thumb.size is not None:
        alt = f"{entry.image} with its candidate regions"
        # small pictures are shown enlarged by a whole factor, pixels kept sharp
        k = max(1, -(-MIN_DISPLAY_SIDE // max(thumb.size)))
        css = ' class="px"' if k > 1 else ""
        parts.append(
            f'<a href="img/{_esc(thumb.name)}"><img src="img/{_esc(thumb.name)}"{css} '
            f'width="{thumb.size[0] * k}" height="{thumb.size[1] * k}" loading="lazy" alt="{_esc(alt)}"></a>'
        )
    parts.append(f"<figcaption>{badge} <code>{_esc(entry.image)}</code><br>")
    parts.append(
        f"image: gold {'abnormal' if gold_abn else 'normal'}, predicted "
        f"{'abnormal' if pred_abn else 'normal'} (max score {img_score:.4f}, threshold {threshold:.4f})"
    )
    if thumb.problem:
        parts.append(f'<br><span class="problem">no picture: {_esc(thumb.problem)}</span>')
    if thumb.note:
        parts.append(f'<br><span class="problem">{_esc(thumb.note)}</span>')
    parts.append(
        "<table><tr><th>region</th><th>outcome</th><th>score</th><th>predicted</th><th>gold</th></tr>"
    )
    for i, r in enumerate(entry.regions):
        color, text_color = COLORS[entry.outcomes[i]]
        parts.append(
            f"<tr><td>{_esc(entry.tags[i])}</td>"
            f'<td style="background:{_hex(color)};color:{_hex(text_color)}">'
            f"{OUTCOME_TEXT[entry.outcomes[i]]}</td><td>{_score_text(r.score)}</td>"
            f"<td>{_esc(predicted_class(r, threshold))}</td><td>{_esc(gold_class(r))}</td></tr>"
        )
    parts.append("</table></figcaption></figure>")
    return "".join(parts)


def _page(
    k: int,
    n_pages: int,
    cards: list[str],
    header: str,
) -> str:
    nav = ["<nav>pages: "]
    for j in range(1, n_pages + 1):
        nav.append(f"<b>{j}</b>" if j == k else f'<a href="{_page_name(j)}">{j}</a>')
    nav.append("</nav>")
    navs = "".join(nav) if n_pages > 1 else ""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>Evaluation gallery, page {k} of {n_pages}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'{header}\n{navs}\n<div class="grid">\n' + "\n".join(cards) + f"\n</div>\n{navs}\n</body>\n</html>\n"
    )


def _header(
    metrics: dict,
    counts: dict[str, int],
    shown: dict[str, int],
    legend: dict[str, str],
    warnings: list[str],
) -> str:
    threshold = float(metrics["threshold"])
    lines = [
        "<h1>Evaluation gallery</h1>",
        f"<p>Threshold <b>{threshold:.4f}</b> ({_esc(metrics.get('threshold_source', 'given'))}): "
        "a region is predicted abnormal when its score &ge; the threshold. Pictures are shown as the "
        'model sees them, boxes in the model\'s frame. <a href="../report.md">report.md</a></p>',
        "<p>Pictures by their first kind of mistake (in this order): "
        + "; ".join(f"{CATEGORY_TEXT[c]}: {counts[c]} ({shown[c]} shown)" for c in CATEGORIES)
        + ".</p>",
        "<p>Outcomes:"
        + "".join(
            f'<span class="sw" style="background:{_hex(COLORS[o][0])}"></span>{OUTCOME_TEXT[o]}'
            for o in ("FN", "FP", "LABEL", "TP", "TN")
        )
        + ". Tags: region, score, label (predicted&ne;gold for a wrong label).</p>",
    ]
    if legend:
        lines.append(
            "<p>Labels the installed fonts cannot draw are numbered in the pictures: "
            + ", ".join(f"{_esc(k)} = {_esc(v)}" for k, v in legend.items())
            + "</p>"
        )
    if warnings:
        lines.append('<ul class="problem">' + "".join(f"<li>{_esc(w)}</li>" for w in warnings) + "</ul>")
    return "\n".join(lines)


def write_gallery(
    metrics: dict,
    regions: Sequence[JoinedRegion],
    regions_file: str | Path,
    out_dir: str | Path,
    options: GalleryOptions | None = None,
) -> dict:
    """Write ``out_dir/gallery/`` whole (replacing an older one) and return its summary for metrics.json.

    ``regions_file`` is the gold regions file: relative ``image`` paths and dataset_meta.json are found
    beside it.
    """
    from qwenvl_roi.pictures import frame_settings

    options = options or GalleryOptions()
    threshold = float(metrics["threshold"])
    ordered = entries(regions, threshold, regions_file)
    counts = {c: sum(e.category == c for e in ordered) for c in CATEGORIES}
    chosen = ordered[: options.limit]
    shown = {c: sum(e.category == c for e in chosen) for c in CATEGORIES}
    settings, meta_warning = frame_settings(regions_file)
    font = find_label_font()
    labels = list(metrics.get("confusion", {}).get("labels", []))
    labels += sorted({lab for r in regions for lab in (r.gold_label, r.pred_label) if lab} - set(labels))
    names, legend = display_names(labels, font)
    ext = "png" if options.image_format == "png" else "jpg"
    width = len(str(max(len(chosen), 1)))
    workers = options.workers or min(8, os.cpu_count() or 1)

    with atomic_dir(Path(out_dir) / GALLERY_DIR) as folder:
        (folder / "img").mkdir()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            thumbs = list(
                pool.map(
                    lambda ie: _thumbnail(
                        ie[1], f"{ie[0]:0{width}d}.{ext}", folder / "img", settings, options, font, names
                    ),
                    enumerate(chosen, start=1),
                )
            )
        problems = [t.problem for t in thumbs if t.problem]
        warnings = [meta_warning] if meta_warning else []
        if problems:
            warnings.append(f"{len(problems)} picture(s) could not be read, first: {problems[0]}")
        notes = [t.note for t in thumbs if t.note and "regions file says" in t.note]
        if notes:
            warnings.append(
                f"{len(notes)} picture(s) differ in size from the regions file, first: {notes[0]}"
            )
        header = _header(metrics, counts, shown, legend, warnings)
        if len(ordered) > len(chosen):
            header += (
                f"\n<p>{len(ordered) - len(chosen)} of {len(ordered)} pictures are left out "
                f"(<code>--gallery-limit {options.limit}</code>).</p>"
            )
        cards = [_card(e, t, threshold) for e, t in zip(chosen, thumbs, strict=True)]
        n_pages = max(1, -(-len(cards) // options.page_size))
        for k in range(1, n_pages + 1):
            page_cards = cards[(k - 1) * options.page_size : k * options.page_size]
            (folder / _page_name(k)).write_text(_page(k, n_pages, page_cards, header), encoding="utf-8")
    return {
        "index": f"{GALLERY_DIR}/{INDEX_HTML}",
        "pages": n_pages,
        "pictures": len(ordered),
        "shown": len(chosen),
        "by_category": counts,
        "shown_by_category": shown,
        "unreadable": len(problems),
        "label_legend": legend,
        "warnings": warnings,
    }
