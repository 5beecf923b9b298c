"""Label-distribution bar chart for `qwenvl-roi scan-labels` (boxes and images per merged label).

Labels are often Chinese. Matplotlib falls back glyph by glyph through the font families listed here; when
no installed font can draw a label, its bar is named ``#k`` instead of a row of empty boxes, and the chart's
legend (returned, and stored in the JSON) says which label ``#k`` is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenvl_roi.fileio import write_figure_png
from qwenvl_roi.fonts import LITERAL_TEXT

FONT_FAMILIES = (
    "DejaVu Sans",
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
)


def _drawable_chars() -> tuple[list[str], set[int]]:
    """Installed families among FONT_FAMILIES and the code points they can draw together."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    families, chars = [], set()
    for family in FONT_FAMILIES:
        try:
            prop = font_manager.FontProperties(family=family)
            path = font_manager.findfont(prop, fallback_to_default=False)
        except ValueError:
            continue
        families.append(family)
        chars |= set(FT2Font(path).get_charmap())
    return families, chars


def label_chart_figure(merged: list[dict[str, Any]]) -> tuple[Any, dict[str, str]]:
    """(figure, #k legend): horizontal bars (boxes, images) per merged label, most frequent on top.

    Labels are drawn literally (``LITERAL_TEXT``): a ``$`` in a label is a dollar sign, not math. Call it
    under the font rc of ``write_label_chart`` for CJK labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, drawable = _drawable_chars()
    legend: dict[str, str] = {}
    names = []
    for k, row in enumerate(merged, start=1):
        label = str(row["label"])
        if all(ord(ch) in drawable for ch in label):
            names.append(label)
        else:
            names.append(f"#{k}")
            legend[f"#{k}"] = label
    boxes = [int(r["boxes"]) for r in merged]
    images = [int(r["images"]) for r in merged]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * max(len(merged), 1)))
    y = list(range(len(merged)))
    ax.barh([i - 0.2 for i in y], boxes, height=0.4, label="boxes")
    ax.barh([i + 0.2 for i in y], images, height=0.4, label="images")
    ax.set_yticks(y, names, **LITERAL_TEXT)
    ax.invert_yaxis()
    ax.set_xlabel("count")
    title = "Defect labels (merged variants)"
    if legend:
        title += ": #k = see 'chart_legend' in the JSON"
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig, legend


CHART_SOURCE = "qwenvl-roi scan-labels"


def write_label_chart(merged: list[dict[str, Any]], path: str | Path) -> dict[str, str]:
    """Write the bar chart of ``label_chart_figure`` as PNG; returns the #k legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families, _ = _drawable_chars()
    with matplotlib.rc_context({"font.family": families or ["DejaVu Sans"]}):
        fig, legend = label_chart_figure(merged)
        write_figure_png(fig, path, source=CHART_SOURCE)
        plt.close(fig)
    return legend


def is_label_chart(path: str | Path) -> bool:
    """Whether ``path`` is a chart this command drew (its PNG text chunk), not a picture of the user's."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return getattr(im, "text", {}).get("Source") == CHART_SOURCE
    except OSError:
        return False
