"""ROC / PR curves as PNG and a short Markdown report beside metrics.json.

Curves are drawn only for levels where both classes exist; otherwise the report says why a picture is
missing instead of drawing a meaningless line.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qwenvl_roi.evaluation.metrics import image_rows, ranking_score
from qwenvl_roi.evaluation.records import JoinedRegion
from qwenvl_roi.fileio import write_figure_png, write_text

ROC_PNG = "roc.png"
CONFUSION_PNG = "confusion.png"
PR_PNG = "pr.png"
REPORT_MD = "report.md"


def _levels(regions: Sequence[JoinedRegion], threshold: float) -> dict[str, tuple[list[bool], list[float]]]:
    rows = image_rows(regions, threshold)
    return {
        "ROI": ([r.positive for r in regions], [ranking_score(r) for r in regions]),
        "image": ([g for _, g, _, _ in rows], [s for _, _, s, _ in rows]),
    }


def _legend(name: str, what: str, value: float | None) -> str:
    return f"{name} ({what} {value:.4f})" if value is not None else name


def curve_figures(metrics: dict, regions: Sequence[JoinedRegion]) -> tuple[Any, Any, list[str]]:
    """(ROC figure, PR figure, levels drawn); legends carry metrics.json's AUROC / average precision."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    threshold = float(metrics["threshold"])
    drawable = {k: v for k, v in _levels(regions, threshold).items() if any(v[0]) and not all(v[0])}
    keys = {"ROI": "roi", "image": "image"}

    roc, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in drawable.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=_legend(name, "AUC", metrics[keys[name]].get("auroc")))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02)
    )
    ax.legend(loc="lower right")
    roc.tight_layout()

    pr, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in drawable.items():
        precision, recall, _ = precision_recall_curve(y, s)
        ax.plot(recall, precision, label=_legend(name, "AP", metrics[keys[name]].get("average_precision")))
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    if drawable:
        ax.legend(loc="lower left")
    pr.tight_layout()
    return roc, pr, list(drawable)


def write_curves(metrics: dict, regions: Sequence[JoinedRegion], out_dir: str | Path) -> list[str]:
    """Write roc.png and pr.png; return the names of the curves drawn ("ROI", "image")."""
    import matplotlib.pyplot as plt

    roc, pr, drawn = curve_figures(metrics, regions)
    write_figure_png(roc, Path(out_dir) / ROC_PNG)
    write_figure_png(pr, Path(out_dir) / PR_PNG)
    plt.close(roc)
    plt.close(pr)
    return drawn


def confusion_figure(confusion: dict, names: dict[str, str]) -> Any:
    """Two panels, gold class by row and predicted class by column: counts and row-normalised shares.

    ``names`` maps each class to the text drawn for it (``#k`` for one the font cannot draw), drawn as
    written (``LITERAL_TEXT``: a ``$`` in a label is not math).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib import font_manager

    from qwenvl_roi.fonts import LITERAL_TEXT, find_label_font

    classes = confusion["labels"]
    counts = np.asarray(confusion["counts"], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(classes)
    label_font = font_manager.FontProperties(fname=find_label_font().path)
    ticks = [names.get(c, c) for c in classes]
    side = max(3.5, 0.55 * n + 1.8)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    panels = (("counts", counts, "{:.0f}"), ("row-normalised (share of each gold class)", shares, "{:.2f}"))
    for ax, (title, values, pattern) in zip(axes, panels, strict=True):
        ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_xticks(range(n), ticks, rotation=45, ha="right", fontproperties=label_font, **LITERAL_TEXT)
        ax.set_yticks(range(n), ticks, fontproperties=label_font, **LITERAL_TEXT)
        ax.set(xlabel="predicted", ylabel="gold", title=title)
        if n > 30:  # too many cells to annotate legibly; the colours and report.md's table remain
            continue
        top = values.max()
        for i in range(n):
            for j in range(n):
                text = "-" if values is shares and totals[i, 0] == 0 else pattern.format(values[i, j])
                dark = top > 0 and values[i, j] > 0.6 * top
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.tight_layout()
    return fig


def write_confusion(metrics: dict, out_dir: str | Path) -> dict[str, str]:
    """Write confusion.png from metrics.json's ``confusion``; return the ``#k`` legend it needed."""
    import matplotlib.pyplot as plt

    from qwenvl_roi.fonts import display_names, find_label_font

    names, legend = display_names(metrics["confusion"]["labels"], find_label_font())
    fig = confusion_figure(metrics["confusion"], names)
    write_figure_png(fig, Path(out_dir) / CONFUSION_PNG)
    plt.close(fig)
    return legend


