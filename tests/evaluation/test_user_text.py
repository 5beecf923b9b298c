"""`eval` with user text that looks like markup, and with numbers that are not finite or do not fit.

Labels come from annotation files people write: ``$`` must not become matplotlib math (``a$\\frac$b``
crashed the confusion matrix after half the outputs were written), ``<img ...>`` must stay text in
report.md wherever the Markdown is rendered, and ``|`` must not split a table row. A gold box with
``Infinity``/``NaN`` (Python's json reads them) or a number too big for a float is that line's error.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwenvl_roi.cli import main

TRICKY = ["a$\\frac$b", "$x$", "<img src=x onerror=alert(1)>|a", "<script>alert(1)</script>", "*b*_c_"]
BIG = "9" * 400  # a JSON integer Python reads, but float() cannot hold


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _case(root: Path) -> tuple[Path, Path]:
    """Gold and predictions: one picture per tricky label, its region found (TP) and a decoy (FP)."""
    gold, preds = [], []
    for k, label in enumerate(TRICKY):
        path = root / f"p{k}.png"
        rng = np.random.default_rng(k)
        Image.fromarray(rng.integers(40, 216, (48, 64, 3), dtype=np.uint8)).save(path)
        sid = f"p{k}#0"
        gold.append(
            {
                "sample_id": sid,
                "image": str(path),
                "width": 64,
                "height": 48,
                "split": "test",
                "group": "g",
                "source": "abnormal",
                "regions": [
                    {"id": "R1", "box": [4, 4, 20, 20], "label": label, "positive": True},
                    {"id": "R2", "box": [30, 10, 50, 30], "label": None, "positive": False},
                ],
                "positive_region_ids": ["R1"],
            }
        )
        wrong = TRICKY[(k + 1) % len(TRICKY)]
        preds.append(
            {
                "sample_id": sid,
                "image": str(path),
                "regions": [
                    {"id": "R1", "score": 0.9, "label": label, "abnormal": True, "greedy": label},
                    {"id": "R2", "score": 0.7 if k % 2 else 0.2, "label": wrong, "abnormal": k % 2 == 1,
                     "greedy": wrong},
                ],
                "image_line_score": 0.9,
                "image_verdict": "abnormal",
            }
        )  # fmt: skip
    return _write_jsonl(root / "pred.jsonl", preds), _write_jsonl(root / "regions_test.jsonl", gold)


class _Html(HTMLParser):
    """Elements, the text of each table row's cells, and all text, of an HTML document."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def test_labels_that_look_like_markup_are_drawn_and_written_literally(tmp_path: Path) -> None:
    from qwenvl_roi.evaluation.report import confusion_figure

    pred, gold = _case(tmp_path)
    out = tmp_path / "eval"
    rc = main(
        ["eval", "--predictions", str(pred), "--gold", str(gold), "--threshold", "0.5", "--out", str(out)]
    )
    assert rc == 0
    for name in ("metrics.json", "report.md", "roc.png", "pr.png", "confusion.png", "gallery/index.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    classes = metrics["confusion"]["labels"]
    assert set(TRICKY) <= set(classes)

    # the confusion matrix draws each label as the text it is, never as math or TeX
    fig = confusion_figure(metrics["confusion"], {c: c for c in classes})
    for ax in fig.axes:
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            assert [t.get_text() for t in ticks] == classes
            assert all(not t.get_parse_math() and not t.get_usetex() for t in ticks)

    # report.md rendered as a permissive renderer does (raw HTML allowed): the labels stay text
    markdown_it = pytest.importorskip("markdown_it")
    md = (out / "report.md").read_text(encoding="utf-8")
    page = _Html(markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md))
    assert not [t for t, _ in page.tags if t in ("script", "em", "del", "code")]
    assert all(a.get("src") in ("roc.png", "pr.png", "confusion.png") for t, a in page.tags if t == "img")
    per_label = [r for r in page.rows if r and r[0] in TRICKY and len(r) == 5]
    assert sorted(r[0] for r in per_label) == sorted(TRICKY)  # one row per label, 5 cells each
    confusion_rows = [r for r in page.rows if r and r[0] in classes and len(r) == len(classes) + 1]
    assert sorted(r[0] for r in confusion_rows) == sorted(classes)
    header = next(r for r in page.rows if r and r[0] == "gold \\ predicted")
    assert header[1:] == classes
    assert all(len(r) in (5, 9, len(classes) + 1) for r in page.rows), page.rows

    # the gallery shows them as text too
    gallery = _Html((out / "gallery" / "index.html").read_text(encoding="utf-8"))
    assert not [t for t, _ in gallery.tags if t == "script"]
    assert all((a.get("src") or "").startswith("img/") for t, a in gallery.tags if t == "img")
    cells = {c for r in gallery.rows for c in r}
    assert set(TRICKY) <= cells


