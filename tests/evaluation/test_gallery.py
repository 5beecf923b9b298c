"""The eval gallery, confusion matrix and curve legends, checked against independent references.

Pictures: LLaMA-Factory's own Qwen2-VL plugin loads each file (the pixels the trainer sees, EXIF
orientation ignored) and transformers' smart_resize gives the model's frame; a thumbnail must equal those
pixels except on the outlines of the boxes it draws (and the tag strip above each box). Counts and
areas: scikit-learn from the raw JSONL files.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from qwenvl_roi.cli import main

THRESHOLD = 0.5
MAX_PIXELS = 112 * 112
LABELS = ["裂缝", "渗水", "裂纹"]
TAG_BAND = 16  # tags are at most 16 px high (10 px text at these sizes) and sit right above the box


def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(40, 216, (h, w, 3), dtype=np.uint8))


def _region(rid: str, box: list[int], label: str | None) -> dict:
    return {"id": rid, "box": box, "label": label, "positive": label is not None}


# image file -> (picture maker, regions, predicted (score, label) per region, the box in the model frame)
CASES = {
    # 112x84 fits the frame as is; R1 missed (FN), R2 a false alarm (FP); written with a relative path
    "images/a.png": (
        lambda: _noise(112, 84, 1),
        [_region("R1", [10, 20, 40, 50], "裂缝"), _region("R2", [60, 40, 90, 75], None)],
        [(0.2, "裂缝"), (0.9, "渗水")],
        [[10, 20, 40, 50], [60, 40, 90, 75]],
    ),
    # stored 140x84 with EXIF orientation 6 (a viewer shows it 84x140): the trainer ignores the tag
    "b_exif.jpg": (
        lambda: _noise(140, 84, 2),
        [_region("R1", [20, 30, 60, 70], "渗水"), _region("R2", [80, 20, 120, 40], None)],
        [(0.8, "渗水"), (0.1, None)],
        [[20, 30, 60, 70], [80, 20, 120, 40]],
    ),
    # 224x168 is shrunk by LLaMA-Factory to 129x96, then the processor's grid is 140x84 (x 0.625, y 0.5)
    "c_big.png": (
        lambda: _noise(224, 168, 3),
        [_region("R1", [16, 40, 112, 100], "裂纹"), _region("R2", [128, 60, 208, 140], None)],
        [(0.95, "裂缝"), (0.3, None)],
        [[10, 20, 70, 50], [80, 30, 130, 70]],
    ),
    # no such file: the gallery says so and references no picture for it
    "missing.png": (None, [_region("R1", [1, 1, 9, 9], None)], [(0.1, None)], None),
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted-looking folder with pictures, gold and predictions, evaluated with PNG thumbnails."""
    from qwenvl_roi.converters.config import DataConfig
    from qwenvl_roi.converters.meta import build_meta

    root = tmp_path_factory.mktemp("gallery")
    data = root / "prepared"
    data.mkdir()
    meta = build_meta(DataConfig(image_max_pixels=MAX_PIXELS, image_min_pixels=1024), LABELS)
    (data / "dataset_meta.json").write_text(meta.model_dump_json(indent=2), encoding="utf-8")
    gold, preds = [], []
    for name, (make, regions, predicted, _) in CASES.items():
        path = data / name
        size = (8, 8)
        if make is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            image = make()
            size = image.size
            if name.endswith(".jpg"):
                exif = Image.Exif()
                exif[0x0112] = 6
                image.save(path, "JPEG", quality=95, exif=exif)
            else:
                image.save(path)
        image_field = name if name.startswith("images/") else str(path)
        sid = f"{Path(name).name}#0"
        positive = [r["id"] for r in regions if r["positive"]]
        gold.append(
            {"sample_id": sid, "image": image_field, "width": size[0], "height": size[1], "split": "test",
             "group": "g", "source": "abnormal" if positive else "normal", "regions": regions,
             "positive_region_ids": positive}
        )  # fmt: skip
        # scoring mode always names the most likely label, also for a region it scores normal
        preds.append(
            {
                "sample_id": sid,
                "image": image_field,
                "regions": [
                    {"id": r["id"], "score": s, "label": lab or LABELS[0], "abnormal": s >= THRESHOLD,
                     "greedy": lab or "正常"}
                    for r, (s, lab) in zip(regions, predicted, strict=True)
                ],
                "image_line_score": max(s for s, _ in predicted),
                "image_verdict": "异常",
            }
        )  # fmt: skip
    (data / "regions_test.jsonl").write_text(
        "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gold), "utf-8"
    )
    (root / "pred.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), "utf-8"
    )
    argv = ["eval", "--predictions", str(root / "pred.jsonl"), "--gold", str(data / "regions_test.jsonl")]
    argv += ["--threshold", str(THRESHOLD), "--gallery-format", "png", "--out"]
    assert main([*argv, str(root / "eval")]) == 0
    return root / "eval"


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.codes: list[str] = []
        self._in_code = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"] or "")
        if tag == "a":
            self.links.append(a["href"] or "")
        self._in_code = tag == "code"

    def handle_data(self, data: str) -> None:
        if self._in_code:
            self.codes.append(data)
            self._in_code = False


