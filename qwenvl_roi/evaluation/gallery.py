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

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qwenvl_roi.converters.paths import resolve_image
from qwenvl_roi.evaluation.metrics import NORMAL_CLASS, gold_class, predicted_class
from qwenvl_roi.evaluation.records import JoinedRegion
from qwenvl_roi.fileio import atomic_dir
from qwenvl_roi.fonts import LabelFont, display_names, find_label_font
from qwenvl_roi.picture_pages import (
    IMG_DIR,
    INDEX_HTML,
    PageOptions,
    Thumb,
    draw_all,
    draw_thumbnail,
    esc,
    grid_html,
    hex_color,
    img_html,
    write_pages,
)
from qwenvl_roi.pictures import FrameSettings, Mark, View, box_in_frame

GALLERY_DIR = "gallery"

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


class GalleryOptions(PageOptions):
    """How much of the evaluation the gallery shows (mistakes first; ``limit=0``: no gallery) and how big
    its thumbnails are."""


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


def _thumbnail(
    entry: Entry,
    name: str,
    folder: Path,
    settings: FrameSettings,
    options: GalleryOptions,
    font: LabelFont,
    names: dict[str, str],
) -> Thumb:
    sep = "≠" if font.can_draw("≠") else "!="
    order = sorted(range(len(entry.regions)), key=lambda i: DRAW_ORDER[entry.outcomes[i]])

    def marks(view: View) -> list[Mark]:
        out = []
        for i in order:
            box = entry.regions[i].box
            if box is None:
                continue
            fb = box_in_frame(box, view.original_size, view.frame_size, settings.model_family)
            color, text_color = COLORS[entry.outcomes[i]]
            out.append(Mark([v * view.scale for v in fb], color, _tag(entry, i, names, sep), text_color))
        return out

    recorded = next((r.image_size for r in entry.regions if r.image_size is not None), None)
    thumb = draw_thumbnail(entry.path, name, folder, settings, options, font.path, marks, recorded)
    if thumb.name is not None and thumb.note is None and all(r.box is None for r in entry.regions):
        return Thumb(thumb.name, thumb.size, None, "no boxes in the regions file")
    return thumb


def _card(entry: Entry, thumb: Thumb, threshold: float) -> str:
    color, text_color = COLORS.get(entry.category, ((255, 255, 255), (0, 0, 0)))
    badge = (
        f'<span class="badge" style="background:{hex_color(color)};color:{hex_color(text_color)}">'
        f"{esc(CATEGORY_TEXT[entry.category])}</span>"
        if entry.category != "rest"
        else ""
    )
    gold_abn = any(r.positive for r in entry.regions)
    img_score = max((r.score or 0.0) for r in entry.regions)
    pred_abn = any(o in ("TP", "LABEL", "FP") for o in entry.outcomes)
    parts = ["<figure>"]
    parts.append(img_html(thumb, f"{entry.image} with its candidate regions"))
    parts.append(f"<figcaption>{badge} <code>{esc(entry.image)}</code><br>")
    parts.append(
        f"image: gold {'abnormal' if gold_abn else 'normal'}, predicted "
        f"{'abnormal' if pred_abn else 'normal'} (max score {img_score:.4f}, threshold {threshold:.4f})"
    )
    if thumb.problem:
        parts.append(f'<br><span class="problem">no picture: {esc(thumb.problem)}</span>')
    if thumb.note:
        parts.append(f'<br><span class="problem">{esc(thumb.note)}</span>')
    parts.append(
        "<table><tr><th>region</th><th>outcome</th><th>score</th><th>predicted</th><th>gold</th></tr>"
    )
    for i, r in enumerate(entry.regions):
        color, text_color = COLORS[entry.outcomes[i]]
        parts.append(
            f"<tr><td>{esc(entry.tags[i])}</td>"
            f'<td style="background:{hex_color(color)};color:{hex_color(text_color)}">'
            f"{OUTCOME_TEXT[entry.outcomes[i]]}</td><td>{_score_text(r.score)}</td>"
            f"<td>{esc(predicted_class(r, threshold))}</td><td>{esc(gold_class(r))}</td></tr>"
        )
    parts.append("</table></figcaption></figure>")
    return "".join(parts)


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
        f"<p>Threshold <b>{threshold:.4f}</b> ({esc(metrics.get('threshold_source', 'given'))}): "
        "a region is predicted abnormal when its score &ge; the threshold. Pictures are shown as the "
        'model sees them, boxes in the model\'s frame. <a href="../report.md">report.md</a></p>',
        "<p>Pictures by their first kind of mistake (in this order): "
        + "; ".join(f"{CATEGORY_TEXT[c]}: {counts[c]} ({shown[c]} shown)" for c in CATEGORIES)
        + ".</p>",
        "<p>Outcomes:"
        + "".join(
            f'<span class="sw" style="background:{hex_color(COLORS[o][0])}"></span>{OUTCOME_TEXT[o]}'
            for o in ("FN", "FP", "LABEL", "TP", "TN")
        )
        + ". Tags: region, score, label (predicted&ne;gold for a wrong label).</p>",
    ]
    if legend:
        lines.append(
            "<p>Labels the installed fonts cannot draw are numbered in the pictures: "
            + ", ".join(f"{esc(k)} = {esc(v)}" for k, v in legend.items())
            + "</p>"
        )
    if warnings:
        lines.append('<ul class="problem">' + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")
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

    with atomic_dir(Path(out_dir) / GALLERY_DIR) as folder:
        (folder / IMG_DIR).mkdir()
        thumbs = draw_all(
            chosen,
            lambda name, e: _thumbnail(e, name, folder / IMG_DIR, settings, options, font, names),
            options,
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
        n_pages = write_pages(folder, cards, options.page_size, grid_html, "Evaluation gallery", header)
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
