"""Labels and report values that look like markup are shown as the text they are.

``scan-labels`` draws labels with matplotlib (``$`` starts math: ``a$\\frac$b`` crashed the chart, ``$x$``
was drawn as an italic x); ``preview`` writes labels and prepare_report.json values into HTML (a line or
a count holding ``<script>`` must stay text).
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from qwenvl_roi.cli import main

MARKUP = ["a$\\frac$b", "$x$", "<img src=x onerror=alert(1)>|a"]
SCRIPT = "<script>alert(1)</script>"


def _abnormal(root: Path, files) -> None:
    """Three pictures, one tricky label each, and one line with a coordinate count problem."""
    for k, label in enumerate(MARKUP):
        files.image(root / "abn" / "b1" / f"a{k}.jpg", (160, 120))
        lines = [f"a{k}.jpg;10;10;60;60;{label}", f"a{k}.jpg;80;20;120;70;crack"]
        if k == 0:
            lines.append("a0.jpg;12;13;crack")  # two numbers: the line's problem (coord_count)
        files.txt(root / "abn" / "b1" / f"a{k}.txt", "\n".join(lines) + "\n")


def test_scan_labels_draws_labels_with_dollars_literally(tmp_path: Path, files) -> None:
    _abnormal(tmp_path, files)
    out = tmp_path / "labels.json"
    assert main(["scan-labels", "--abnormal-dir", str(tmp_path / "abn"), "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(MARKUP) <= {r["label"] for r in data["merged"]}
    assert out.with_suffix(".png").is_file()

    from qwenvl_roi.converters.label_chart import label_chart_figure

    fig, legend = label_chart_figure(data["merged"])
    ticks = fig.axes[0].get_yticklabels()
    assert [t.get_text() for t in ticks] == [r["label"] for r in data["merged"]] and legend == {}
    assert all(not t.get_parse_math() and not t.get_usetex() for t in ticks)
    fig.canvas.draw()  # drawn without a math parse error


class _Text(HTMLParser):
    """Elements and text of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.parts: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def test_preview_shows_labels_and_report_values_as_text(
    tmp_path: Path, files, capsys: pytest.CaptureFixture
) -> None:
    _abnormal(tmp_path, files)
    for k in range(3):
        files.image(tmp_path / "nor" / f"n{k}.png", (160, 120))
    config = {
        "abnormal_dir": str(tmp_path / "abn"),
        "normal_dir": str(tmp_path / "nor"),
        "out_dir": str(tmp_path / "out"),
        "dataset_info_dir": str(tmp_path / "dinfo"),
        "prompt_language": "en",
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["convert", "--config", str(tmp_path / "data.yaml")]) == 0
    report_path = tmp_path / "out" / "prepare_report.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    problem = next(p for p in report["problems"] if p["kind"] == "coord_count")
    report["problems"].append(dict(problem))  # a second problem of the same txt, with a numbered line
    problem["line"] = SCRIPT  # a hand-edited (or foreign) report: its values are text, never markup
    report["problem_counts"]["coord_count"] = "<img src=y onerror=alert(2)>"
    original = report_path.read_bytes()
    report_path.write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")

    # a hand-edited (or foreign) report breaks the published contract: refused, naming the fields
    out = tmp_path / "preview"
    assert main(["preview", "--config", str(tmp_path / "data.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a prepare report" in err and "problem_counts.coord_count" in err and "line" in err
    assert not out.exists()

    # the report as prepare wrote it: user text (labels, file names, reasons quoting them) is shown as text
    report_path.write_bytes(original)
    assert main(["preview", "--config", str(tmp_path / "data.yaml"), "--out", str(out)]) == 0
    page = _Text((out / "index.html").read_text(encoding="utf-8"))
    assert not [t for t, _ in page.tags if t == "script"]
    assert all((a.get("src") or "").startswith("img/") for t, a in page.tags if t == "img")
    text = "".join(page.parts)
    for label in MARKUP:
        assert label in text