def fmt(x: object, digits: int = 4) -> str:
    """A Markdown table cell: ``n/a`` for a missing value, floats to a fixed number of decimals."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _gallery_line(gallery: dict) -> str:
    c, shown = gallery["by_category"], gallery["shown"]
    return (
        f"**[Gallery]({gallery['index']})**: {shown} of {gallery['pictures']} pictures as the model sees "
        "them, candidates coloured by outcome. First the pictures with a false negative "
        f"({c['FN']}), then those with a false positive ({c['FP']}), then those with a wrong label only "
        f"({c['LABEL']})."
    )


#: characters that start Markdown inline markup (emphasis, code, links, strikethrough, GitHub math) or
#: split a table row; ``<``, ``>``, ``&`` and quotes become HTML entities instead
_MARKDOWN_PUNCTUATION = frozenset("\\`*_[]~|$")


def _md(text: object) -> str:
    """User text (a label, a file name in a warning) as inert Markdown: shown as written wherever the
    report is rendered. HTML in a label would stay live in most renderers (``<img onerror=...>``), and a
    ``|`` would split a table row, so markup characters are backslash-escaped (CommonMark allows it for any
    ASCII punctuation) and ``< > & " '`` written as entities. A line break (possible in a JSON label) would
    end the row: it is written as a space."""
    one_line = " ".join(str(text).splitlines())
    escaped = "".join("\\" + ch if ch in _MARKDOWN_PUNCTUATION else ch for ch in one_line)
    return html.escape(escaped, quote=True)


def _confusion_lines(confusion: dict, legend: dict[str, str]) -> list[str]:
    classes, counts = confusion["labels"], confusion["counts"]
    lines = [
        "## Confusion matrix (regions)",
        "",
        "Rows: gold class; columns: predicted class (normal below the threshold).",
        "",
        "| gold \\ predicted | " + " | ".join(_md(c) for c in classes) + " |",
        "|---" * (len(classes) + 1) + "|",
    ]
    lines += [
        f"| {_md(c)} | " + " | ".join(str(v) for v in row) + " |"
        for c, row in zip(classes, counts, strict=True)
    ]
    lines += ["", f"![Confusion matrix]({CONFUSION_PNG})", ""]
    if legend:
        lines += ["In the picture: " + ", ".join(f"{_md(k)} = {_md(v)}" for k, v in legend.items()) + ".", ""]
    return lines


def render_markdown(
    metrics: dict, curves: Sequence[str], confusion_legend: dict[str, str] | None = None
) -> str:
    """The Markdown report: threshold, gallery link, ROI / image tables, per-label table, confusion
    matrix, pictures, warnings."""
    lines = ["# Evaluation report", ""]
    src = metrics.get("threshold_source", "given")
    lines.append(
        f"Threshold: **{fmt(metrics['threshold'])}** ({src}); a region is abnormal when score >= it."
    )
    if "val" in metrics:
        v = metrics["val"]
        lines.append(
            f"Chosen F1-best on validation: precision {fmt(v['precision'])}, recall {fmt(v['recall'])}, "
            f"F1 {fmt(v['f1'])}."
        )
    c = metrics["counts"]
    if metrics.get("gallery"):
        lines += ["", _gallery_line(metrics["gallery"])]
    lines += [
        "",
        f"{c['samples']} samples, {c['regions']} regions ({c['positive_regions']} positive), "
        f"{c['images']} images ({c['abnormal_images']} abnormal), {c['unparsed_regions']} unparsed regions.",
        "",
        "| level | precision | recall | F1 | AUROC | AP | TP | FP | FN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("roi", "roi_labeled", "image"):
        m = metrics[key]
        lines.append(
            f"| {key} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} | "
            f"{fmt(m.get('auroc'))} | {fmt(m.get('average_precision'))} | "
            f"{m['tp']} | {m['fp']} | {m['fn']} |"
        )
    if "roi_within_abnormal" in metrics:
        m = metrics["roi_within_abnormal"]
        lines.append(
            f"| roi within abnormal images (localisation) | | | | {fmt(m['auroc'])} | "
            f"{fmt(m['average_precision'])} | | | |"
        )
    if "image_line" in metrics:
        m = metrics["image_line"]
        lines.append(
            f"| image line (model's own image verdict) | | | | {fmt(m['auroc'])} | "
            f"{fmt(m['average_precision'])} | | | |"
        )
    if metrics["per_label"]:
        lines += ["", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for label, m in metrics["per_label"].items():
            lines.append(
                f"| {_md(label)} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} | "
                f"{m['support']} |"
            )
    lines.append("")
    if "confusion" in metrics:
        lines += _confusion_lines(metrics["confusion"], confusion_legend or {})
    if curves:
        lines += [f"![ROC]({ROC_PNG})", "", f"![Precision-recall]({PR_PNG})", ""]
    missing = [k for k in ("ROI", "image") if k not in curves]
    if missing:
        lines.append(f"No curve for {', '.join(missing)}: only one class in gold.")
        lines.append("")
    if metrics["warnings"]:
        lines += ["Warnings:", ""] + [f"- {_md(w)}" for w in metrics["warnings"]] + [""]
    return "\n".join(lines)


def write_report(metrics: dict, regions: Sequence[JoinedRegion], out_dir: str | Path) -> None:
    """Write roc.png, pr.png, confusion.png and report.md into out_dir."""
    curves = write_curves(metrics, regions, out_dir)
    legend = write_confusion(metrics, out_dir)
    write_text(Path(out_dir) / REPORT_MD, render_markdown(metrics, curves, legend))
