"""Annotation formats (converters/sources/): one ground truth written out in every format with the formats'
own quirks, converted, and the kept boxes compared with the truth in the image's displayed frame; broken
entries reported at file:line or JSON path with nothing else lost; COCO parsing checked against
pycocotools; stored-frame boxes turned as PIL turns the pixels.

Every test here fails on the code before issue #19 by construction: `annotation_format` and the other keys
were "Extra inputs are not permitted", and converters.sources did not exist.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw, ImageOps
from qwenvl_roi.converters.config import load_data_config
from qwenvl_roi.converters.prepare import PrepareResult, prepare
from qwenvl_roi.converters.scan_labels import scan_labels, settings_from_flags

from qwenvl_roi.errors import ConvertError

Box = tuple[int, int, int, int]
LABELS = ("crack", "3号划痕", "渗漏")
COCO_CATS = {"crack": 7, "3号划痕": 3, "渗漏": 12}  # ids neither from 0/1 nor contiguous


@dataclass
class Truth:
    """One image: its path under the images folder, its size as displayed, its boxes in that frame."""

    rel: str
    size: tuple[int, int]
    boxes: list[tuple[Box, str]] = field(default_factory=list)
    orientation: int = 1  # EXIF orientation of the stored JPEG


TRUTH = [
    Truth("b1/p01.jpg", (320, 240), [((10, 20, 110, 90), "crack"), ((150, 100, 300, 200), "3号划痕")]),
    Truth("b1/p02.png", (400, 300), [((50, 50, 200, 150), "渗漏")]),
    # stored 300x200 with Orientation=6: shown 200x300, and labelled there
    Truth("b1/p03.jpg", (200, 300), [((20, 40, 150, 260), "crack"), ((100, 10, 190, 60), "渗漏")], 6),
    Truth("b1/p04.jpg", (320, 240)),  # nothing: a normal image
    Truth(
        "b2/p05.jpg",
        (256, 256),
        [((0, 0, 64, 64), "crack"), ((100, 100, 160, 160), "3号划痕"), ((30, 150, 230, 250), "渗漏")],
    ),
    Truth("b2/p06.png", (300, 300), [((60, 80, 240, 220), "crack")]),
    Truth("b2/p07.jpg", (500, 400), [((400, 300, 500, 400), "3号划痕")]),  # touches the corner
    Truth("b2/p08.jpg", (320, 240), [((40, 40, 90, 200), "渗漏")]),
    Truth("b3/p09.jpg", (320, 240), [((5, 5, 60, 60), "crack"), ((200, 100, 310, 230), "crack")]),
    Truth("b3/p10.jpg", (640, 480), [((120, 130, 520, 400), "3号划痕")]),
    Truth("b3/p11.jpg", (320, 240)),  # nothing: a normal image
    Truth("b3/p12.jpg", (320, 240), [((100, 60, 228, 188), "渗漏")]),
]
NORMAL = {t.rel for t in TRUTH if not t.boxes}


def write_images(images: Path) -> None:
    for t in TRUTH:
        path = images / t.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shown = Image.new("RGB", t.size, (120, 120, 120))
        if t.orientation == 1:
            shown.save(path)
            continue
        stored = shown.transpose(Image.Transpose.ROTATE_90)  # undoes Orientation=6
        exif = Image.Exif()
        exif[0x0112] = t.orientation
        stored.save(path, quality=95, exif=exif)
        with Image.open(path) as check:
            assert check.size == (t.size[1], t.size[0]) and ImageOps.exif_transpose(check).size == t.size


def stem(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


# --- the formats, each as its tools write it -------------------------------------------------------------


def write_txt(root: Path) -> dict[str, Any]:
    images = root / "images"
    write_images(images)
    for t in TRUTH:
        name = t.rel.rsplit("/", 1)[1]
        lines = [f"{name}；{x1}，{y1}，{x2}，{y2}；{lab}" for (x1, y1, x2, y2), lab in t.boxes]
        (images / f"{stem(t.rel)}.txt").write_text("\n".join(lines), encoding="utf-8")
    return {"abnormal_dir": str(images)}


def labelme_shape(box: Box, label: str, kind: str) -> dict[str, Any]:
    x1, y1, x2, y2 = box
    if kind == "rectangle":  # corners in the reverse order
        points = [[x2, y2], [x1, y1]]
    elif kind == "polygon":  # a diamond touching the box's four sides
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        points = [[x1, cy], [cx, y1], [x2, cy], [cx, y2]]
    else:  # circle: centre and a point on the rim (the box is square)
        assert x2 - x1 == y2 - y1
        points = [[(x1 + x2) / 2, (y1 + y2) / 2], [(x1 + x2) / 2, y2]]
    return {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def write_labelme(root: Path) -> dict[str, Any]:
    images = root / "images"
    write_images(images)
    for t in TRUTH:
        shapes = []
        for i, (box, lab) in enumerate(t.boxes):
            kind = "rectangle"
            if t.rel == "b2/p05.jpg":
                kind = ("rectangle", "circle", "polygon")[i]
            elif t.rel == "b3/p10.jpg":
                kind = "polygon"
            shapes.append(labelme_shape(box, lab, kind))
        name = t.rel.rsplit("/", 1)[1]
        doc = {
            "version": "5.4.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": f"..\\{t.rel.split('/')[0]}\\{name}" if t.rel.endswith("p02.png") else name,
            "imageData": None,
            "imageHeight": t.size[1],
            "imageWidth": t.size[0],
        }
        (images / f"{stem(t.rel)}.json").write_text(json.dumps(doc, ensure_ascii=False, indent=2), "utf-8")
    return {"abnormal_dir": str(images), "annotation_format": "labelme"}


def write_voc(root: Path) -> dict[str, Any]:
    images, annotations = root / "JPEGImages", root / "Annotations"
    write_images(images)
    for t in TRUTH:
        objects = "".join(
            f"<object><name>{lab}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>\n"
            for (x1, y1, x2, y2), lab in t.boxes
        )
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>\n<annotation>\n<folder>JPEGImages</folder>\n'
            f"<filename>{t.rel.rsplit('/', 1)[1]}</filename>\n"
            f"<size><width>{t.size[0]}</width><height>{t.size[1]}</height><depth>3</depth></size>\n"
            f"<segmented>0</segmented>\n{objects}</annotation>\n"
        )
        path = annotations / f"{stem(t.rel)}.xml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml, encoding="utf-8")
    return {"abnormal_dir": str(images), "annotation_format": "voc", "annotations_dir": str(annotations)}


def yolo_line(box: Box, size: tuple[int, int], cls: int, seg: bool) -> str:
    (x1, y1, x2, y2), (w, h) = box, size
    if seg:  # a YOLO-seg polygon: the four corners
        pts = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
        return f"{cls} " + " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in pts)
    return f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"


def write_yolo(root: Path, names: str = "classes.txt") -> dict[str, Any]:
    images, labels = root / "images", root / "labels"
    write_images(images)
    order = ["渗漏", "crack", "3号划痕"]  # ids as the labelling tool numbered them
    for t in TRUTH:
        lines = [
            yolo_line(box, t.size, order.index(lab), seg=t.rel == "b2/p06.png" or i == 1)
            for i, (box, lab) in enumerate(t.boxes)
        ]
        path = labels / f"{stem(t.rel)}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    if names == "classes.txt":  # labelImg keeps it in the label folder: it is not an annotation
        names_path = labels / "classes.txt"
        names_path.write_text("\n".join(order) + "\n", encoding="utf-8")
    else:  # an Ultralytics dataset YAML, names as a mapping
        names_path = root / "data.yaml"
        doc = {"path": ".", "train": "images", "val": "images", "names": dict(enumerate(order))}
        names_path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return {
        "abnormal_dir": str(images),
        "annotation_format": "yolo",
        "annotations_dir": str(labels),
        "yolo_names": str(names_path),
    }


def coco_doc() -> dict[str, Any]:
    images, anns = [], []
    for i, t in enumerate(TRUTH):
        image_id = 100 + 3 * i
        images.append({"id": image_id, "file_name": t.rel, "width": t.size[0], "height": t.size[1]})
        for (x1, y1, x2, y2), lab in t.boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": COCO_CATS[lab],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "segmentation": [],
                    "iscrowd": 0,
                }
            )
    cats = [{"id": i, "name": n, "supercategory": "defect"} for n, i in sorted(COCO_CATS.items())]
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}


def write_coco(root: Path) -> dict[str, Any]:
    images = root / "images"
    write_images(images)
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(coco_doc(), ensure_ascii=False), encoding="utf-8")
    return {"abnormal_dir": str(images), "annotation_format": "coco", "coco_json": str(path)}


WRITERS = {
    "txt": write_txt,
    "labelme": write_labelme,
    "voc": write_voc,
    "yolo": write_yolo,
    "yolo_yaml": lambda root: write_yolo(root, names="data.yaml"),
    "coco": write_coco,
}


def run(tmp_path: Path, keys: dict[str, Any], **more: Any) -> PrepareResult:
    cfg = {
        "normal_dir": None,
        "out_dir": str(tmp_path / "out"),
        "dataset_info_dir": str(tmp_path / "dinfo"),
        "min_box_size": 4,
        **keys,
        **more,
    }
    return prepare(cfg, progress=False)


def kept(result: PrepareResult) -> tuple[dict[str, list[tuple[tuple[float, ...], str]]], set[str]]:
    """(image -> its positive boxes with labels, the images given as normal samples), from the samples."""
    pos: dict[str, list[tuple[tuple[float, ...], str]]] = {}
    normal: set[str] = set()
    for samples in result.samples.values():
        for s in samples:
            rel = s["sample_id"].rsplit("#", 1)[0].removeprefix("abnormal/")
            if s["source"] == "normal":
                normal.add(rel)
                continue
            pos.setdefault(rel, [])
            pos[rel] += [(tuple(r["box"]), r["label"]) for r in s["regions"] if r["positive"]]
    return pos, normal


def assert_boxes_equal(got: list, want: list, tol: float) -> None:
    assert len(got) == len(want), (got, want)
    left = list(want)
    for box, lab in got:
        match = next(
            (
                w
                for w in left
                if w[1] == lab and all(abs(a - b) <= tol for a, b in zip(box, w[0], strict=True))
            ),
            None,
        )
        assert match is not None, f"{box} {lab} not in {left}"
        left.remove(match)


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_one_truth_every_format(tmp_path: Path, fmt: str) -> None:
    keys = WRITERS[fmt](tmp_path / "data")
    result = run(tmp_path, keys)
    pos, normal = kept(result)
    tol = 0.01 if fmt.startswith("yolo") else 0.0  # 6 decimals of a fraction
    for t in TRUTH:
        if t.boxes:
            assert_boxes_equal(pos.get(t.rel, []), t.boxes, tol)
    n_boxes = sum(len(t.boxes) for t in TRUTH)
    boxes = result.report["boxes"]
    assert boxes["read"] == boxes["kept"] + boxes["clipped"] + boxes["dropped"] == n_boxes
    assert boxes["dropped"] == 0
    problems = result.report["problems"]
    if fmt == "txt":  # the seed's txt has no normal image: an empty txt is reported, the image left out
        assert normal == set()
        assert sorted((p["file"].rsplit("/", 2)[-2:], p["kind"]) for p in problems) == [
            (["b1", "p04.jpg"], "no_usable_box"),
            (["b3", "p11.jpg"], "no_usable_box"),
        ]
    else:
        assert normal == NORMAL and problems == []
        inputs = result.report["inputs"]
        assert inputs["normal_images_from_abnormal_dir"] == len(NORMAL)
        assert inputs["normal_images_used"] == len(NORMAL)
        assert inputs["annotation_format"] == fmt.removesuffix("_yaml")
    # the EXIF-rotated JPEG: the trainer gets its upright copy, in the frame its boxes are in
    (p03,) = [s for sp in result.samples.values() for s in sp if s["sample_id"].endswith("b1/p03.jpg#0")]
    assert (p03["width"], p03["height"]) == (200, 300) and p03["image"].startswith("image_cache/abnormal/")


@pytest.mark.parametrize("fmt", ["labelme", "voc", "yolo", "coco"])
def test_scan_labels_every_format(tmp_path: Path, fmt: str) -> None:
    keys = WRITERS[fmt](tmp_path / "data")
    flags = {k: v for k, v in keys.items() if k != "abnormal_dir"}
    got = scan_labels(config=settings_from_flags(keys["abnormal_dir"], **flags))
    want = Counter(lab for t in TRUTH for _, lab in t.boxes)
    assert {r["label"]: r["boxes"] for r in got["labels"]} == dict(want)
    assert got["annotation_format"] == fmt and got["problems"] == []
    images = Counter(lab for t in TRUTH for lab in {lab for _, lab in t.boxes})
    assert {r["label"]: r["images"] for r in got["labels"]} == dict(images)


def test_scan_labels_cli_flags(tmp_path: Path) -> None:
    import subprocess
    import sys

    keys = write_yolo(tmp_path / "data")
    cmd = [sys.executable, "-m", "qwenvl_roi.cli", "scan-labels", "--abnormal-dir", keys["abnormal_dir"]]
    cmd += ["--annotation-format", "yolo", "--annotations-dir", keys["annotations_dir"]]
    proc = subprocess.run([*cmd, "--yolo-names", keys["yolo_names"]], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {r["label"] for r in json.loads(proc.stdout)["labels"]} == set(LABELS)
    proc = subprocess.run(cmd, capture_output=True, text=True)  # yolo without its names
    assert proc.returncode == 2 and "--yolo-names" in proc.stderr and "needs" in proc.stderr
    cfg = tmp_path / "d.yaml"
    cfg.write_text(yaml.safe_dump({**keys, "normal_dir": None}, allow_unicode=True), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "scan-labels", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["boxes"] == sum(len(t.boxes) for t in TRUTH)


# --- broken entries: reported where they are, the rest of the image kept, the ledger adds up ----------------


def problems_at(result: PrepareResult) -> list[tuple[str, Any, str]]:
    return sorted(
        ((p["file"].rsplit("/", 1)[-1], p["line"], p["kind"]) for p in result.report["problems"]), key=str
    )


def test_labelme_mask_and_oriented_rectangle_as_labelme_draws_them(tmp_path: Path) -> None:
    """A ``mask`` shape is a base64 PNG crop pasted at its first point (labelme's shapes_to_label:
    ``mask[y1 : y2 + 1, x1 : x2 + 1] = shape["mask"]``): its box is the extent of the pixels the crop marks
    (an empty border of the crop is not part of the defect), held here to that paste and np.argwhere.
    Mask data that is not a base64 image is reported at its shape. labelme 6's ``oriented_rectangle``
    (four corners) is the extent of its corners."""
    import base64
    import io

    keys = write_labelme(tmp_path / "data")
    p01 = Path(keys["abnormal_dir"]) / "b1" / "p01.json"
    doc = json.loads(p01.read_text("utf-8"))
    (crack, scratch) = TRUTH[0].boxes
    x1, y1, x2, y2 = crack[0]
    ox, oy = x1 - 2, y1 - 3  # the crop starts 2 and 3 pixels before the defect and ends a row after it
    crop = np.zeros((y2 - oy + 1, x2 - ox), bool)
    crop[y1 - oy : y2 - oy, x1 - ox : x2 - ox] = True
    png = io.BytesIO()
    Image.fromarray(crop).save(png, format="PNG")
    corners = [[ox, oy], [ox + crop.shape[1] - 1, oy + crop.shape[0] - 1]]  # as labelme writes them
    painted = np.zeros((TRUTH[0].size[1], TRUTH[0].size[0]), bool)
    (a, b), (c, d) = corners
    painted[b : d + 1, a : c + 1] = crop  # labelme's shapes_to_label
    (ty1, tx1), (ty2, tx2) = np.argwhere(painted).min(0), np.argwhere(painted).max(0) + 1
    assert (tx1, ty1, tx2, ty2) == crack[0]
    sx1, sy1, sx2, sy2 = scratch[0]
    turned = [[sx1, (sy1 + sy2) / 2], [(sx1 + sx2) / 2, sy1], [sx2, (sy1 + sy2) / 2], [(sx1 + sx2) / 2, sy2]]
    data = base64.b64encode(png.getvalue()).decode()
    doc["shapes"] = [
        {"label": crack[1], "points": corners, "shape_type": "mask", "mask": data, "flags": {}},
        {"label": scratch[1], "points": turned, "shape_type": "oriented_rectangle", "flags": {}},
        {"label": "crack", "points": corners, "shape_type": "mask", "mask": "not an image", "flags": {}},
    ]
    p01.write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    result = run(tmp_path, keys)
    assert [p for p in problems_at(result) if p[0].startswith("p01")] == [
        ("p01.json", "shapes[2]", "non_numeric")
    ]
    pos, _ = kept(result)
    assert_boxes_equal(pos["b1/p01.jpg"], TRUTH[0].boxes, 0)


def test_labelme_broken_entries(tmp_path: Path) -> None:
    keys = write_labelme(tmp_path / "data")
    images = Path(keys["abnormal_dir"])
    p01 = images / "b1" / "p01.json"
    doc = json.loads(p01.read_text("utf-8"))
    doc["shapes"] += [
        {"label": "crack", "points": [[5, 5]], "shape_type": "point"},
        {"label": "crack", "points": [[5, 5], [50, 50], [60, 5]], "shape_type": "linestrip"},
        {"label": "crack", "points": [[5, "x"], [50, 50]], "shape_type": "rectangle"},
        {
            "label": "",
            "points": [[200, 10], [260, 60]],
            "shape_type": "rectangle",
        },  # no label: marks a defect
    ]
    p01.write_text(json.dumps(doc), "utf-8")
    (images / "b1" / "p02.json").write_text('{"shapes": [\n  {"label": "crack",\n  }', "utf-8")  # cut short
    p08 = images / "b2" / "p08.json"
    doc = json.loads(p08.read_text("utf-8"))
    doc["shapes"] = [{"label": "crack", "points": [[5, 5], [50, 50]], "shape_type": "line"}]  # nothing usable
    p08.write_text(json.dumps(doc), "utf-8")
    p09 = images / "b3" / "p09.json"
    doc = json.loads(p09.read_text("utf-8"))
    doc["imageHeight"] = 999  # drawn on another picture
    p09.write_text(json.dumps(doc), "utf-8")
    p12 = images / "b3" / "p12.json"
    doc = json.loads(p12.read_text("utf-8"))
    doc["imagePath"] = "other.jpg"
    p12.write_text(json.dumps(doc), "utf-8")
    (images / "b3" / "lost.json").write_text(
        json.dumps({"shapes": [labelme_shape((1, 1, 9, 9), "x", "rectangle")]})
    )
    result = run(tmp_path, keys)
    assert problems_at(result) == sorted(
        [
            ("lost.json", None, "annotation_without_image"),
            ("p01.json", "shapes[2]", "unsupported_shape"),
            ("p01.json", "shapes[3]", "unsupported_shape"),
            ("p01.json", "shapes[4]", "non_numeric"),
            ("p01.json", "shapes[5]", "empty_label"),
            ("p02.json", 3, "unreadable_annotation"),
            ("p02.png", None, "no_usable_box"),
            ("p08.json", "shapes[0]", "unsupported_shape"),
            ("p08.jpg", None, "no_usable_box"),
            ("p09.json", "imageWidth", "size_mismatch"),
            ("p12.json", "imagePath", "filename_mismatch"),
            ("p12.jpg", None, "no_usable_box"),
        ],
        key=str,
    )
    pos, normal = kept(result)
    assert_boxes_equal(pos["b1/p01.jpg"], TRUTH[0].boxes, 0)  # its other boxes kept
    assert not {"b1/p02.png", "b2/p08.jpg", "b3/p09.jpg", "b3/p12.jpg"} & (set(pos) | normal)  # never normal
    boxes = result.report["boxes"]
    n = sum(len(t.boxes) for t in TRUTH)
    # read: the truth less p02's (unreadable) and p08's (replaced by a line), plus p01's unlabelled box and
    # lost.json's box
    assert boxes["read"] == n - 2 + 2 == boxes["kept"] + boxes["clipped"] + boxes["dropped"]
    assert boxes["dropped_by_reason"] == {
        "annotation_without_image": 1,
        "empty_label": 1,
        "filename_mismatch": 1,
        "size_mismatch": 2,
    }
    # the unlabelled box still marks its defect: no negative of p01 covers it
    p01_regions = [
        r for sp in result.samples.values() for s in sp if "p01.jpg" in s["sample_id"] for r in s["regions"]
    ]
    for r in p01_regions:
        x1, y1, x2, y2 = r["box"]
        inter = max(0, min(x2, 260) - max(x1, 200)) * max(0, min(y2, 60) - max(y1, 10))
        assert inter <= 0.1 * 60 * 50


def test_voc_broken_entries_and_entity_bomb(tmp_path: Path) -> None:
    keys = write_voc(tmp_path / "data")
    ann = Path(keys["annotations_dir"])
    p01 = ann / "b1" / "p01.xml"
    text = p01.read_text("utf-8").replace(
        "</annotation>",
        "<object><name>crack</name>\n<bndbox><xmin>a</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
        "</object>\n<object><name>crack</name></object>\n</annotation>",
    )
    p01.write_text(text, "utf-8")
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n'
        "<annotation><object><name>&lol2;</name></object></annotation>\n"
    )
    (ann / "b1" / "p02.xml").write_text(bomb, "utf-8")
    (ann / "b2" / "p06.xml").write_text("<annotation>\n<object>\n</annotation>\n", "utf-8")
    gbk = '<?xml version="1.0" encoding="GBK"?>\n<annotation><object><name>渗漏</name><bndbox>'
    gbk += "<xmin>41</xmin><ymin>41</ymin><xmax>90</xmax><ymax>200</ymax></bndbox></object></annotation>\n"
    (ann / "b2" / "p08.xml").write_bytes(gbk.encode("gbk"))
    result = run(tmp_path, keys)
    lines = {line: i + 1 for i, line in enumerate(text.splitlines())}
    bad_box = next(n for line, n in lines.items() if "<xmin>a</xmin>" in line)
    assert problems_at(result) == sorted(
        [
            ("p01.xml", bad_box, "non_numeric"),
            ("p01.xml", bad_box + 1, "no_coords"),
            ("p02.xml", None, "unreadable_annotation"),
            ("p02.png", None, "no_usable_box"),
            ("p06.xml", 3, "unreadable_annotation"),
            ("p06.png", None, "no_usable_box"),
        ],
        key=str,
    )
    assert "entit" in next(p["reason"] for p in result.report["problems"] if p["file"].endswith("p02.xml"))
    pos, _ = kept(result)
    assert_boxes_equal(pos["b1/p01.jpg"], TRUTH[0].boxes, 0)
    assert_boxes_equal(pos["b2/p08.jpg"], TRUTH[7].boxes, 0)  # GBK, as declared
    assert result.report["inputs"]["annotation_encodings"]["gbk"] == 1


def test_yolo_broken_lines_and_detector_confidence(tmp_path: Path) -> None:
    keys = write_yolo(tmp_path / "data")
    labels = Path(keys["annotations_dir"])
    p01 = labels / "b1" / "p01.txt"
    p01.write_text(
        p01.read_text("utf-8")
        + "7 0.5 0.5 0.2 0.2\n0 0.5 0.5\n0 a 0.5 0.2 0.2\n\n1 0.5 0.5 0.25 0.25 0.87\n",
        "utf-8",
    )
    (labels / "b3" / "p12.txt").write_text("9 0.5 0.5 0.4 0.4\n", "utf-8")  # only an unknown class
    (labels / "b3" / "p11.txt").unlink()  # missing: not background, reported
    result = run(tmp_path, keys)
    assert problems_at(result) == sorted(
        [
            ("p01.txt", 3, "unknown_class"),
            ("p01.txt", 4, "coord_count"),
            ("p01.txt", 5, "non_numeric"),
            ("p11.jpg", None, "image_without_annotation"),
            ("p12.txt", 1, "unknown_class"),
            ("p12.jpg", None, "no_usable_box"),
        ],
        key=str,
    )
    pos, normal = kept(result)
    # the detector line (with its confidence) is a crack box of 80x60 in the middle of the 320x240 image
    assert_boxes_equal(pos["b1/p01.jpg"], [*TRUTH[0].boxes, ((120, 90, 200, 150), "crack")], 0.01)
    assert normal == {"b1/p04.jpg"}
    boxes = result.report["boxes"]
    n = sum(len(t.boxes) for t in TRUTH) - len(TRUTH[11].boxes)
    assert boxes["read"] == n + 1 + 2 == boxes["kept"] + boxes["clipped"] + boxes["dropped"]
    assert boxes["dropped_by_reason"] == {"unknown_class": 2}


def test_yolo_six_decimals_give_the_drawn_pixels(tmp_path: Path) -> None:
    """labelImg / CVAT write 6 decimals: a box drawn to the right edge of a 64-pixel image reads back as
    64.000032. It is the drawn box (kept as is, integer pixels), not a box the checks clip (box_fixed, which
    strict mode refuses). A box really past the edge is still clipped."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(images / "a.jpg")
    truth = [(51, 5, 64, 12), (0, 53, 9, 63), (20, 20, 33, 41)]
    lines = [yolo_line(b, (64, 64), 0, seg=False) for b in truth]
    lines.append(f"0 {60 / 64:.6f} 0.5 {10 / 64:.6f} 0.25")  # 55..65: one pixel past the edge
    labels.mkdir()
    (labels / "a.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "classes.txt").write_text("crack\n", encoding="utf-8")
    keys = {"abnormal_dir": str(images), "annotation_format": "yolo", "annotations_dir": str(labels)}
    result = run(tmp_path, keys, yolo_names=str(tmp_path / "classes.txt"), min_box_size=1)
    boxes = result.report["boxes"]
    assert (boxes["read"], boxes["kept"], boxes["clipped"]) == (4, 3, 1)
    assert [(p["line"], p["kind"]) for p in result.report["problems"]] == [(4, "box_fixed")]
    positives = {
        tuple(r["box"]) for s in result.samples["train"] + result.samples["val"] + result.samples["test"]
        for r in s["regions"] if r["positive"]
    }  # fmt: skip
    assert positives == {*truth, (55, 24, 64, 40)}
    assert all(type(v) is int for box in positives for v in box)


def test_yolo_names_problems(tmp_path: Path) -> None:
    keys = write_yolo(tmp_path / "data")
    names = Path(keys["yolo_names"])
    names.write_text("", "utf-8")
    with pytest.raises(ConvertError, match="no class names"):
        run(tmp_path, keys)
    with pytest.raises(ConvertError, match="cannot read"):
        run(tmp_path, {**keys, "yolo_names": str(names.with_name("nope.yaml"))})
    bad = names.with_name("d.yaml")
    bad.write_text("names: {a: crack}\n", "utf-8")
    with pytest.raises(ConvertError, match="not a class id"):
        run(tmp_path, {**keys, "yolo_names": str(bad)})
    bad.write_text("names: [no, 3号划痕, '1']\n", "utf-8")  # YAML's "no" stays the text written
    from qwenvl_roi.converters.sources.yolo import load_names

    assert load_names(bad) == {0: "no", 1: "3号划痕", 2: "1"}


def test_yolo_class_list_beside_the_labels_with_a_dataset_yaml(tmp_path: Path) -> None:
    """labelImg keeps classes.txt in the label folder, also when yolo_names names the dataset YAML: it is
    not an annotation (before: `annotation_without_image`, and --strict failed on a clean set). A class list
    that names other classes than yolo_names is reported: one of them is wrong, and the ids are read by
    yolo_names. A classes.txt that an image `classes.<ext>` pairs with is that image's annotation."""
    keys = write_yolo(tmp_path / "data", names="data.yaml")
    labels, images = Path(keys["annotations_dir"]), Path(keys["abnormal_dir"])
    order = ["渗漏", "crack", "3号划痕"]  # write_yolo's ids
    (labels / "classes.txt").write_text("\n".join(order) + "\n", encoding="utf-8")
    (labels / "b2" / "classes.txt").write_text("\r\n".join(order) + "\r\n", encoding="utf-8")
    clean = run(tmp_path / "clean", keys)
    assert clean.report["problems"] == []
    pos, _ = kept(clean)
    for t in TRUTH:
        if t.boxes:
            assert_boxes_equal(pos[t.rel], t.boxes, 0.01)
    run(tmp_path / "strict", keys, strict=True)  # a clean set passes --strict
    swapped = labels / "b3" / "classes.txt"
    swapped.write_text("crack\n渗漏\n3号划痕\n", encoding="utf-8")
    result = run(tmp_path / "swapped", keys)
    (problem,) = result.report["problems"]
    assert (problem["file"], problem["kind"]) == (swapped.as_posix(), "class_list_differs")
    assert "['crack', '渗漏', '3号划痕']" in problem["reason"] and "data.yaml" in problem["reason"]
    assert kept(result)[0] == pos  # the ids are still read by yolo_names
    scan = scan_labels(
        config=settings_from_flags(
            keys["abnormal_dir"], **{k: v for k, v in keys.items() if k != "abnormal_dir"}
        )
    )
    assert [p["kind"] for p in scan["problems"]] == ["class_list_differs"]
    swapped.unlink()
    shutil.copy(images / "b1" / "p01.jpg", images / "b3" / "classes.jpg")  # an image of that name
    (labels / "b3" / "classes.txt").write_text(yolo_line((10, 20, 110, 90), (320, 240), 1, False) + "\n")
    paired = run(tmp_path / "paired", keys)
    assert paired.report["problems"] == []
    assert_boxes_equal(kept(paired)[0]["b3/classes.jpg"], [((10, 20, 110, 90), "crack")], 0.01)


def test_coco_broken_entries_against_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from qwenvl_roi.converters.sources.coco import load_coco

    keys = write_coco(tmp_path / "data")
    path = Path(keys["coco_json"])
    doc = json.loads(path.read_text("utf-8"))
    (p12,) = [im["id"] for im in doc["images"] if im["file_name"] == "b3/p12.jpg"]
    doc["images"] = [im for im in doc["images"] if im["id"] != p12]  # on disk, not listed
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != p12]
    bbox = [10, 10, 40, 40]
    doc["annotations"] += [
        {"id": 900, "image_id": 999, "category_id": 7, "bbox": bbox, "iscrowd": 0},  # dangling image_id
        {
            "id": 901,
            "image_id": 100,
            "category_id": 5,
            "bbox": [200, 30, 50, 50],
            "iscrowd": 0,
        },  # unknown category
        {"id": 902, "image_id": 100, "category_id": 7, "bbox": [1, 2, "x", 4], "iscrowd": 0},
        {"id": 903, "image_id": 500, "category_id": 3, "bbox": bbox, "iscrowd": 0},
    ]
    doc["images"].append({"id": 500, "file_name": "b9/gone.jpg", "width": 100, "height": 100})
    path.write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    n_ann = len(doc["annotations"])

    # our reading of every image's annotations equals pycocotools' (known categories), by image id
    ref = COCO(str(path))
    ours = load_coco(path)
    names = {c["id"]: c["name"] for c in ref.loadCats(ref.getCatIds())}
    for image_id, im in ours.images.items():
        want = []
        for a in ref.loadAnns(ref.getAnnIds(imgIds=[image_id])):
            x, y, w, h = a["bbox"]
            if isinstance(w, int | float) and a["category_id"] in names:
                want.append(((x, y, x + w, y + h), names[a["category_id"]]))
        got = [(b.coords, b.label) for b in im.read.boxes]
        assert sorted(got, key=str) == sorted(want, key=str), image_id
    assert set(ours.images) == set(ref.getImgIds())

    result = run(tmp_path, keys)
    # annotations after the truth's are 900..903 at these indexes
    k = n_ann - 4
    assert problems_at(result) == sorted(
        [
            ("instances_default.json", f"annotations[{k}]", "dangling_image_id"),
            ("instances_default.json", f"annotations[{k + 1}]", "unknown_category"),
            ("instances_default.json", f"annotations[{k + 2}]", "non_numeric"),
            ("instances_default.json", f"images[{len(doc['images']) - 1}]", "image_missing"),
            ("p12.jpg", None, "image_without_annotation"),
        ],
        key=str,
    )
    pos, normal = kept(result)
    assert_boxes_equal(pos["b1/p01.jpg"], TRUTH[0].boxes, 0)
    assert normal == NORMAL
    boxes = result.report["boxes"]
    n = sum(len(t.boxes) for t in TRUTH)  # p12's box is read from the file but its image is not listed
    assert (
        boxes["read"] == n - len(TRUTH[11].boxes) + 3 == boxes["kept"] + boxes["clipped"] + boxes["dropped"]
    )
    assert boxes["dropped_by_reason"] == {"dangling_image_id": 1, "image_missing": 1, "unknown_category": 1}


