"""The preview pages: per sample its picture as the model will see it, every box drawn in the model's frame,
the problems of its annotation and the prompt training sees; samples with annotation problems first.

Pictures: the regions file's ``image`` (the converters' upright 8-bit copy when they made one), loaded and
resized as LLaMA-Factory and the processor do (qwenvl_roi/pictures.py ``model_view``), boxes mapped into
the model's frame with the coordinates the prompt gives (``box_in_frame``). Colours (Okabe-Ito): positives
bluish green with their label, negatives and decoys sky blue, positives whose box the converters clipped
or fixed yellow, boxes they dropped vermillion (tagged ``L<line>``). The prompt is built by
``converters.prompt.build_record``, the one function training data is built with. When prepare found
near-duplicate pictures, the first page opens with them (preview/twins.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qwenvl_roi.converters.paths import relative_to_folder
from qwenvl_roi.converters.prepare import REPORT_FILE
from qwenvl_roi.converters.prompt import build_record, system_text
from qwenvl_roi.errors import ConvertError
from qwenvl_roi.fileio import atomic_dir, write_json
from qwenvl_roi.fonts import LabelFont, display_names, find_label_font
from qwenvl_roi.picture_pages import (
    CSS,
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

from .samples import LineMark, PreviewData, PreviewSample, line_tag
from .twins import twins_html

SUMMARY_FILE = "preview.json"
#: role -> (outline colour, tag text colour), Okabe-Ito
COLORS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "positive": ((0, 158, 115), (255, 255, 255)),
    "negative": ((86, 180, 233), (0, 0, 0)),
    "clipped": ((240, 228, 66), (0, 0, 0)),
    "dropped": ((213, 94, 0), (255, 255, 255)),
}
ROLE_TEXT = {
    "positive": "positive (defect)",
    "negative": "negative / decoy",
    "clipped": "clipped or fixed by the converters",
    "dropped": "dropped by the converters",
}
#: drawing order: the converters' changes last, so they are on top
DRAW_ORDER = ("negative", "positive", "clipped", "dropped")
PROBLEM_ROWS = 200  # rows of the "not in any split" table; the rest are counted (all are in the report)
SECTION_TEXT = {True: "Annotation lines with problems", False: "Annotations without problems"}

_PREVIEW_CSS = (
    CSS
    + """
