"""`qwenvl-roi preview`, checked against independent references on data the real converters produced.

Data: an EXIF-rotated JPEG (stored 672x448, Orientation=6, shown 448x672 by labelling tools) whose txt
boxes are in the displayed frame: a defect, a box the converters clip, one too small, one with an empty
label, one outside the picture and a line with 2 numbers; plus a clean dataset in earlier batches. Pixels:
the picture LLaMA-Factory's own mm_plugin loads from the regions file's image (resized to transformers'
smart_resize grid); image_max_pixels makes LLaMA-Factory halve it, so the model's frame is 224x336 and a
box's frame coordinates are its displayed ones / 2 (Qwen2.5-VL rounds half up). Problems: prepare_report.json.
"""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from qwenvl_roi.cli import main

SHOWN = (448, 672)  # what a viewer displays (the labelling tool's frame)
MAX_PIXELS = 224 * 336  # LLaMA-Factory shrinks the upright 448x672 picture by exactly 1/2
FRAME = (224, 336)
DEFECT = (120, 280, 248, 408)
TXT = [
    f"cam.jpg;{';'.join(map(str, DEFECT))};crack",  # 1: kept
    "cam.jpg;352;560;480;700;spall",  # 2: clipped to 352,560,448,672
    "cam.jpg;320;96;368;112;crack",  # 3: 48x16, below min_box_size 24: dropped
    "cam.jpg;12;13;crack",  # 4: two numbers: line skipped
    "cam.jpg;500;700;540;760;crack",  # 5: outside the picture: dropped, nothing to draw
    "cam.jpg;40;560;120;600;",  # 6: empty label: dropped
]
#: displayed-frame boxes the preview must draw besides the regions: line -> (box, role)
DRAWN_LINES = {3: ((320, 96, 368, 112), "dropped"), 6: ((40, 560, 120, 600), "dropped")}
TAG_BAND = 16  # a tag is at most 16 px high (10 px text on these pictures)
TAG_REACH = 110  # and at most this wide (short ids and labels)
RED = (230, 20, 20)