def test_coco_names_by_letter_case_only_one_file(tmp_path: Path) -> None:
    """A file_name matches a file by letter case only when it names no file exactly and only that file so:
    an entry that two files match only by case is reported for both, its boxes dropped once (counted once);
    a file beside an exactly named one is not annotated by that entry."""
    keys = write_coco(tmp_path / "data")
    images = Path(keys["abnormal_dir"])
    doc = json.loads(Path(keys["coco_json"]).read_text("utf-8"))
    (p03,) = [im for im in doc["images"] if im["file_name"] == "b1/p03.jpg"]
    p03["file_name"] = "b1/P03.JPG"  # names b1/p03.jpg and b1/P03.jpg, each only by letter case
    Path(keys["coco_json"]).write_text(json.dumps(doc), "utf-8")
    shutil.copy(images / "b1" / "p03.jpg", images / "b1" / "P03.jpg")
    shutil.copy(images / "b1" / "p01.jpg", images / "b1" / "P01.jpg")  # p01.jpg is named exactly
    result = run(tmp_path, keys)
    assert [p for p in problems_at(result) if p[0].lower() in ("p01.jpg", "p03.jpg")] == [
        ("P01.jpg", None, "image_without_annotation"),
        ("P03.jpg", None, "ambiguous_annotation"),
        ("p03.jpg", None, "ambiguous_annotation"),
    ]
    pos, _ = kept(result)
    assert "b1/p03.jpg" not in pos and "b1/P03.jpg" not in pos and "b1/P01.jpg" not in pos
    assert_boxes_equal(pos["b1/p01.jpg"], TRUTH[0].boxes, 0)
    boxes = result.report["boxes"]
    assert boxes["read"] == sum(len(t.boxes) for t in TRUTH)  # p03's boxes counted once
    assert boxes["dropped_by_reason"] == {"ambiguous_annotation": len(TRUTH[2].boxes)}
    # an entry naming by case only a file another entry names exactly: the file is there, the entry is a
    # second annotation of it (not a missing image); one naming by case a file beside an exactly named
    # one names two files: that file is reported. Both entries' boxes dropped, the named files kept.
    size = {"width": 320, "height": 240}
    doc["images"] += [
        {"id": 998, "file_name": "B1/P04.JPG", **size},
        {"id": 999, "file_name": "B1/P01.JPG", **size},
    ]
    doc["annotations"] += [
        {"id": 998, "image_id": 998, "category_id": 1, "bbox": [1, 1, 20, 20]},
        {"id": 999, "image_id": 999, "category_id": 1, "bbox": [1, 1, 20, 20]},
    ]
    Path(keys["coco_json"]).write_text(json.dumps(doc), "utf-8")
    again = run(tmp_path, keys)
    n = len(doc["images"])
    (p04,) = [p for p in again.report["problems"] if p["line"] == f"images[{n - 2}]"]
    assert p04["kind"] == "ambiguous_annotation"
    assert "names 'b1/p04.jpg' only by letter case" in p04["reason"]
    (p01,) = [p for p in again.report["problems"] if p["file"].endswith("b1/P01.jpg")]
    assert p01["kind"] == "ambiguous_annotation" and "and also b1/p01.jpg" in p01["reason"]
    pos, normal = kept(again)
    assert_boxes_equal(pos["b1/p01.jpg"], TRUTH[0].boxes, 0)
    assert "b1/p04.jpg" in normal and "b1/P01.jpg" not in pos
    assert again.report["boxes"]["dropped_by_reason"]["ambiguous_annotation"] == len(TRUTH[2].boxes) + 2