figure.sample{display:flex;flex-wrap:wrap;gap:10px;max-width:none}
figure.sample>div{flex:none}
figure.sample figcaption{max-width:640px;word-break:normal;overflow-wrap:anywhere}
figure.sample td{overflow-wrap:normal}
pre{white-space:pre-wrap;word-break:break-all;background:#fff;border:1px solid #ddd;padding:4px;margin:4px 0;
font-size:12px}
h2{margin:1em 0 .3em}
h3{margin:.6em 0 .3em;font-size:15px}
.note{color:#555}
"""
)


def _clipped_regions(item: PreviewSample) -> dict[str, LineMark]:
    """Region id -> the clipped-box problem whose box it is (the positive the converters kept clipped)."""
    out: dict[str, LineMark] = {}
    for m in item.marks:
        if m.status != "clipped" or m.box is None:
            continue
        for r in item.sample["regions"]:
            if r.get("positive") and r["id"] not in out and [float(v) for v in r["box"]] == list(m.box):
                out[r["id"]] = m
    return out


def _label_text(label: Any, names: dict[str, str]) -> str:
    return names.get(str(label), str(label)) if label is not None else "?"


def _region_role(region: dict[str, Any], clipped: dict[str, LineMark]) -> str:
    if region["id"] in clipped:
        return "clipped"
    return "positive" if region.get("positive") else "negative"


def _marks(item: PreviewSample, view: View, settings: FrameSettings, names: dict[str, str]) -> list[Mark]:
    """Every candidate and every drawable dropped / separately clipped box, as display-pixel marks."""
    clipped = _clipped_regions(item)
    drawn: list[tuple[str, Sequence[float], str]] = []
    for r in item.sample["regions"]:
        role = _region_role(r, clipped)
        tag = str(r["id"]) if role == "negative" else f"{r['id']} {_label_text(r.get('label'), names)}"
        if role == "clipped":
            tag += f" {line_tag(clipped[r['id']].line)}"
        drawn.append((role, r["box"], tag))
    used = {id(m) for m in clipped.values()}
    for m in item.marks:
        if m.box is not None and m.status in ("dropped", "clipped") and id(m) not in used:
            drawn.append((m.status, m.box, line_tag(m.line)))
    drawn.sort(key=lambda d: DRAW_ORDER.index(d[0]))  # stable: regions in prompt order, then lines
    marks = []
    for role, box, tag in drawn:
        fb = box_in_frame(box, view.original_size, view.frame_size, settings.model_family)
        color, text_color = COLORS[role]
        marks.append(Mark([v * view.scale for v in fb], color, tag, text_color))
    return marks


def _thumbnail(
    item: PreviewSample,
    name: str,
    folder: Path,
    settings: FrameSettings,
    options: PageOptions,
    font: LabelFont,
    names: dict[str, str],
) -> Thumb:
    s = item.sample
    return draw_thumbnail(
        item.path,
        name,
        folder,
        settings,
        options,
        font.path,
        lambda view: _marks(item, view, settings, names),
        (int(s["width"]), int(s["height"])),
    )


def _fmt_box(box: Sequence[float] | None) -> str:
    if box is None:
        return ""
    return "[" + ", ".join(f"{v:g}" for v in (float(x) for x in box)) + "]"


def _swatch(role: str) -> str:
    color, text_color = COLORS[role]
    return f'style="background:{hex_color(color)};color:{hex_color(text_color)}"'


def _card(item: PreviewSample, thumb: Thumb, data: PreviewData, settings: FrameSettings) -> str:
    s = item.sample
    meta = data.meta
    w, h = int(s["width"]), int(s["height"])
    fw, fh = settings.frame_size(w, h)
    alt = f"{s['sample_id']} with its boxes"
    parts = ['<figure class="sample">', f"<div>{img_html(thumb, alt)}</div>"]
    badge = (
        f'<span class="badge" {_swatch("dropped")}>annotation problems</span> '
        if item.has_line_problems
        else ""
    )
    parts.append(f"<figcaption>{badge}<code>{esc(s['sample_id'])}</code><br>")
    parts.append(
        f"split <b>{esc(s['split'])}</b>, group <b>{esc(s['group'])}</b>, {esc(s.get('source', '?'))}; "
        f"picture <code>{esc(s['image'])}</code> {w}x{h}, model frame {fw}x{fh}"
    )
    if item.txt:
        parts.append(f"<br>annotation: <code>{esc(item.txt)}</code>")
    for note in item.image_notes:
        parts.append(f'<br><span class="note">{esc(note)}</span>')
    if thumb.problem:
        parts.append(f'<br><span class="problem">no picture: {esc(thumb.problem)}</span>')
    if thumb.note:
        parts.append(f'<br><span class="problem">{esc(thumb.note)}</span>')
    clipped = _clipped_regions(item)
    parts.append(
        "<table><tr><th>box</th><th>what</th><th>label</th><th>pixels (x1, y1, x2, y2)</th><th>note</th></tr>"
    )
    for r in s["regions"]:
        role = _region_role(r, clipped)
        what = "positive, clipped" if role == "clipped" else ROLE_TEXT[role]
        note = f"{line_tag(clipped[r['id']].line)}: {clipped[r['id']].reason}" if role == "clipped" else ""
        parts.append(
            f"<tr><td>{esc(r['id'])}</td><td {_swatch(role)}>{esc(what)}</td>"
            f"<td>{esc(r.get('label') or '')}</td><td>{_fmt_box(r['box'])}</td><td>{esc(note)}</td></tr>"
        )
    used = {id(m) for m in clipped.values()}
    for m in item.marks:
        if id(m) in used:
            continue
        tag = esc(line_tag(m.line))  # the report's value: text, never markup
        if m.status == "line":
            what = f"<td>{esc(m.kind)}</td>"
        else:
            what = f"<td {_swatch(m.status)}>{esc(m.status)} ({esc(m.kind)})</td>"
        note = m.reason + (f" (not drawn: {m.not_drawn})" if m.not_drawn else "")
        css = ' class="problem"' if m.status != "line" or m.not_drawn else ""
        parts.append(
            f"<tr><td>{tag}</td>{what}<td></td><td>{_fmt_box(m.box)}</td><td{css}>{esc(note)}</td></tr>"
        )
    parts.append("</table>")
    record = build_record(s, meta)
    user = next(m["content"] for m in record["messages"] if m["role"] == "user")
    answer = next(m["content"] for m in record["messages"] if m["role"] == "assistant")
    parts.append(
        f"prompt (user turn):<pre>{esc(user)}</pre>answer (training target):<pre>{esc(answer)}</pre>"
    )
    parts.append("</figcaption></figure>")
    return "".join(parts)


def _line_text(line: object) -> str:
    return "" if line is None else esc(line)


def _heading_key(item: PreviewSample) -> tuple[bool, str, str]:
    return (item.has_line_problems, str(item.sample["split"]), str(item.sample["group"]))


def _body(cards: Sequence[tuple[tuple[bool, str, str], str]]) -> str:
    """Cards under headings: section and split (h2), then group (h3); repeated at the top of each page."""
    out: list[str] = []
    run: list[str] = []
    last: tuple[bool, str, str] | None = None
    for key, card in cards:
        if key != last:
            if run:
                out.append(grid_html(run))
                run = []
            if last is None or key[:2] != last[:2]:
                out.append(f"<h2>{SECTION_TEXT[key[0]]}: {esc(key[1])}</h2>")
            out.append(f"<h3>group {esc(key[2])}</h3>")
            last = key
        run.append(card)
    if run:
        out.append(grid_html(run))
    return "\n".join(out) if out else "<p>No samples to show.</p>"


def _header(
    data: PreviewData,
    config_path: str,
    folder: Path,
    settings: FrameSettings,
    counts: dict[str, int],
    legend: dict[str, str],
    warnings: list[str],
) -> str:
    cfg, meta = data.config, data.meta
    report_link = relative_to_folder(cfg.out_dir / REPORT_FILE, folder)
    lines = [
        "<h1>Annotation preview</h1>",
        f"<p>Config <code>{esc(config_path)}</code>, converted data "
        f"<code>{esc(cfg.out_dir.as_posix())}</code>, splits: {esc(', '.join(data.splits))}. Each sample is "
        "shown as the model will see it: the picture its regions file names (the converters' upright 8-bit "
        "copy when they made one), resized as LLaMA-Factory does (image_max_pixels "
        f"{meta.image_max_pixels}, image_min_pixels {meta.image_min_pixels}) and to the processor's grid "
        f"({esc(meta.model_family)}), every box in the model's frame; beside it the prompt and answer "
        "exactly as training builds them.</p>",
        f"<p>Samples: {counts['samples']}, {counts['with_problems']} of them with annotation problems (shown "
        f"first); {counts['shown']} shown.</p>",
        "<p>Boxes:"
        + "".join(
            f'<span class="sw" style="background:{hex_color(COLORS[r][0])}"></span>{ROLE_TEXT[r]}'
            for r in ("positive", "negative", "clipped", "dropped")
        )
        + ". Tags: region id and label; <code>L&lt;n&gt;</code>: line n of the annotation file; "
        "<code>shapes[3]</code>, <code>annotations[17]</code>: an entry of a JSON annotation; "
        "<code>components[k]</code>: a defect of a mask.</p>",
    ]
    problem_counts = data.report.get("problem_counts") or {}
    if problem_counts:
        lines.append(
            "<p>Problems the converters reported ("
            f'<a href="{esc(report_link)}">{REPORT_FILE}</a>): '
            + ", ".join(f"{esc(k)} {esc(v)}" for k, v in problem_counts.items())
            + "</p>"
        )
    if legend:
        lines.append(
            "<p>Labels the installed fonts cannot draw are numbered in the pictures: "
            + ", ".join(f"{esc(k)} = {esc(v)}" for k, v in legend.items())
            + "</p>"
        )
    if warnings:
        lines.append('<ul class="problem">' + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")
    if counts["samples"] > counts["shown"]:
        lines.append(
            f"<p>{counts['samples'] - counts['shown']} of {counts['samples']} samples are left out "
            f"(<code>--limit {counts['limit']}</code>).</p>"
        )
    system = esc(system_text(meta))
    lines.append(f"<details><summary>System prompt (every sample)</summary><pre>{system}</pre></details>")
    if data.unattached:
        rows = data.unattached[:PROBLEM_ROWS]
        more = len(data.unattached) - len(rows)
        lines.append(
            f"<details><summary>{len(data.unattached)} problem(s) of files in no sample (left out by the "
            "converters)</summary><table><tr><th>file</th><th>line</th><th>kind</th><th>reason</th></tr>"
            + "".join(
                f"<tr><td>{esc(p.get('file'))}</td><td>{_line_text(p.get('line'))}</td>"
                f"<td>{esc(p.get('kind'))}</td><td>{esc(p.get('reason'))}</td></tr>"
                for p in rows
            )
            + "</table>"
            + (f"<p>{more} more in {REPORT_FILE}.</p>" if more else "")
            + "</details>"
        )
    return "\n".join(lines)


@contextmanager
def _target(out: Path, in_place: bool) -> Iterator[Path]:
    """Where the pages go: ``out`` itself after removing the previous preview's files (when it is a staging
    folder that will be swapped in whole: files the user added are kept), else a new folder replacing it."""
    if not in_place:
        with atomic_dir(out) as folder:
            yield folder
        return
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / IMG_DIR, ignore_errors=True)
    for old in [*out.glob("page-*.html"), out / INDEX_HTML, out / SUMMARY_FILE]:
        old.unlink(missing_ok=True)
    yield out


def write_preview(
    data: PreviewData,
    config_path: str,
    out: str | Path,
    options: PageOptions | None = None,
    *,
    in_place: bool = False,
) -> dict[str, Any]:
    """Write the preview folder ``out`` (replacing an older preview) and return its summary.

    ``in_place``: ``out`` is a staging folder (qwenvl_roi.outputs.staged) that is swapped in whole, so the
    previous preview's files are replaced in it and anything else there is kept. A folder that exists and
    is not a preview (no preview.json) is never replaced."""
    out = Path(out)
    if (
        not in_place
        and out.exists()
        and (not out.is_dir() or (any(out.iterdir()) and not (out / SUMMARY_FILE).is_file()))
    ):
        raise ConvertError(
            f"{out} exists and is not a preview folder (no {SUMMARY_FILE}); choose a new folder"
        )
    options = options or PageOptions()
    settings = FrameSettings.from_meta(data.meta)
    font = find_label_font()
    names, legend = display_names(data.meta.labels, font)
    chosen = data.samples[: options.limit]
    with _target(out, in_place) as folder:
        (folder / IMG_DIR).mkdir()
        thumbs = draw_all(
            chosen,
            lambda name, item: _thumbnail(item, name, folder / IMG_DIR, settings, options, font, names),
            options,
        )
        warnings = []
        problems = [t.problem for t in thumbs if t.problem]
        if problems:
            warnings.append(f"{len(problems)} picture(s) could not be read, first: {problems[0]}")
        notes = [t.note for t in thumbs if t.note]
        if notes:
            warnings.append(
                f"{len(notes)} picture(s) differ in size from the regions file, first: {notes[0]}"
            )
        if data.stale:
            warnings.append(
                f"{data.stale} reported box(es) were not found when the annotation txt was read again: the "
                "txt files or the config changed after convert; run convert again"
            )
        counts = {
            "samples": len(data.samples),
            "with_problems": sum(i.has_line_problems for i in data.samples),
            "shown": len(chosen),
            "limit": options.limit,
        }
        header = _header(data, config_path, out.resolve(), settings, counts, legend, warnings)
        cards = [
            (_heading_key(item), _card(item, thumb, data, settings))
            for item, thumb in zip(chosen, thumbs, strict=True)
        ]
        lead, twin_counts = twins_html(
            data, folder / IMG_DIR, settings, options, font.path, names, COLORS["positive"][0]
        )
        n_pages = write_pages(
            folder, cards, options.page_size, _body, "Annotation preview", header, _PREVIEW_CSS, lead
        )
        summary = {
            "index": INDEX_HTML,
            "pages": n_pages,
            **counts,
            "unreadable": len(problems),
            "stale_boxes": data.stale,
            "problems_in_no_sample": len(data.unattached),
            **twin_counts,
            "label_legend": legend,
            "warnings": warnings,
        }
        write_json(folder / SUMMARY_FILE, summary)
    return summary