def _shown_picture() -> Image.Image:
    rng = np.random.default_rng(7)
    arr = rng.integers(40, 200, (SHOWN[1], SHOWN[0], 3), dtype=np.uint8)
    x1, y1, x2, y2 = DEFECT
    arr[y1 + 16 : y2 - 16, x1 + 16 : x2 - 16] = RED  # the defect, well inside its box
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, files) -> Path:
    """Real converters on the quirky data; returns the folder holding data.yaml and out/."""
    root = tmp_path_factory.mktemp("preview")
    files.simple(root, n_abnormal=6, n_normal=6, folders=3)  # batches batch0..2, before zz_line
    cam = root / "abn" / "zz_line" / "cam.jpg"
    cam.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter: a viewer rotates it 90 degrees clockwise to show it
    _shown_picture().transpose(Image.Transpose.ROTATE_90).save(cam, quality=95, exif=exif)
    files.txt(cam.with_suffix(".txt"), "\n".join(TXT) + "\n")
    config = {
        "abnormal_dir": str(root / "abn"),
        "normal_dir": str(root / "nor"),
        "out_dir": str(root / "out"),
        "dataset_info_dir": str(root / "dinfo"),
        "image_max_pixels": MAX_PIXELS,
        "prompt_language": "en",
        "train_ratio": 0.5,
        "val_ratio": 0.25,
        "test_ratio": 0.25,
    }
    (root / "data.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["convert", "--config", str(root / "data.yaml")]) == 0
    return root


def _preview(root: Path, out: str, *extra: str) -> Path:
    assert main(["preview", "--config", str(root / "data.yaml"), "--out", str(root / out), *extra]) == 0
    return root / out


@pytest.fixture(scope="module")
def png_preview(converted: Path) -> Path:
    return _preview(converted, "preview_png", "--format", "png")


class _Page(HTMLParser):
    """img/a references, the sample id of each card in order, headings, and each card's text."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.cards: list[str] = []
        self.text: dict[str, str] = {}
        self.headings: list[str] = []
        self._card = self._code = self._heading = False
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"] or "")
        elif tag == "a":
            self.links.append(a["href"] or "")
        elif tag == "figure":
            self._card, self._buf = True, []
        elif tag == "code" and self._card and len(self.cards) == len(self.text):
            self._code = True
        elif tag in ("h2", "h3"):
            self._heading, self._buf_h = True, [tag + ":"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._card = False
            self.text[self.cards[-1]] = "".join(self._buf)
        elif tag in ("h2", "h3"):
            self._heading = False
            self.headings.append("".join(self._buf_h))

    def handle_data(self, data: str) -> None:
        if self._code:
            self.cards.append(data)
            self._code = False
        if self._card:
            self._buf.append(data)
        if self._heading:
            self._buf_h.append(data)


def _pages(folder: Path) -> _Page:
    page = _Page()
    for name in sorted(p.name for p in folder.glob("*.html")):  # index.html, then page-2.html, ...
        page.feed((folder / name).read_text(encoding="utf-8"))
    return page


def _samples(root: Path) -> dict[str, dict]:
    return {
        s["sample_id"]: s
        for sp in ("train", "val", "test")
        for s in map(json.loads, (root / "out" / f"regions_{sp}.jsonl").read_text("utf-8").splitlines())
    }


def _cam_problems(root: Path) -> list[dict]:
    report = json.loads((root / "out" / "prepare_report.json").read_text(encoding="utf-8"))
    return [p for p in report["problems"] if p["file"].endswith("zz_line/cam.txt")]


def test_pages_reference_only_pictures_that_exist(png_preview: Path, converted: Path) -> None:
    page = _pages(png_preview)
    samples = _samples(converted)
    assert sorted(page.cards) == sorted(samples)  # every sample of every split, once
    assert sorted(page.imgs) == sorted(f"img/{p.name}" for p in (png_preview / "img").iterdir())
    for ref in page.imgs + page.links:
        assert (png_preview / ref).is_file(), ref  # incl. the link to prepare_report.json
    assert all(Image.open(png_preview / ref).format == "PNG" for ref in page.imgs)


def test_problem_images_first_then_by_split_and_batch(png_preview: Path, converted: Path) -> None:
    page = _pages(png_preview)
    samples = _samples(converted)
    cam = [sid for sid in page.cards if sid.startswith("abnormal/zz_line/cam.jpg#")]
    assert cam and page.cards[: len(cam)] == cam  # the only image with txt problems comes first
    order = ("train", "val", "test")
    rest = [(order.index(samples[sid]["split"]), samples[sid]["group"]) for sid in page.cards[len(cam) :]]
    assert rest == sorted(rest)  # then by split, then by batch
    key = (order.index(samples[cam[0]]["split"]), samples[cam[0]]["group"])
    assert any(r < key for r in rest), "without problems first, the cam picture would not lead"
    assert page.headings[:2] == [
        f"h2:Annotation lines with problems: {samples[cam[0]]['split']}",
        "h3:group zz_line",
    ]


def test_dropped_and_clipped_boxes_appear_with_their_reason(png_preview: Path, converted: Path) -> None:
    page = _pages(png_preview)
    problems = _cam_problems(converted)
    kinds = {p["line"]: p["kind"] for p in problems}
    assert kinds == {
        2: "box_fixed",
        3: "box_too_small",
        4: "coord_count",
        5: "box_outside",
        6: "empty_label",
    }
    for sid in (s for s in page.cards if s.startswith("abnormal/zz_line/cam.jpg#")):
        text = page.text[sid]
        for p in problems:
            assert p["reason"] in text, (p, sid)
        assert "L5" in text and "not drawn: lies outside the picture" in text
        assert "[320, 96, 368, 112]" in text  # where the too-small box lies, read again from the txt
    clean = next(s for s in page.cards if s.startswith("abnormal/batch"))
    assert "dropped" not in page.text[clean] and "annotation problems" not in page.text[clean]


def _trainer_frame(files, path: Path) -> np.ndarray:
    """The picture as LLaMA-Factory's mm_plugin loads it, at the processor's grid (transformers)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    image = Image.fromarray(files.trainer_pixels(path, image_max_pixels=MAX_PIXELS))
    h, w = smart_resize(image.height, image.width, factor=28, min_pixels=3136, max_pixels=12845056)
    return np.asarray(image if image.size == (w, h) else image.resize((w, h), Image.Resampling.BICUBIC))


def _frame_box(box: list[float], size: tuple[int, int], frame: tuple[int, int]) -> tuple[int, ...]:
    """Qwen2.5-VL's prompt coordinates: scaled to the frame, rounded half up, clamped."""
    sx, sy = frame[0] / size[0], frame[1] / size[1]
    x1, y1, x2, y2 = (math.floor(v * s + 0.5) for v, s in zip(box, (sx, sy, sx, sy), strict=True))
    return (min(x1, frame[0]), min(y1, frame[1]), min(x2, frame[0]), min(y2, frame[1]))


def test_thumbnail_differs_from_trainer_pixels_only_along_its_boxes(
    png_preview: Path, converted: Path, files
) -> None:
    from qwenvl_roi.preview.page import COLORS

    page = _pages(png_preview)
    samples = _samples(converted)
    sid = "abnormal/zz_line/cam.jpg#0"
    s = samples[sid]
    assert (s["width"], s["height"]) == SHOWN  # boxes stay in the displayed frame
    thumb = np.asarray(Image.open(png_preview / page.imgs[page.cards.index(sid)]).convert("RGB")).astype(int)
    ref = _trainer_frame(files, converted / "out" / s["image"]).astype(int)
    assert ref.shape == thumb.shape == (FRAME[1], FRAME[0], 3)  # stored pixels unturned would be 336 x 224

    # every mark: the regions (the clipped positive in the clipped colour) and the dropped boxes of the txt
    marks = []
    for r in s["regions"]:
        role = "positive" if r["positive"] else "negative"
        if r["box"] == [352, 560, 448, 672]:
            role = "clipped"
        marks.append((_frame_box(r["box"], SHOWN, FRAME), role))
    marks += [(_frame_box(list(b), SHOWN, FRAME), role) for b, role in DRAWN_LINES.values()]
    assert (_frame_box(list(DEFECT), SHOWN, FRAME), "positive") in marks
    assert sum(role == "clipped" for _, role in marks) == 1

    h, w = ref.shape[:2]
    rings, zones = [], []
    for (x1, y1, x2, y2), _ in marks:
        ring = np.zeros((h, w), bool)
        ring[y1:y2, x1:x2] = True
        ring[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] = False  # a 1 px outline inside the box edges
        zone = ring.copy()
        cols = slice(max(0, x1 - TAG_REACH), min(w, x1 + TAG_REACH))
        zone[max(0, y1 - TAG_BAND) : y1, cols] = True  # the tag sits above the box
        if y1 < TAG_BAND:  # or, without room above, below it or inside at its top
            zone[y1 : min(h, y2 + TAG_BAND + 1), cols] = True
        rings.append(ring)
        zones.append(zone)
    changed = (thumb != ref).any(axis=2)
    assert not (changed & ~np.logical_or.reduce(zones)).any()  # box interiors and the rest untouched
    for k, ((x1, y1, x2, y2), role) in enumerate(marks):
        others = np.logical_or.reduce([z for j, z in enumerate(zones) if j != k])
        visible = rings[k] & ~others
        assert (thumb[visible] == COLORS[role][0]).all(), (role, (x1, y1, x2, y2))
        if role != "negative":
            assert visible.sum() > 40, role
    # the defect, as the model sees it, lies inside its positive box
    x1, y1, x2, y2 = _frame_box(list(DEFECT), SHOWN, FRAME)
    red = (ref[..., 0] > 200) & (ref[..., 1] < 60) & (ref[..., 2] < 60)
    assert red.sum() > 0.9 * (48 * 48) and red[y1:y2, x1:x2].sum() == red.sum()


def test_prompt_is_the_training_prompt(png_preview: Path, converted: Path) -> None:
    records = json.loads((converted / "out" / "sft_train.json").read_text(encoding="utf-8"))
    samples = [s for s in _samples(converted).values() if s["split"] == "train"]
    page = _pages(png_preview)
    for s, rec in zip(samples, records, strict=True):  # sft_train.json is written in regions order
        text = page.text[s["sample_id"]]
        user = next(m["content"] for m in rec["messages"] if m["role"] == "user")
        answer = next(m["content"] for m in rec["messages"] if m["role"] == "assistant")
        assert user in text and answer in text


def test_default_jpeg_preview_is_byte_identical_on_rerun(converted: Path) -> None:
    outs = [_preview(converted, name, "--limit", "8", "--page-size", "5") for name in ("jpeg1", "jpeg2")]
    rels = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert [r.suffix for r in rels].count(".jpg") == 8 and Path("page-2.html") in rels
    for rel in rels:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    assert sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file()) == rels
    summary = json.loads((outs[0] / "preview.json").read_text(encoding="utf-8"))
    assert summary["shown"] == 8 and summary["with_problems"] >= 1