def test_coco_id_given_to_two_images_attributes_nothing(tmp_path: Path) -> None:
    """Two CVAT tasks, both numbered from 1, joined into one file: images[i] of the second task reuses the
    id of one of the first. Its annotations cannot say which picture they mark (pycocotools gives them all
    to the last entry), so none of them is used: each box counted as dropped, both images skipped and
    reported, never a normal image; the other images keep their own boxes. (Before, the first entry got the
    second picture's boxes as kept positives, and the second image was reported as not listed.)"""
    from pycocotools.coco import COCO

    keys = write_coco(tmp_path / "data")
    path = Path(keys["coco_json"])
    doc = json.loads(path.read_text("utf-8"))
    by_rel = {im["file_name"]: im["id"] for im in doc["images"]}
    p01, p06 = by_rel["b1/p01.jpg"], by_rel["b2/p06.png"]
    for im in doc["images"]:
        if im["id"] == p06:
            im["id"] = p01  # the second task's numbering: p06 now shares p01's id
    for a in doc["annotations"]:
        if a["image_id"] == p06:
            a["image_id"] = p01
    path.write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    ref = COCO(str(path))  # the reference: what that id's annotations are, whoever they belong to
    shared = [
        ((a["bbox"][0], a["bbox"][1]), a["category_id"]) for a in ref.loadAnns(ref.getAnnIds(imgIds=[p01]))
    ]
    assert len(shared) == len(TRUTH[0].boxes) + len(TRUTH[5].boxes)

    result = run(tmp_path, keys)
    index = {im["file_name"]: i for i, im in enumerate(doc["images"])}
    assert problems_at(result) == sorted(
        [
            ("instances_default.json", f"images[{index['b2/p06.png']}]", "ambiguous_image_id"),
            ("p01.jpg", None, "ambiguous_image_id"),
            ("p06.png", None, "ambiguous_image_id"),
        ],
        key=str,
    )
    pos, normal = kept(result)
    assert "b1/p01.jpg" not in pos and "b2/p06.png" not in pos
    assert normal == NORMAL
    for t in TRUTH:
        if t.rel not in ("b1/p01.jpg", "b2/p06.png") and t.boxes:
            assert_boxes_equal(pos[t.rel], t.boxes, 0)
    boxes = result.report["boxes"]
    assert boxes["read"] == sum(len(t.boxes) for t in TRUTH)  # every box counted once
    assert boxes["dropped_by_reason"] == {"ambiguous_image_id": len(shared)}
    assert boxes["read"] == boxes["kept"] + boxes["clipped"] + boxes["dropped"]
    # scan-labels counts what convert uses: not the boxes of the shared id
    flags = {k: v for k, v in keys.items() if k != "abnormal_dir"}
    scan = scan_labels(config=settings_from_flags(keys["abnormal_dir"], **flags))
    want = Counter(lab for t in TRUTH if t.rel not in ("b1/p01.jpg", "b2/p06.png") for _, lab in t.boxes)
    assert {r["label"]: r["boxes"] for r in scan["labels"]} == dict(want)
    assert "ambiguous_image_id" in {p["kind"] for p in scan["problems"]}
    # the same entry given twice (a file joined with itself) is one picture, not two: it keeps its boxes
    doc = json.loads(path.read_text("utf-8"))
    for im in doc["images"]:
        if im["file_name"] == "b2/p06.png":
            im["id"] = p06
    for a in doc["annotations"]:
        if a["bbox"][:2] in ([x1, y1] for (x1, y1, _, _), _ in TRUTH[5].boxes):
            a["image_id"] = p06
    doc["images"].append(dict(doc["images"][0]))  # images[0] again: same id, same file_name
    path.write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    twice = run(tmp_path / "twice", keys)
    assert [(p["line"], p["kind"]) for p in twice.report["problems"]] == [
        (f"images[{len(doc['images']) - 1}]", "bad_entry")
    ]
    assert_boxes_equal(kept(twice)[0]["b1/p01.jpg"], TRUTH[0].boxes, 0)


