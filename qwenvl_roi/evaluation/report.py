"""ROC / PR curves as PNG and a short Markdown report beside metrics.json.

Curves are drawn only for levels where both classes exist; otherwise the report says why a picture is
missing instead of drawing a meaningless line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qwenvl_roi.atomic import write_figure_png
from qwenvl_roi.evaluation.files import write_text_atomic
from qwenvl_roi.evaluation.metrics import image_rows, ranking_score
from qwenvl_roi.evaluation.records import JoinedRegion

ROC_PNG = "roc.png"
PR_PNG = "pr.png"
REPORT_MD = "report.md"


def _levels(regions: Sequence[JoinedRegion], threshold: float) -> dict[str, tuple[list[bool], list[float]]]:
    rows = image_rows(regions, threshold)
    return {
        "ROI": ([r.positive for r in regions], [ranking_score(r) for r in regions]),
        "image": ([g for _, g, _, _ in rows], [s for _, _, s, _ in rows]),
    }


def write_curves(regions: Sequence[JoinedRegion], threshold: float, out_dir: str | Path) -> list[str]:
    """Write roc.png and pr.png; return the names of the curves drawn ("ROI", "image")."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    out_dir = Path(out_dir)
    drawable = {k: v for k, v in _levels(regions, threshold).items() if any(v[0]) and not all(v[0])}

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in drawable.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02)
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    write_figure_png(fig, out_dir / ROC_PNG)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in drawable.items():
        precision, recall, _ = precision_recall_curve(y, s)
        ax.plot(recall, precision, label=name)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    if drawable:
        ax.legend(loc="lower left")
    fig.tight_layout()
    write_figure_png(fig, out_dir / PR_PNG)
    plt.close(fig)
    return list(drawable)


def fmt(x: object, digits: int = 4) -> str:
    """A Markdown table cell: ``n/a`` for a missing value, floats to a fixed number of decimals."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def render_markdown(metrics: dict, curves: Sequence[str]) -> str:
    """The Markdown report: threshold, ROI / image tables, per-label table, pictures, warnings."""
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
                f"| {label} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} | {m['support']} |"
            )
    lines.append("")
    if curves:
        lines += [f"![ROC]({ROC_PNG})", "", f"![Precision-recall]({PR_PNG})", ""]
    missing = [k for k in ("ROI", "image") if k not in curves]
    if missing:
        lines.append(f"No curve for {', '.join(missing)}: only one class in gold.")
        lines.append("")
    if metrics["warnings"]:
        lines += ["Warnings:", ""] + [f"- {w}" for w in metrics["warnings"]] + [""]
    return "\n".join(lines)


def write_report(metrics: dict, regions: Sequence[JoinedRegion], out_dir: str | Path) -> None:
    """Write roc.png, pr.png and report.md into out_dir."""
    curves = write_curves(regions, float(metrics["threshold"]), out_dir)
    write_text_atomic(Path(out_dir) / REPORT_MD, render_markdown(metrics, curves))
