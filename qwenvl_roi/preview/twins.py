"""The preview's near-duplicate section: each twin set's pictures side by side, label conflicts first.

Why: prepare_report.json lists the sets (converters/near_duplicates.py), but whether two files are the same
picture, and which copy's annotation is right, is seen at a glance and not read from a table. Each picture
is shown as the model sees it (the file its samples name, resized as LLaMA-Factory does) with its positive
regions drawn, under its split (and the split its folder alone would give), group, class and labels. The
section is on the first page only; every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qwenvl_roi.picture_pages import PageOptions, Thumb, draw_all, draw_thumbnail, esc, grid_html, img_html
from qwenvl_roi.pictures import FrameSettings, Mark, View, box_in_frame

from .samples import PreviewData, TwinPicture

MAX_SETS = 100  # sets drawn (conflicts first); the rest are counted, all are in the report
MAX_PICTURES = 8  # pictures drawn per set
MAX_SIDE = 320  # thumbnail bound: a set's pictures sit side by side
CONFLICT_STYLE = 'style="background:#d55e00;color:#fff"'  # the preview's "dropped" vermillion
SPLIT_STYLE = 'style="background:#f0e442;color:#000"'  # its "clipped" yellow


def _order(s: dict[str, Any]) -> tuple[bool, bool, bool, str]:
    """Label conflicts first, then sets spanning splits now, then sets their folders alone would split."""
    first = str(s["images"][0]["image"]) if s.get("images") else ""
    return (not s.get("label_conflict"), len(s.get("splits", [])) < 2, not s.get("across_splits"), first)


def _marks(
    pic: TwinPicture, view: View, settings: FrameSettings, names: dict[str, str], color: tuple[int, int, int]
) -> list[Mark]:
    marks = []
    for box, label in pic.positives:
        fb = box_in_frame(box, view.original_size, view.frame_size, settings.model_family)
        marks.append(Mark([v * view.scale for v in fb], color, names.get(label, label), (255, 255, 255)))
    return marks


def _caption(image: dict[str, Any]) -> str:
    split, alone = str(image.get("split", "?")), str(image.get("split_alone", "?"))
    moved = f" (its folder alone: {esc(alone)})" if alone != split else ""
    labels = ", ".join(str(x) for x in image.get("labels", [])) or "-"
    return (
        f"<code>{esc(image.get('image'))}</code><br>split <b>{esc(split)}</b>{moved}, group "
        f"<b>{esc(image.get('group'))}</b>, {esc(image.get('source', '?'))}; labels: {esc(labels)}"
    )


def _set_html(k: int, n: int, s: dict[str, Any], thumbs: dict[str, Thumb]) -> str:
    tags = []
    if s.get("label_conflict"):
        why = ", ".join(str(c) for c in s.get("conflicts", []))
        tags.append(f'<span class="badge" {CONFLICT_STYLE}>label conflict: {esc(why)}</span>')
    splits = [str(x) for x in s.get("splits", [])]
    if len(splits) > 1:
        tags.append(f'<span class="badge" {SPLIT_STYLE}>spans {esc(", ".join(splits))}</span>')
    else:
        tags.append(f"in {esc(', '.join(splits))}")
    d = s.get("distance", {})
    alone = ", ".join(str(x) for x in s.get("splits_alone", []))
    images = s.get("images", [])
    cards = []
    for image in images[:MAX_PICTURES]:
        thumb = thumbs.get(str(image.get("image")))
        if thumb is None or thumb.name is None:
            why = thumb.problem if thumb is not None else "not in the regions files (run convert again)"
            picture = f'<p class="problem">no picture: {esc(why)}</p>'
        else:
            picture = img_html(thumb, f"{image.get('image')}, near-duplicate set {k}")
        cards.append(f"<figure>{picture}<figcaption>{_caption(image)}</figcaption></figure>")
    more = len(images) - MAX_PICTURES
    return (
        f"<h3>Set {k} of {n}: {len(images)} pictures, {' '.join(tags)}</h3>\n"
        f'<p class="note">Hamming distance {esc(d.get("min"))}-{esc(d.get("max"))}, weakest link r = '
        f"{esc(s.get('correlation_min'))}, {esc(s.get('pairs'))} verified pair(s); by folder alone: "
        f"{esc(alone)}</p>\n"
        + grid_html(cards)
        + (f'\n<p class="note">{more} more picture(s) of this set in the report.</p>' if more > 0 else "")
    )


def twins_html(
    data: PreviewData,
    folder: Path,
    settings: FrameSettings,
    options: PageOptions,
    font_path: str,
    names: dict[str, str],
    color: tuple[int, int, int],
) -> tuple[str, dict[str, int]]:
    """The section (drawing its thumbnails into ``folder`` as ``twin-<rank>``) and its counts for
    preview.json; an empty section when the report has no near_duplicates (written before issue #20)."""
    section = data.report.get("near_duplicates")
    if not isinstance(section, dict):
        return "", {"near_duplicate_sets": 0, "near_duplicate_sets_shown": 0}
    mode = str(section.get("mode", "?"))
    sets: Sequence[dict[str, Any]] = sorted(section.get("sets", []), key=_order)
    counts = {"near_duplicate_sets": len(sets), "near_duplicate_sets_shown": min(len(sets), MAX_SETS)}
    if mode == "off":
        return '<p class="note">Near-duplicate pictures: not checked (near_duplicates: off).</p>', counts
    if not sets:  # one line, no section heading
        pictures = esc(section.get("pictures"))
        return f'<p class="note">Near-duplicate pictures: none among {pictures} pictures.</p>', counts
    head = f"<h2>Near-duplicate pictures (near_duplicates: {esc(mode)})</h2>"
    shown = sets[:MAX_SETS]
    wanted = list(dict.fromkeys(str(m["image"]) for s in shown for m in s.get("images", [])[:MAX_PICTURES]))
    pictures = [(name, data.twins[name]) for name in wanted if name in data.twins]
    small = options.model_copy(update={"max_side": min(options.max_side, MAX_SIDE)})

    def draw(rank: str, item: tuple[str, TwinPicture]) -> Thumb:
        pic = item[1]
        return draw_thumbnail(
            pic.path,
            f"twin-{rank}",
            folder,
            settings,
            small,
            font_path,
            lambda view: _marks(pic, view, settings, names, color),
            pic.size,
        )

    thumbs = dict(zip((n for n, _ in pictures), draw_all(pictures, draw, small), strict=True))
    intro = (
        f"<p>{len(sets)} set(s) of one picture filed more than once (the same part re-exported, resized, "
        f"re-shot unchanged): {esc(section.get('sets_split_now'))} span splits in the datasets written, "
        f"{esc(section.get('sets_across_splits'))} would by their folders alone, "
        f"{esc(section.get('label_conflicts'))} are annotated differently (shown first). Found by a 64-bit "
        f"pHash within {esc(section.get('max_distance'))} bits, confirmed by thumbnail correlation r &gt;= "
        f"{esc(section.get('min_correlation'))}.</p>"
    )
    body = [head, intro] + [_set_html(k, len(sets), s, thumbs) for k, s in enumerate(shown, 1)]
    if len(sets) > len(shown):
        body.append(f"<p>{len(sets) - len(shown)} more set(s) in prepare_report.json.</p>")
    return "\n".join(body), counts