def test_coco_unreadable_file_stops(tmp_path: Path) -> None:
    keys = write_coco(tmp_path / "data")
    Path(keys["coco_json"]).write_text('{"images": [\n', "utf-8")
    with pytest.raises(ConvertError, match=r"instances_default.json:2: invalid JSON"):
        run(tmp_path, keys)


@pytest.mark.parametrize("body", ['{"imageHeight": 1' + "0" * 5000 + "}", "[" * 100_000 + "]" * 100_000])
def test_json_python_refuses_is_reported_not_a_traceback(tmp_path: Path, body: str) -> None:
    """JSON that json.loads refuses with ValueError or RecursionError (an integer of more than 4,300
    digits, nesting 100,000 deep) is a problem of that file, as invalid JSON is: a labelme file is reported
    and its image left out, a coco_json stops the command with one line."""
    keys = write_labelme(tmp_path / "data")
    (Path(keys["abnormal_dir"]) / "b1" / "p02.json").write_text(body, "utf-8")
    result = run(tmp_path, keys)
    assert [p for p in problems_at(result) if p[0].startswith("p02")] == [
        ("p02.json", None, "unreadable_annotation"),
        ("p02.png", None, "no_usable_box"),
    ]
    coco = write_coco(tmp_path / "coco")
    Path(coco["coco_json"]).write_text(body, "utf-8")
    with pytest.raises(
        ConvertError, match=r"instances_default.json: invalid JSON \((ValueError|RecursionError)"
    ):
        run(tmp_path / "coco", coco)
    from qwenvl_roi.converters.build_sft import read_dataset_info

    info = tmp_path / "dataset_info.json"  # a dataset_info.json is never overwritten then
    info.write_text(body, "utf-8")
    with pytest.raises(ConvertError, match="invalid JSON .*not overwriting it"):
        read_dataset_info(info)