def test_split_filter_and_clear_errors(converted: Path, tmp_path: Path, capsys) -> None:
    val = _pages(_preview(converted, "preview_val", "--split", "val", "--limit", "3"))
    samples = _samples(converted)
    assert val.cards and {samples[sid]["split"] for sid in val.cards} == {"val"}
    # not converted yet: the error names the missing file and what to run
    cfg = tmp_path / "data.yaml"
    cfg.write_text(
        yaml.safe_dump({"abnormal_dir": str(tmp_path), "out_dir": str(tmp_path / "none")}), "utf-8"
    )
    assert main(["preview", "--config", str(cfg), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "none" / "regions_train.jsonl") in err and "qwenvl-roi convert" in err
    # a folder that is not a preview is never replaced
    assert main(["preview", "--config", str(converted / "data.yaml"), "--out", str(converted / "abn")]) == 2
    assert "not made by qwenvl-roi preview" in capsys.readouterr().err
    assert (converted / "abn" / "batch0").is_dir()


@pytest.mark.browser
def test_preview_opens_from_disk_in_chromium(png_preview: Path, tmp_path: Path, chromium_page) -> None:
    import os

    shot = Path(os.environ.get("QWENVL_ROI_PREVIEW_SCREENSHOT") or tmp_path / "preview.png")
    page = chromium_page
    page.goto((png_preview / "index.html").resolve().as_uri())
    page.wait_for_load_state("load")
    n = len(_pages(png_preview).cards)
    assert page.locator("figure").count() == n
    page.evaluate("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")  # not lazy
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert re.search(r"Annotation lines with problems", page.inner_text("body"))
    page.screenshot(path=str(shot), full_page=False)
    assert Image.open(shot).size == (1200, 800)