def _gold_line(sid: str, image: Path, box: str) -> str:
    """A regions line written by hand, so the box may hold JSON literals json.dumps would not write."""
    return (
        f'{{"sample_id": "{sid}", "image": "{image}", "width": 64, "height": 48, "split": "test", '
        f'"group": "g", "source": "abnormal", "regions": '
        f'[{{"id": "R1", "box": {box}, "label": "crack", "positive": true}}, '
        f'{{"id": "R2", "box": [30, 10, 50, 30], "label": null, "positive": false}}], '
        f'"positive_region_ids": ["R1"]}}\n'
    )


def _pred_line(sid: str, image: Path, score: str = "0.9", line_score: str = "0.5") -> str:
    return (
        f'{{"sample_id": "{sid}", "image": "{image}", "regions": '
        f'[{{"id": "R1", "score": {score}, "label": "crack", "abnormal": true, "greedy": "crack"}}, '
        f'{{"id": "R2", "score": 0.1, "label": "crack", "abnormal": false, "greedy": "normal"}}], '
        f'"image_line_score": {line_score}, "image_verdict": "abnormal"}}\n'
    )


@pytest.mark.parametrize(
    "box",
    ["[4, 4, Infinity, 20]", "[-Infinity, 4, 20, 20]", "[4, NaN, 20, 20]", f"[4, 4, {BIG}, 20]"],
    ids=["inf", "-inf", "nan", "400-digit"],
)
def test_gold_boxes_that_are_not_finite_numbers_are_their_lines_error(
    tmp_path: Path, box: str, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (120, 120, 120)).save(image)
    gold = tmp_path / "regions_test.jsonl"
    gold.write_text(_gold_line("a#0", image, "[4, 4, 20, 20]") + _gold_line("a#1", image, box), "utf-8")
    pred = tmp_path / "pred.jsonl"
    pred.write_text(_pred_line("a#0", image) + _pred_line("a#1", image), "utf-8")
    out = tmp_path / "eval"
    rc = main(
        ["eval", "--predictions", str(pred), "--gold", str(gold), "--threshold", "0.5", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{gold}:2:" in err and "regions.0.box" in err and "finite" in err, err
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    ("score", "line_score", "field"),
    [
        ("NaN", "0.5", "regions.0.score"),
        ("Infinity", "0.5", "regions.0.score"),
        (BIG, "0.5", "regions.0.score"),
        ("0.9", "NaN", "image_line_score"),
        ("0.9", f"-{BIG}", "image_line_score"),
    ],
    ids=["nan", "inf", "400-digit", "nan-image-line", "400-digit-image-line"],
)
def test_prediction_numbers_that_are_not_finite_are_their_lines_error(
    tmp_path: Path, score: str, line_score: str, field: str, capsys: pytest.CaptureFixture
) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (120, 120, 120)).save(image)
    gold = tmp_path / "regions_test.jsonl"
    gold.write_text(_gold_line("a#0", image, "[4, 4, 20, 20]") + _gold_line("a#1", image, "[1, 1, 9, 9]"))
    pred = tmp_path / "pred.jsonl"
    pred.write_text(_pred_line("a#0", image) + _pred_line("a#1", image, score, line_score), "utf-8")
    rc = main(["eval", "--predictions", str(pred), "--gold", str(gold), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{pred}:2:" in err and field in err, err