# --- frames ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_to_displayed_matches_pil(orientation: int) -> None:
    """A box drawn on the stored pixels lands where PIL's exif_transpose puts those pixels."""
    from qwenvl_roi.converters.sources.frame import stored_to_displayed

    stored = Image.new("L", (60, 40), 0)
    ImageDraw.Draw(stored).rectangle((5, 8, 19, 29), fill=255)  # pixels 5..19 x 8..29: box [5, 8, 20, 30]
    stored.getexif()[0x0112] = orientation
    shown = ImageOps.exif_transpose(stored)
    assert shown.getbbox() == tuple(map(int, stored_to_displayed((5, 8, 20, 30), orientation, 60, 40)))


def test_labelme_in_stored_frame_is_turned(tmp_path: Path) -> None:
    """A tool that ignored EXIF states the stored size: its boxes are turned upright (and reported)."""
    keys = write_labelme(tmp_path / "data")
    p03 = Path(keys["abnormal_dir"]) / "b1" / "p03.json"
    doc = json.loads(p03.read_text("utf-8"))
    doc["imageWidth"], doc["imageHeight"] = 300, 200  # the stored size; Orientation=6 turns it clockwise
    # the truth's crack (20, 40, 150, 260) shown, drawn on the stored pixels: x = y_shown, y = 200 - x_shown
    doc["shapes"] = [{"label": "crack", "points": [[40, 50], [260, 180]], "shape_type": "rectangle"}]
    p03.write_text(json.dumps(doc), "utf-8")
    result = run(tmp_path, keys)
    pos, _ = kept(result)
    assert pos["b1/p03.jpg"] == [((20, 40, 150, 260), "crack")]
    assert problems_at(result) == [("p03.json", "imageWidth", "size_stored_frame")]


