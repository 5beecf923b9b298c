"""The preview attaches every format's problems to the image they concern and draws their boxes where the
truth puts them: labelme (JSON paths), YOLO beside the images (a .txt that is not the seed's dialect), COCO
(one file for every image) and MVTec AD masks (components).

Reference: the boxes the test wrote, in the image's displayed frame (never the report's own figures). Before
prepare_report version 2 the problems of these formats named no image: the preview listed them as "problems
of files in no sample", and read a YOLO txt beside its image with the seed's txt parser (every box "not found
when the txt was read again").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from qwenvl_roi.converters.config import load_data_config

from qwenvl_roi.cli import main
from qwenvl_roi.preview.samples import PreviewData, load_preview

from .test_layouts import build_mvtec
from .test_sources import COCO_CATS, TRUTH, coco_doc, labelme_shape, stem, write_images, yolo_line

P01 = "b1/p01.jpg"  # 320x240, shown as stored; boxes (10, 20, 110, 90) crack, (150, 100, 300, 200) 3号划痕
CLIPPED = ((300, 200, 340, 260), (300, 200, 320, 240))  # as written, as kept (clipped to the picture)
TINY = (5, 5, 7, 7)  # 2x2: below min_box_size 4, dropped
YOLO_ORDER = ["渗漏", "crack", "3号划痕"]


def _labelme(root: Path) -> tuple[dict[str, Any], set[str]]:
    images = root / "images"
    write_images(images)
    for t in TRUTH:
        shapes = [labelme_shape(box, lab, "rectangle") for box, lab in t.boxes]
        if t.rel == P01:
            shapes += [
                labelme_shape(CLIPPED[0], "crack", "rectangle"),
                labelme_shape(TINY, "crack", "rectangle"),
                {
                    "label": "crack",
                    "points": [[50, 50]],
                    "shape_type": "point",
                    "flags": {},
                    "group_id": None,
                },
            ]
        doc = {"version": "5.4.1", "shapes": shapes, "imagePath": t.rel.rsplit("/", 1)[1], "imageData": None}
        (images / f"{stem(t.rel)}.json").write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    return {"abnormal_dir": str(images), "annotation_format": "labelme"}, {"unsupported_shape"}


def _yolo_beside(root: Path) -> tuple[dict[str, Any], set[str]]:
    """Ultralytics-style lines in a .txt beside each image (no labels/ tree)."""
    images = root / "images"
    write_images(images)
    for t in TRUTH:
        lines = [yolo_line(box, t.size, YOLO_ORDER.index(lab), seg=False) for box, lab in t.boxes]
        if t.rel == P01:
            lines += [yolo_line(CLIPPED[0], t.size, 1, seg=False), yolo_line(TINY, t.size, 1, seg=False)]
            lines.append("9 0.5 0.5 0.1 0.1")  # a class id beyond the names
        (images / f"{stem(t.rel)}.txt").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    names = root / "classes.txt"
    names.write_text("\n".join(YOLO_ORDER) + "\n", encoding="utf-8")
    keys = {"abnormal_dir": str(images), "annotation_format": "yolo", "yolo_names": str(names)}
    return keys, {"unknown_class"}


def _coco(root: Path) -> tuple[dict[str, Any], set[str]]:
    images = root / "images"
    write_images(images)
    doc = coco_doc()
    p01 = next(im["id"] for im in doc["images"] if im["file_name"] == P01)
    for (x1, y1, x2, y2), cat in ((CLIPPED[0], COCO_CATS["crack"]), (TINY, COCO_CATS["crack"]), (TINY, 999)):
        doc["annotations"].append(
            {"id": len(doc["annotations"]) + 1, "image_id": p01, "category_id": cat,
             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
        )  # fmt: skip
    path = root / "instances.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    keys = {"abnormal_dir": str(images), "annotation_format": "coco", "coco_json": str(path)}
    return keys, {"unknown_category"}


FORMATS = {"labelme": _labelme, "yolo_beside": _yolo_beside, "coco": _coco}


def _convert_and_load(root: Path, keys: dict[str, Any]) -> PreviewData:
    cfg = {
        "normal_dir": None,
        "out_dir": str(root / "out"),
        "dataset_info_dir": str(root / "dataset_info"),
        "min_box_size": 4,
        **keys,
    }
    (root / "data.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    assert main(["convert", "--config", str(root / "data.yaml")]) == 0
    return load_preview(load_data_config(root / "data.yaml"), str(root / "data.yaml"))


def _close(box: Any, want: tuple[int, ...]) -> bool:
    return box is not None and all(abs(float(a) - b) < 0.01 for a, b in zip(box, want, strict=True))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_problems_of_every_format_are_drawn_on_their_image(tmp_path: Path, fmt: str) -> None:
    keys, entry_kinds = FORMATS[fmt](tmp_path)
    data = _convert_and_load(tmp_path, keys)
    kinds = {p["kind"] for p in data.report["problems"]}
    assert kinds == {"box_fixed", "box_too_small"} | entry_kinds, data.report["problems"]
    assert data.unattached == [], "every problem concerns an image that is in a sample"
    assert data.stale == 0

    cards = [s for s in data.samples if s.sample["sample_id"].endswith(f"/{P01}#0")]
    assert len(cards) == 1
    marks = cards[0].marks
    assert cards[0].has_line_problems and data.samples[0] is cards[0]  # the problem image comes first
    dropped = [m for m in marks if m.status == "dropped"]
    assert [m.kind for m in dropped] == ["box_too_small"] and _close(dropped[0].box, TINY)
    clipped = [m for m in marks if m.status == "clipped"]
    assert [m.kind for m in clipped] == ["box_fixed"] and _close(clipped[0].box, CLIPPED[1])
    # the clipped box is the positive region the converters kept
    assert any(r["positive"] and _close(r["box"], CLIPPED[1]) for r in cards[0].sample["regions"])
    assert {m.kind for m in marks if m.status == "line"} == entry_kinds
    assert not any(m.not_drawn for m in marks)
    others = [s for s in data.samples if not s.sample["sample_id"].endswith(f"/{P01}#0")]
    assert others and not any(s.marks for s in others)

    # the page: the problem image's card lists them with their place in the annotation
    assert main(["preview", "--config", str(tmp_path / "data.yaml"), "--out", str(tmp_path / "pv")]) == 0
    summary = json.loads((tmp_path / "pv" / "preview.json").read_text(encoding="utf-8"))
    assert summary["with_problems"] == 1 and summary["problems_in_no_sample"] == 0
    html = (tmp_path / "pv" / "index.html").read_text(encoding="utf-8")
    for p in data.report["problems"]:
        tag = f"L{p['line']}" if isinstance(p["line"], int) else str(p["line"])
        assert f"{tag}: {p['reason']}" in html or f"<td>{tag}</td>" in html, (tag, p)
    assert "Lshapes[" not in html and "Lannotations[" not in html


def test_mask_components_below_min_box_size_are_drawn_on_their_image(tmp_path: Path) -> None:
    """MVTec AD: each defect mask has a 3x3 speck at x 80+k%6, y 60 (test_layouts.defect_mask)."""
    build_mvtec(tmp_path / "mvtec", types={"scratch": 4})
    data = _convert_and_load(
        tmp_path, {"dataset_layout": "mvtec", "dataset_root": str(tmp_path / "mvtec"), "min_box_size": 4}
    )
    specks = [p for p in data.report["problems"] if p["kind"] == "box_too_small"]
    assert len(specks) == 4 and all(p["line"].startswith("components[") for p in specks)
    assert not [p for p in data.unattached if p["kind"] == "box_too_small"]
    for s in data.samples:
        rel = s.sample["sample_id"].split("/", 1)[1].rsplit("#", 1)[0]
        if "/scratch/" not in rel:
            assert not s.marks
            continue
        k = int(rel.rsplit("/", 1)[1].split(".")[0])
        (mark,) = s.marks
        assert mark.status == "dropped" and mark.line == "components[1]"
        assert _close(mark.box, (80 + k % 6, 60, 83 + k % 6, 63)), (rel, mark.box)