def test_pages_reference_only_pictures_that_exist(evaluated: Path) -> None:
    gallery = evaluated / "gallery"
    refs = _Refs()
    refs.feed((gallery / "index.html").read_text(encoding="utf-8"))
    assert sorted(p.name for p in gallery.iterdir()) == ["img", "index.html"]
    for ref in refs.imgs + refs.links:
        assert (gallery / ref).is_file(), ref
    assert len(refs.imgs) == 3 and sorted(refs.imgs) == sorted(
        f"img/{p.name}" for p in (gallery / "img").iterdir()
    )
    # mistakes first: the FN picture, then the label confusion, then the rest by path
    order = [Path(c).name for c in refs.codes]
    assert order == ["a.png", "c_big.png", "b_exif.jpg", "missing.png"]
    page = (gallery / "index.html").read_text(encoding="utf-8")
    assert "missing.png: file not found" in page and "0.5000" in page
    report = (evaluated / "report.md").read_text(encoding="utf-8")
    assert "(gallery/index.html)" in report and "![Confusion matrix](confusion.png)" in report


def _trainer_frame(path: Path) -> Image.Image:
    """The picture as LLaMA-Factory's Qwen2-VL plugin loads it, resized to the processor's grid."""
    from llamafactory.data.mm_plugin import get_mm_plugin
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    plugin = get_mm_plugin("qwen2_vl", image_token="<|image_pad|>")
    image = plugin._regularize_images([str(path)], image_max_pixels=MAX_PIXELS, image_min_pixels=1024)[
        "images"
    ][0]
    h, w = smart_resize(image.height, image.width, factor=28, min_pixels=3136, max_pixels=12845056)
    return image if image.size == (w, h) else image.resize((w, h), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("name", ["images/a.png", "b_exif.jpg", "c_big.png"])
def test_thumbnail_differs_from_trainer_pixels_only_along_its_boxes(evaluated: Path, name: str) -> None:
    from qwenvl_roi.evaluation.gallery import COLORS

    refs = _Refs()
    refs.feed((evaluated / "gallery" / "index.html").read_text(encoding="utf-8"))
    src = dict(zip([Path(c).name for c in refs.codes], refs.imgs, strict=False))[Path(name).name]
    thumb = np.asarray(Image.open(evaluated / "gallery" / src).convert("RGB")).astype(int)
    ref = np.asarray(_trainer_frame(evaluated.parent / "prepared" / name)).astype(int)
    assert thumb.shape == ref.shape  # an EXIF-rotated thumbnail would be 84 x 140 here

    _, regions, predicted, frame_boxes = CASES[name]
    h, w = ref.shape[:2]
    rings, bands = np.zeros((h, w), bool), []
    expected = []
    for region, (score, label), (x1, y1, x2, y2) in zip(regions, predicted, frame_boxes, strict=True):
        flagged = score >= THRESHOLD
        if flagged and region["positive"]:
            outcome = "TP" if label == region["label"] else "LABEL"
        else:
            outcome = "FP" if flagged else ("FN" if region["positive"] else "TN")
        ring = np.zeros((h, w), bool)
        ring[y1:y2, x1:x2] = True
        ring[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] = False  # a 1 px outline inside the box edges
        band = np.zeros((h, w), bool)
        band[max(0, y1 - TAG_BAND) : y1, :] = True
        rings |= ring
        bands.append(band)
        expected.append((ring, COLORS[outcome][0]))
    any_band = np.logical_or.reduce(bands)
    changed = (thumb != ref).any(axis=2)
    # outside the outlines and the tag strips, the picture is untouched (box interiors included)
    assert not (changed & ~rings & ~any_band).any()
    for k, (ring, color) in enumerate(expected):
        others = np.logical_or.reduce([b for j, b in enumerate(bands) if j != k] or [np.zeros((h, w), bool)])
        visible = ring & ~others
        assert visible.sum() > 50
        assert (thumb[visible] == color).all(), name


def _raw(evaluated: Path) -> list[tuple[dict, dict]]:
    """(gold region, predicted region) pairs read straight from the files."""
    data = evaluated.parent
    gold = [
        json.loads(line)
        for line in (data / "prepared" / "regions_test.jsonl").read_text("utf-8").splitlines()
    ]
    preds = {
        json.loads(line)["sample_id"]: json.loads(line)
        for line in (data / "pred.jsonl").read_text().splitlines()
    }
    pairs = []
    for g in gold:
        p = {r["id"]: r for r in preds[g["sample_id"]]["regions"]}
        pairs += [(r, p[r["id"]]) for r in g["regions"]]
    return pairs


def test_confusion_counts_equal_sklearn(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text(encoding="utf-8"))
    conf = metrics["confusion"]
    pairs = _raw(evaluated)
    y_true = [g["label"] if g["positive"] else "normal" for g, _ in pairs]
    y_pred = [p["label"] if p["score"] >= THRESHOLD else "normal" for _, p in pairs]
    assert conf["labels"][0] == "normal" and set(conf["labels"]) >= set(y_true) | set(y_pred)
    assert conf["counts"] == confusion_matrix(y_true, y_pred, labels=conf["labels"]).tolist()
    assert (evaluated / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_legends_carry_sklearn_auc_and_ap(evaluated: Path) -> None:
    from qwenvl_roi.evaluation.records import join
    from qwenvl_roi.evaluation.report import curve_figures

    metrics = json.loads((evaluated / "metrics.json").read_text(encoding="utf-8"))
    data = evaluated.parent
    roc, pr, drawn = curve_figures(
        metrics, join(data / "pred.jsonl", data / "prepared" / "regions_test.jsonl")
    )
    assert drawn == ["ROI", "image"]
    pairs = _raw(evaluated)
    y = [g["positive"] for g, _ in pairs]
    s = [p["score"] for _, p in pairs]
    # image level: one image per sample here, scored by its highest region
    gold = [
        json.loads(line)
        for line in (data / "prepared" / "regions_test.jsonl").read_text("utf-8").splitlines()
    ]
    preds = [json.loads(line) for line in (data / "pred.jsonl").read_text().splitlines()]
    y_img = [any(r["positive"] for r in g["regions"]) for g in gold]
    s_img = [max(r["score"] for r in p["regions"]) for p in preds]
    want = {
        "roc": {"ROI": roc_auc_score(y, s), "image": roc_auc_score(y_img, s_img)},
        "pr": {"ROI": average_precision_score(y, s), "image": average_precision_score(y_img, s_img)},
    }
    for kind, fig in (("roc", roc), ("pr", pr)):
        texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        for level, value in want[kind].items():
            (text,) = [t for t in texts if t.startswith(level + " (")]
            assert float(re.search(r"(AUC|AP) ([0-9.]+)\)", text).group(2)) == pytest.approx(value, abs=5e-5)


def test_labels_the_font_cannot_draw_are_numbered() -> None:
    import shutil
    import subprocess

    from matplotlib.ft2font import FT2Font

    from qwenvl_roi.fonts import LabelFont, display_names, fallback_font_path, find_label_font

    path = fallback_font_path()  # DejaVu Sans: Latin only
    latin = LabelFont(path, frozenset(FT2Font(path).get_charmap()))
    names, legend = display_names(["normal", "裂缝", "crack 2"], latin)
    assert names == {"normal": "normal", "裂缝": "#2", "crack 2": "crack 2"} and legend == {"#2": "裂缝"}
    fc_list = shutil.which("fc-list")
    has_cjk = fc_list and subprocess.run([fc_list, ":lang=zh"], capture_output=True, text=True).stdout.strip()
    assert find_label_font().can_draw("裂缝渗水") == bool(has_cjk)


@pytest.mark.browser
def test_gallery_opens_from_disk_in_chromium(evaluated: Path, tmp_path: Path, chromium_page) -> None:
    import os

    shot = Path(os.environ.get("QWENVL_ROI_GALLERY_SCREENSHOT") or tmp_path / "gallery.png")
    page = chromium_page
    page.goto((evaluated / "gallery" / "index.html").resolve().as_uri())
    page.wait_for_load_state("load")
    assert page.locator("figure").count() == len(CASES)
    loaded = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
    assert loaded == [True] * 3
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1200


def test_default_jpeg_gallery_is_byte_identical_on_rerun(evaluated: Path) -> None:
    data = evaluated.parent
    argv = [
        "eval",
        "--predictions",
        str(data / "pred.jsonl"),
        "--gold",
        str(data / "prepared" / "regions_test.jsonl"),
    ]
    outs = [data / "rerun1", data / "rerun2"]
    for out in outs:
        assert main([*argv, "--threshold", str(THRESHOLD), "--out", str(out)]) == 0
    files = sorted(p.relative_to(outs[0]) for p in (outs[0] / "gallery").rglob("*") if p.is_file())
    assert [f.suffix for f in files].count(".jpg") == 3
    for rel in files:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    assert Image.open(outs[0] / files[0]).format == "JPEG"