# --- config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"annotation_format": "yolo"},
            r"data.yaml:2: yolo_names: .*annotation_format: yolo needs yolo_names",
        ),
        ({"annotation_format": "coco"}, r"data.yaml:2: coco_json: .*needs coco_json"),
        (
            {"annotation_format": "labelme", "yolo_names": "c.txt"},
            r"data.yaml:3: yolo_names: .*only with .*yolo",
        ),
        (
            {"annotation_format": "coco", "coco_json": "c.json", "annotations_dir": "a"},
            r"annotations_dir: .*only",
        ),
        (
            {"annotation_format": "xml"},
            r"data.yaml:2: annotation_format: .*one of txt, labelme, voc, yolo, coco",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, keys: dict[str, str], message: str) -> None:
    path = tmp_path / "data.yaml"
    path.write_text("seed: 1\n" + "".join(f"{k}: {v}\n" for k, v in keys.items()), encoding="utf-8")
    with pytest.raises(ConvertError, match=message):
        load_data_config(path)


@pytest.mark.parametrize("fmt", ["labelme", "voc", "yolo", "coco"])
def test_shipped_configs(fmt: str) -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_data_config(root / "configs" / f"data.{fmt}.yaml")
    assert cfg.annotation_format == fmt


# --- the interface: a layout a colleague adds (forced splits, normal images) ------------------------------


