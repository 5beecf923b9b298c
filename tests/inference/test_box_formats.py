"""`qwenvl-roi predict --boxes-format yolo|coco`: a detector's own output read by the converters' YOLO and
COCO readers gives exactly the rows of the same boxes written as JSONL (no training needed: the tiny
random model scores them all the same way).

Fails on the code before issue #19 part 2: there was no --boxes-format (nor --coco-images) flag.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl_roi.cli import main


def _predict(*args: str) -> int:
    return main(["predict", *args, "--no-progress"])


def _images(scored_dataset: Path) -> list[tuple[str, int, int, list[list[int]]]]:
    """(path relative to the dataset, width, height, boxes) of every image under it, in path order: the
    test images with their regions as boxes, the others without a box (a detector found nothing there)."""
    from PIL import Image

    boxes = {}
    for line in (scored_dataset / "regions_test.jsonl").read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        boxes[Path(s["image"]).relative_to(scored_dataset).as_posix()] = [r["box"] for r in s["regions"]]
    out = []
    for path in sorted((scored_dataset / "images").iterdir()):
        rel = path.relative_to(scored_dataset).as_posix()
        with Image.open(path) as im:
            out.append((rel, im.width, im.height, boxes.pop(rel, [])))
    assert not boxes
    return out


def _write_forms(tmp_path: Path, images: list[tuple[str, int, int, list[list[int]]]]) -> dict[str, list[str]]:
    """The same boxes as JSONL, a YOLO folder, a COCO dataset file and a COCO results list (with flags)."""
    jsonl = tmp_path / "boxes.jsonl"
    jsonl.write_text("".join(json.dumps({"image": rel, "boxes": b}) + "\n" for rel, _, _, b in images))
    yolo = tmp_path / "yolo"
    (yolo / "classes.txt").parent.mkdir(parents=True)
    (yolo / "classes.txt").write_text("crack\nspot\n")  # labelImg's class list: not boxes
    coco_images, annotations, results = [], [], []
    for k, (rel, w, h, boxes) in enumerate(images):
        lines = []
        for j, (x1, y1, x2, y2) in enumerate(boxes):
            cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
            conf = f" {0.5 + j / 10!r}" if j % 2 else ""  # a detector's confidence on some lines
            # as the tools write them: 6 decimals (labelImg, CVAT, Roboflow) or %g (Ultralytics), so a box
            # comes back a few millionths of a pixel off (64.000032 at the right edge of a 64-pixel image)
            form = "{:.6f}" if j % 2 == 0 else "{:g}"
            lines.append(f"{j % 2} " + " ".join(form.format(v) for v in (cx, cy, bw, bh)) + conf)
            bbox = [x1, y1, x2 - x1, y2 - y1]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": 100 + k, "category_id": 7, "bbox": bbox}
            )
            results.append({"image_id": 100 + k, "category_id": 3 + j, "bbox": bbox, "score": 0.9})
        if lines:  # as Ultralytics' save_txt: no file for an image without a detection
            txt = yolo / Path(rel).with_suffix(".txt")
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text("\n".join(lines) + "\n")
        coco_images.append({"id": 100 + k, "file_name": rel, "width": w, "height": h})
    dataset = tmp_path / "dataset.json"  # no categories: the class names are not needed to score
    dataset.write_text(json.dumps({"images": coco_images, "annotations": annotations}))
    listed = tmp_path / "images.json"
    listed.write_text(json.dumps({"images": coco_images, "categories": []}))
    res = tmp_path / "results.json"
    res.write_text(json.dumps(results))
    return {
        "jsonl": ["--boxes", str(jsonl)],
        "yolo": ["--boxes", str(yolo), "--boxes-format", "yolo"],
        "coco": ["--boxes", str(dataset), "--boxes-format", "coco"],
        "coco-results": ["--boxes", str(res), "--boxes-format", "coco", "--coco-images", str(listed)],
    }


def test_yolo_and_coco_give_the_jsonl_rows(
    tiny_qwen2_5_vl: Path, scored_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = _images(scored_dataset)
    forms = _write_forms(tmp_path, images)
    common = ["--model", str(tiny_qwen2_5_vl), "--meta", str(scored_dataset), "--images", str(scored_dataset)]
    outs = {}
    for name, flags in forms.items():
        outs[name] = tmp_path / f"{name}.predictions.jsonl"
        assert _predict(*common, *flags, "--batch-size", "3", "--out", str(outs[name])) == 0, name
    reference = outs["jsonl"].read_bytes()
    rows = [json.loads(line) for line in reference.decode().splitlines()]
    assert [r["image"] for r in rows] == [rel for rel, *_ in images]
    assert all(r["problems"] == [] and all(b["score"] is not None for b in r["boxes"]) for r in rows)
    assert [[b["box"] for b in r["boxes"]] for r in rows] == [b for *_, b in images]
    without = [r for r in rows if not r["boxes"]]
    assert 0 < len(without) < len(rows) and all(r["image_score"] is None for r in without)
    # byte for byte: same boxes, same prompts, same scores; an image without a YOLO file (Ultralytics
    # writes none where it found nothing) is the row of a JSONL line without boxes (before: no row)
    for name, path in outs.items():
        assert path.read_bytes() == reference, name
    assert f"{len(without)} without a box (nothing to score)" in capsys.readouterr().out
    # a results list alone names no image
    res = forms["coco-results"][:4]
    assert _predict(*common, *res, "--out", str(tmp_path / "x.jsonl")) == 2
    assert "give the COCO dataset file its image_id refer to with --coco-images" in capsys.readouterr().err


def test_box_format_problems_name_file_and_line(tmp_path: Path) -> None:
    """Bad YOLO lines and COCO entries are reported where they are, the rest read (no model needed)."""
    from PIL import Image

    from qwenvl_roi.inference.detections import check, read_jobs

    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (200, 100)).save(root / "a.png")
    yolo = tmp_path / "labels"
    yolo.mkdir()
    (yolo / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 x 0.5 0.2 0.2\n1 0.25 0.5 0.1\n")
    (yolo / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (job_a, job_b) = read_jobs(yolo, root, "yolo")
    assert job_b.error is not None and "no image b.<" in job_b.error
    checked = check(job_a).job
    assert checked.boxes == [[80.0, 40.0, 120.0, 60.0]]  # fractions of 200x100 made pixels
    assert any(f"{yolo / 'a.txt'}:2:" in p for p in checked.problems)
    assert any(f"{yolo / 'a.txt'}:3:" in p and "3 number(s)" in p for p in checked.problems)
    coco = tmp_path / "c.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}],
                "annotations": [
                    {"image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 30]},
                    {"image_id": 1, "category_id": 5, "bbox": [1, "x", 2, 3]},
                    {"image_id": 9, "category_id": 5, "bbox": [1, 1, 2, 3]},
                ],
            }
        )
    )
    first, again, dangling = read_jobs(coco, root, "coco")
    assert first.boxes == [[10.0, 10.0, 30.0, 40.0]] and first.source == f"{coco}:images[0]"
    assert any("annotations[1]" in p and "not 4 numbers" in p for p in first.problems)
    assert again.error is not None and "already listed at" in again.error
    assert dangling.error is not None and "annotations[2]" in dangling.error
    # an id given to two entries (two tasks numbered from 1, joined): its boxes belong to no known picture,
    # so neither entry is scored (before, the first entry was scored on both pictures' boxes)
    Image.new("RGB", (200, 100)).save(root / "b.png")
    doc = json.loads(coco.read_text())
    doc["images"] = [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}]
    doc["annotations"] = [doc["annotations"][0], {"image_id": 1, "category_id": 5, "bbox": [50, 5, 20, 30]}]
    coco.write_text(json.dumps(doc))
    jobs = read_jobs(coco, root, "coco")
    assert [(j.image, j.boxes) for j in jobs] == [("a.png", []), ("b.png", [])]
    assert all(
        j.error is not None and "its id 1 is given to other images entries too" in j.error for j in jobs
    )
    with pytest.raises(Exception, match="reads a folder"):
        read_jobs(coco, root, "yolo")


def test_coco_stated_size_is_checked_as_the_converters_check_it(tmp_path: Path) -> None:
    """A COCO file states each image's size. Boxes drawn on the stored pixels of an EXIF-turned image (the
    file states the stored size) are turned upright to where PIL's exif_transpose shows those pixels, as
    convert does; a size that is neither means the boxes belong to another picture: an error row, no
    scores. (Before, predict ignored the stated size and scored such boxes where they were written.)"""
    from PIL import Image, ImageOps

    from qwenvl_roi.inference.detections import check, read_jobs

    images = tmp_path / "images"
    images.mkdir()
    stored = Image.new("L", (400, 240), 0)
    stored.paste(255, (30, 50, 130, 90))  # the defect, drawn on the stored pixels: bbox [30, 50, 100, 40]
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(images / "turned.jpg", exif=exif, quality=100)
    Image.new("L", (400, 300), 0).save(images / "small.jpg")
    with Image.open(images / "turned.jpg") as im:
        bbox = ImageOps.exif_transpose(im).point(lambda v: 255 if v > 128 else 0).getbbox()
    doc = {
        "images": [
            {"id": 1, "file_name": "turned.jpg", "width": 400, "height": 240},  # the stored size
            {"id": 2, "file_name": "small.jpg", "width": 800, "height": 600},  # another picture's
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 50, 100, 40]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 100, 100]},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    turned, small = (check(job) for job in read_jobs(tmp_path / "coco.json", images, "coco"))
    assert (turned.width, turned.height) == (240, 400) and turned.job.error is None
    assert [box for _, box in turned.usable] == [list(bbox)]
    assert any("stored size" in p and "images[0]" in p for p in turned.job.problems)
    assert small.usable == [] and "800x600" in (small.job.error or "")
    # a results list: the sizes are stated in the --coco-images file, which the problems name
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps({"images": doc["images"]}))
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps([{"image_id": 1, "category_id": 1, "bbox": [30, 50, 100, 40], "score": 0.9}])
    )
    turned2, small2 = (check(job) for job in read_jobs(results, images, "coco", listed))
    assert [box for _, box in turned2.usable] == [list(bbox)]
    assert any(p.startswith(f"{listed}:images[0]") for p in turned2.job.problems)
    assert (small2.job.error or "").startswith(f"{listed}:images[1]")


def test_jsonl_one_file_spelled_two_ways_is_scored_once(tmp_path: Path) -> None:
    """``./a.png`` or ``sub/../a.png`` after ``a.png`` names the same picture: without an ``id`` it would be
    scored twice under two names, so the later line is an error row naming the first; lines with their own
    ``id`` are scored (no model needed)."""
    from PIL import Image

    from qwenvl_roi.inference.detections import read_jobs

    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(root / "a.png")
    lines = [
        {"image": "a.png", "boxes": [[1, 1, 5, 5]]},
        {"image": "./a.png", "boxes": [[1, 1, 5, 5]]},
        {"image": "sub/../a.png", "boxes": []},
        {"image": str(root / "a.png"), "boxes": []},
        {"image": "./a.png", "boxes": [], "id": "second run"},
    ]
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text("".join(json.dumps(line) + "\n" for line in lines))
    jobs = read_jobs(boxes, root)
    assert jobs[0].error is None and jobs[4].error is None
    for k in (1, 2, 3):
        first = f"'a.png' given at {boxes}:1"
        assert jobs[k].error == f"{boxes}:{k + 1}: {lines[k]['image']!r} is the file {first}"