def test_a_new_source_with_forced_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source is one class: here a layout that names normal images and forces splits, as MVTec's would."""
    from qwenvl_roi.converters import sources
    from qwenvl_roi.converters.parse import RawBox
    from qwenvl_roi.converters.sources import Read, Record, Source

    class Folders(Source):
        format = "folders"

        def records(self, images: list[str], beside: list[str]):  # type: ignore[no-untyped-def]
            for rel in images:
                folder, name = rel.split("/")
                if folder == "good":
                    yield Record(rel, Read(), normal=True, split="train")
                else:
                    split = "test" if name.startswith("t") else "val"
                    yield Record(rel, Read(boxes=[RawBox(1, (10, 10, 60, 60), folder)]), split=split)

        def scan(self, problems):  # type: ignore[no-untyped-def]
            return iter(())

    monkeypatch.setitem(sources.SOURCES, "folders", Folders)
    root = tmp_path / "data"
    for rel in ("good/a.png", "good/b.png", "crack/t1.png", "crack/v1.png", "hole/t2.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (100, 100)).save(root / rel)
    result = run(tmp_path, {"abnormal_dir": str(root), "annotation_format": "folders"})
    splits = {
        s["sample_id"].split("#")[0]: (sp, s["source"]) for sp, ss in result.samples.items() for s in ss
    }
    assert splits == {
        "abnormal/good/a.png": ("train", "normal"),
        "abnormal/good/b.png": ("train", "normal"),
        "abnormal/crack/t1.png": ("test", "abnormal"),  # crack/ holds test and val images: all of it to test
        "abnormal/crack/v1.png": ("test", "abnormal"),
        "abnormal/hole/t2.png": ("test", "abnormal"),
    }
    (p,) = result.report["problems"]
    assert p["kind"] == "forced_split_conflict" and "'crack'" in p["reason"]


def test_normal_names_never_collide(tmp_path: Path) -> None:
    """A normal image of the images folder and one of normal_dir at the same path stay two samples."""
    keys = write_labelme(tmp_path / "data")
    nor = tmp_path / "nor" / "b1"
    nor.mkdir(parents=True)
    Image.new("RGB", (320, 240)).save(nor / "p04.jpg")
    result = run(tmp_path, keys, normal_dir=str(tmp_path / "nor"))
    ids = [s["sample_id"] for ss in result.samples.values() for s in ss]
    assert len(ids) == len(set(ids))
    assert {"abnormal/b1/p04.jpg#0", "normal/b1/p04.jpg#0"} <= set(ids)
    # the same folder of both roots is one group, so one split
    by_id = {s["sample_id"]: s for ss in result.samples.values() for s in ss}
    assert by_id["abnormal/b1/p04.jpg#0"]["split"] == by_id["normal/b1/p04.jpg#0"]["split"]
    assert result.report["inputs"]["normal_images_used"] == 3
