"""Benchmark layouts (``dataset_layout: mvtec | visa``): small fake MVTec AD and VisA trees written on disk,
converted, and the kept boxes compared with the masks' 8-connected components found here by a plain flood
fill (not scipy); labels from the folders / the csv; forced splits honoured; MVTec AD's per-defect-type
rule and its official split (``split_from: layout``); broken masks reported with their image left out.

Every test fails on the code before issue #19 part 2 by construction: ``dataset_layout`` and its keys were
"Extra inputs are not permitted", and converters/sources/layout.py did not exist.
"""

from __future__ import annotations

import csv
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from qwenvl_roi.converters.config import load_data_config
from qwenvl_roi.converters.prepare import PrepareResult, prepare
from qwenvl_roi.converters.scan_labels import scan_labels
from qwenvl_roi.converters.sources.layout import components
from qwenvl_roi.converters.split import assign_split, hash_unit

from qwenvl_roi.errors import ConvertError

SIZE = (96, 72)  # width, height: not square, so a swapped x/y shows
MIN_BOX = 8
SEED = 42


# --- writing the trees ------------------------------------------------------------------------------------


def noise(path: Path, seed: int, size: tuple[int, int] = SIZE) -> None:
    """A picture of random pixels (no two alike: the near-duplicate check finds nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def defect_mask(k: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Two components: a blob of two rectangles that touch only at a corner (one component with
    8-connectivity, two with 4), placed by k, and a 3x3 speck below MIN_BOX."""
    m = np.zeros((size[1], size[0]), dtype=np.uint8)
    x, y = 4 + k % 20, 5 + k % 9
    m[y : y + 14, x : x + 10] = 255
    m[y + 14 : y + 24, x + 10 : x + 22] = 255
    m[60:63, 80 + k % 6 : 83 + k % 6] = 255
    return m


def save_mask(path: Path, m: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)


def build_mvtec(
    root: Path, category: str = "widget", types: dict[str, int] | None = None, goods: int = 8
) -> None:
    """``<category>/train/good`` (``goods``), ``test/good`` (3), ``test/<type>`` with their masks in
    ``ground_truth``, and a licence file."""
    types = types or {"scratch": 12, "hole": 3}
    base = root / category
    seed = hash(category) % 1000 * 1000
    for i in range(goods):
        noise(base / "train" / "good" / f"{i:03d}.png", seed + i)
    for i in range(3):
        noise(base / "test" / "good" / f"{i:03d}.png", seed + 100 + i)
    for t, (name, n) in enumerate(sorted(types.items())):
        for i in range(n):
            noise(base / "test" / name / f"{i:03d}.png", seed + 200 + 50 * t + i)
            save_mask(base / "ground_truth" / name / f"{i:03d}_mask.png", defect_mask(i + 7 * t))
    (base / "license.txt").write_text("not an image\n")


def build_visa(root: Path) -> Path:
    """Two objects; per object normal and anomaly images, masks, and a split csv (train and test rows)."""
    rows = [["object", "split", "label", "image", "mask"]]
    for o, obj in enumerate(("candle", "pcb1")):
        data = root / obj / "Data"
        for i in range(6):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            noise(root / rel, 5000 + 100 * o + i)
            rows.append([obj, "train" if i < 4 else "test", "normal", rel, ""])
        for i in range(5):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            noise(root / rel, 6000 + 100 * o + i)
            mask = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            save_mask(root / mask, defect_mask(3 * i + o))
            rows.append([obj, "train" if i < 3 else "test", "anomaly", rel, mask])
        assert data.is_dir()
    csv_path = root / "split_csv" / "2cls_highshot.csv"
    csv_path.parent.mkdir(parents=True)
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return csv_path


# --- the truth, computed here -----------------------------------------------------------------------------


def flood_components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Extents (x1, y1, x2 + 1, y2 + 1) of the 8-connected components of the non-zero pixels (BFS)."""
    fg = mask != 0
    seen = np.zeros_like(fg)
    out = []
    h, w = fg.shape
    for y0, x0 in zip(*np.nonzero(fg), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue = deque([(y0, x0)])
        xs, ys = [x0], [y0]
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
                        xs.append(nx)
                        ys.append(ny)
        out.append((int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1))
    return out


def mask_truth(path: Path) -> tuple[list[tuple[int, ...]], int]:
    """(components kept at MIN_BOX, components dropped as too small) of a mask file."""
    comps = flood_components(np.asarray(Image.open(path)))
    kept = [c for c in comps if min(c[2] - c[0], c[3] - c[1]) >= MIN_BOX]
    return sorted(kept), len(comps) - len(kept)


# --- running ----------------------------------------------------------------------------------------------


def run(tmp_path: Path, **keys: Any) -> PrepareResult:
    cfg = {
        "out_dir": str(tmp_path / "out"),
        "dataset_info_dir": str(tmp_path / "dinfo"),
        "min_box_size": MIN_BOX,
        "near_duplicates": "off",
        "seed": SEED,
        **keys,
    }
    return prepare(cfg, progress=False)


def by_image(result: PrepareResult) -> dict[str, dict[str, Any]]:
    """image (relative to dataset_root) -> its split, source, group and positive boxes with labels."""
    out: dict[str, dict[str, Any]] = {}
    for split, samples in result.samples.items():
        for s in samples:
            rel = s["sample_id"].rsplit("#", 1)[0].removeprefix("abnormal/")
            got = out.setdefault(
                rel, {"split": split, "source": s["source"], "group": s["group"], "boxes": []}
            )
            assert got["split"] == split and got["source"] == s["source"]
            got["boxes"] += [
                (tuple(int(v) for v in r["box"]), r["label"]) for r in s["regions"] if r["positive"]
            ]
    for got in out.values():
        got["boxes"].sort()
    return out


def problems(result: PrepareResult) -> set[tuple[str, str]]:
    return {(p["kind"], p["file"]) for p in result.report["problems"]}


# --- MVTec AD ---------------------------------------------------------------------------------------------


def test_mvtec_boxes_labels_and_per_defect_type_split(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    build_mvtec(root)
    result = run(tmp_path, dataset_layout="mvtec", dataset_root=str(root))
    images = by_image(result)
    defects = sorted(p for p in root.glob("widget/test/*/*.png") if p.parent.name != "good")
    goods = sorted(root.glob("widget/*/good/*.png"))
    assert set(images) == {p.relative_to(root).as_posix() for p in defects + goods}
    tiny = 0
    for p in defects:
        rel = p.relative_to(root).as_posix()
        kept, dropped = mask_truth(root / "widget" / "ground_truth" / p.parent.name / f"{p.stem}_mask.png")
        tiny += dropped
        assert images[rel]["source"] == "abnormal"
        assert images[rel]["boxes"] == sorted((box, p.parent.name) for box in kept), rel  # label: the folder
    for p in goods:
        rel = p.relative_to(root).as_posix()
        assert images[rel]["source"] == "normal" and images[rel]["boxes"] == []
        # good images by the usual rule: every image its own group, split by the seeded hash of its group
        assert images[rel]["group"] == f"abnormal/{rel}"
        assert images[rel]["split"] == assign_split(SEED, f"abnormal/{rel}", 0.8, 0.1)
    report = result.report
    assert tiny == len(defects) and report["boxes"]["dropped_by_reason"] == {"box_too_small": tiny}
    assert report["boxes"]["kept"] == len(defects)
    inputs = report["inputs"]
    assert inputs["dataset_layout"] == "mvtec" and inputs["split_from"] == "defect_types"
    assert inputs["mask_files_found"] == len(defects) and inputs["abnormal_images_found"] == len(defects) + 11
    masks = root.glob("widget/ground_truth/*/*_mask.png")  # each speck: a problem at its mask
    assert problems(result) == {
        ("box_too_small", f"{root.as_posix()}/{m.relative_to(root).as_posix()}") for m in masks
    }
    # the per-defect-type rule: 12 scratch images -> 10 train, 1 val, 1 test (largest remainders), in the
    # order of their seeded hash; a type of 3 images follows the ratios alone
    splits = {
        t: Counter(v["split"] for k, v in images.items() if f"/test/{t}/" in k) for t in ("scratch", "hole")
    }
    assert splits["scratch"] == {"train": 10, "val": 1, "test": 1}
    order = sorted((hash_unit(SEED, k), k) for k in images if "/test/scratch/" in k)
    assert [images[k]["split"] for _, k in order] == ["train"] * 10 + ["val", "test"]
    assert splits["hole"] == {"train": 3}
    again = run(tmp_path / "again", dataset_layout="mvtec", dataset_root=str(root))
    assert by_image(again) == images  # deterministic


def test_mvtec_every_type_of_ten_lands_in_train_and_test(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    build_mvtec(root, types={"crack": 10, "cut": 11, "bent": 17, "few": 4})
    result = run(tmp_path, dataset_layout="mvtec", dataset_root=str(root), train_ratio=0.9, val_ratio=0.06,
                 test_ratio=0.04)  # fmt: skip
    images = by_image(result)
    for t in ("crack", "cut", "bent"):
        got = Counter(v["split"] for k, v in images.items() if f"/test/{t}/" in k)
        assert got["train"] >= 1 and got["test"] >= 1, (t, got)
        assert sum(got.values()) == {"crack": 10, "cut": 11, "bent": 17}[t]


@pytest.mark.parametrize("broken", ["unreadable", "other_size"])
def test_mvtec_quotas_count_only_the_images_kept(tmp_path: Path, broken: str) -> None:
    """11 hole images, one left out by prepare (its image unreadable, or its mask of another size): the 10
    kept still have some in train and some in test. The one broken is the image the seeded order puts
    in test on its own (ordered by hash_unit(seed, rel), the README's protocol), so quotas counted
    before prepare's checks would leave the type without a test image."""
    root = tmp_path / "mvtec"
    build_mvtec(root, types={"hole": 11})
    rels = [f"widget/test/hole/{i:03d}.png" for i in range(11)]
    last = max(rels, key=lambda rel: (hash_unit(SEED, rel), rel))  # train 9, val 1, test 1: the last one
    if broken == "unreadable":
        (root / last).write_bytes(b"not a png")
    else:
        stem = Path(last).stem
        save_mask(root / f"widget/ground_truth/hole/{stem}_mask.png", np.zeros((80, 80), np.uint8) + 255)
    result = run(tmp_path, dataset_layout="mvtec", dataset_root=str(root), min_box_size=MIN_BOX)
    images = by_image(result)
    assert last not in images
    got = Counter(v["split"] for k, v in images.items() if "/test/hole/" in k)
    assert sum(got.values()) == 10 and got["train"] >= 1 and got["test"] >= 1, got


def test_mvtec_defect_image_named_in_gbk_is_split_not_a_crash(tmp_path: Path) -> None:
    """A defect image whose name is GBK bytes (a Windows zip), not UTF-8: its type's seeded order hashes
    the name's bytes (sha256 of seed, NUL, bytes, by hand here) and the image is used, reported as not
    UTF-8. Before, ordering the type raised UnicodeEncodeError."""
    import hashlib
    import os

    root = tmp_path / "mvtec"
    build_mvtec(root, types={"hole": 11})
    raw = "划痕".encode("gbk")
    name = os.fsdecode(raw)  # what the file system gives Python: surrogate escapes
    hole = root / "widget" / "test" / "hole"
    (hole / "000.png").rename(hole / f"{name}.png")
    gt = root / "widget" / "ground_truth" / "hole"
    (gt / "000_mask.png").rename(gt / f"{name}_mask.png")
    rel = f"widget/test/hole/{name}.png"
    by_hand = int.from_bytes(
        hashlib.sha256(f"{SEED}".encode() + b"\x00" + os.fsencode(rel)).digest()[:8], "big"
    )
    assert hash_unit(SEED, rel) == by_hand / 2**64
    result = run(tmp_path, dataset_layout="mvtec", dataset_root=str(root))
    assert result.report["problem_counts"].get("file_name_not_utf8") == 1
    got = Counter(v["split"] for k, v in by_image(result).items() if "/test/hole/" in k)
    assert sum(got.values()) == 11 and got["train"] >= 1 and got["test"] >= 1


def test_mvtec_split_from_layout_is_the_official_split(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    build_mvtec(root, goods=30)
    result = run(tmp_path, dataset_layout="mvtec", dataset_root=str(root), split_from="layout")
    images = by_image(result)
    assert result.report["inputs"]["split_from"] == "layout"
    for rel, got in images.items():
        if rel.startswith("widget/train/"):  # train/good: train, val carved from it by the seed
            want = "train" if hash_unit(SEED, got["group"]) < 0.8 / 0.9 else "val"
            assert got["split"] == want and got["source"] == "normal"
        else:
            assert got["split"] == "test", rel
    assert {v["split"] for k, v in images.items() if k.startswith("widget/train/")} == {"train", "val"}


def test_mvtec_root_of_categories_or_one_category(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    build_mvtec(root, "widget")
    build_mvtec(root, "gadget", {"dent": 2})
    both = by_image(run(tmp_path / "both", dataset_layout="mvtec", dataset_root=str(root)))
    one = by_image(run(tmp_path / "one", dataset_layout="mvtec", dataset_root=str(root / "gadget")))
    assert {k.split("/")[0] for k in both} == {"widget", "gadget"}
    gadget = {k.removeprefix("gadget/"): v["boxes"] for k, v in both.items() if k.startswith("gadget/")}
    assert {k: v["boxes"] for k, v in one.items()} == gadget
    assert {lab for v in both.values() for _, lab in v["boxes"]} == {"scratch", "hole", "dent"}


def test_mvtec_broken_masks_are_reported_and_their_images_left_out(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    build_mvtec(root)
    gt = root / "widget" / "ground_truth" / "scratch"
    (gt / "000_mask.png").unlink()  # missing
    save_mask(gt / "001_mask.png", np.zeros((50, 50), np.uint8) + 255)  # another size
    save_mask(gt / "002_mask.png", np.zeros((SIZE[1], SIZE[0]), np.uint8))  # empty
    (gt / "003_mask.png").write_bytes(b"\x89PNG broken")  # unreadable
    save_mask(gt / "099_mask.png", defect_mask(1))  # no image
    noise(root / "widget" / "extra" / "x.png", 1)  # not in the layout
    result = run(tmp_path, dataset_layout="mvtec", dataset_root=str(root))
    images = by_image(result)
    r = root.as_posix()
    for i in range(4):
        assert f"widget/test/scratch/{i:03d}.png" not in images
    assert "widget/test/scratch/004.png" in images and "widget/extra/x.png" not in images
    found = problems(result)
    assert ("mask_missing", f"{r}/widget/test/scratch/000.png") in found
    assert ("size_mismatch", f"{r}/widget/ground_truth/scratch/001_mask.png") in found
    assert ("empty_mask", f"{r}/widget/ground_truth/scratch/002_mask.png") in found
    assert ("unreadable_mask", f"{r}/widget/ground_truth/scratch/003_mask.png") in found
    assert ("mask_without_image", f"{r}/widget/ground_truth/scratch/099_mask.png") in found
    assert ("not_in_layout", f"{r}/widget/extra/x.png") in found
    dropped = result.report["boxes"]["dropped_by_reason"]
    assert dropped["mask_without_image"] == 2 and dropped["size_mismatch"] == 1  # every box accounted for
    with pytest.raises(ConvertError, match="strict mode"):
        prepare(
            {**_cfg(tmp_path / "s"), "dataset_layout": "mvtec", "dataset_root": str(root), "strict": True}
        )


def _palette(index: np.ndarray, colours: list[int]) -> Image.Image:
    """A palette image of these indexes (uint8) and palette entries (flat RGB)."""
    im = Image.frombuffer(
        "P", (index.shape[1], index.shape[0]), index.astype(np.uint8).tobytes(), "raw", "P", 0, 1
    )
    im.putpalette(colours)
    return im


#: the same black-and-white mask (the defect white) as tools save it, in every PIL mode a PNG holds
MASK_MODES = {
    "L": lambda m: Image.fromarray(m),
    "1": lambda m: Image.fromarray(m).convert("1"),
    "P, entry 0 white": lambda m: _palette(m == 0, [255, 255, 255, 0, 0, 0]),
    "P, entry 0 black": lambda m: _palette(m != 0, [0, 0, 0, 255, 255, 255]),
    "P, quantized": lambda m: Image.fromarray(m).convert("RGB").quantize(2),
    "LA": lambda m: Image.fromarray(np.stack([m, np.full_like(m, 255)], axis=-1)),
    "RGB": lambda m: Image.fromarray(m).convert("RGB"),
    "RGBA, clear background": lambda m: Image.fromarray(np.stack([m, m, m, m], axis=-1)),
    "I;16": lambda m: Image.fromarray(m.astype(np.uint16) * 257),
}


def test_masks_are_read_as_the_colour_shown_in_every_mode(tmp_path: Path) -> None:
    """A mask means the colour a viewer shows, whatever mode it was saved in. A palette PNG stores indexes,
    and its entry 0 may be white (a black-and-white mask quantized): read by index, every black pixel was a
    defect, the box the whole image, nothing reported (before). CMYK stores ink: black is K 255."""
    from qwenvl_roi.converters.sources.layout import foreground

    root = tmp_path / "mvtec"
    build_mvtec(root, types={"scratch": len(MASK_MODES)})
    gt = root / "widget" / "ground_truth" / "scratch"
    want = {}
    for i, (mode, save_as) in enumerate(MASK_MODES.items()):
        m = defect_mask(i)
        path = gt / f"{i:03d}_mask.png"
        save_as(m).save(path)
        with Image.open(path) as im:  # the file shows the mask (what a viewer, PIL's RGB, shows)
            assert (np.asarray(im.convert("RGB")).any(axis=-1) == (m != 0)).all(), mode
        comps = flood_components(m)
        want[f"widget/test/scratch/{i:03d}.png"] = sorted(
            (c, "scratch") for c in comps if min(c[2] - c[0], c[3] - c[1]) >= MIN_BOX
        )
    images = by_image(run(tmp_path, dataset_layout="mvtec", dataset_root=str(root), split_from="layout"))
    assert {k: images[k]["boxes"] for k in want} == want
    m = defect_mask(3)
    Image.fromarray(m).convert("CMYK").save(tmp_path / "cmyk_mask.tif")
    assert (foreground(str(tmp_path / "cmyk_mask.tif")) == (m != 0)).all()


def _cfg(tmp_path: Path) -> dict[str, Any]:
    return {
        "out_dir": str(tmp_path / "out"),
        "dataset_info_dir": str(tmp_path / "di"),
        "min_box_size": MIN_BOX,
    }


# --- VisA -------------------------------------------------------------------------------------------------


def test_visa_csv_labels_boxes_and_forced_splits(tmp_path: Path) -> None:
    root = tmp_path / "visa"
    csv_path = build_visa(root)
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    result = run(tmp_path, dataset_layout="visa", dataset_root=str(root),
                 visa_split_csv="split_csv/2cls_highshot.csv")  # fmt: skip
    images = by_image(result)
    assert set(images) == {row["image"] for row in rows}
    for row in rows:
        got = images[row["image"]]
        if row["split"] == "test":
            assert got["split"] == "test"
        else:  # train rows: train or val by the seeded hash of the image's group
            assert got["split"] == ("train" if hash_unit(SEED, got["group"]) < 0.8 / 0.9 else "val")
        if row["label"] == "normal":
            assert got["source"] == "normal" and got["boxes"] == []
        else:
            kept, _ = mask_truth(root / row["mask"])
            assert got["source"] == "abnormal" and got["boxes"] == sorted((b, "anomaly") for b in kept)
    inputs = result.report["inputs"]
    assert inputs["dataset_layout"] == "visa" and inputs["split_csv_rows"] == len(rows)
    assert inputs["visa_split_csv"] == "split_csv/2cls_highshot.csv" and inputs["mask_files_found"] == 10
    assert inputs["abnormal_images_found"] == 22
    assert result.report["boxes"]["dropped_by_reason"] == {"box_too_small": 10}


def test_visa_problems(tmp_path: Path) -> None:
    root = tmp_path / "visa"
    csv_path = build_visa(root)
    text = csv_path.read_text(encoding="utf-8")
    text += "candle,dev,normal,candle/Data/Images/Normal/0000.JPG,\n"  # line 24: unknown split
    text += "candle,test,anomaly,candle/Data/Images/Anomaly/gone.JPG,candle/Data/Masks/Anomaly/000.png\n"
    text += "candle,test,anomaly,candle/Data/Images/Normal/0001.JPG,\n"  # listed twice
    csv_path.write_text(text, encoding="utf-8")
    (root / "candle/Data/Masks/Anomaly/001.png").unlink()
    save_mask(root / "pcb1/Data/Masks/Anomaly/002.png", np.zeros((10, 10), np.uint8) + 255)
    noise(root / "candle/Data/Images/Normal/9999.JPG", 3)  # not in the csv
    result = run(
        tmp_path, dataset_layout="visa", dataset_root=str(root), visa_split_csv="split_csv/2cls_highshot.csv"
    )
    r, c = root.as_posix(), csv_path.as_posix()
    at = {(p["kind"], p["file"], p["line"]) for p in result.report["problems"]}
    assert ("bad_row", c, 24) in at and ("image_missing", c, 25) in at and ("duplicate_row", c, 26) in at
    assert ("mask_missing", f"{r}/candle/Data/Images/Anomaly/001.JPG", None) in at
    assert ("size_mismatch", f"{r}/pcb1/Data/Masks/Anomaly/002.png", None) in at
    assert ("image_not_in_split_csv", f"{r}/candle/Data/Images/Normal/9999.JPG", None) in at
    images = by_image(result)
    assert (
        "candle/Data/Images/Anomaly/001.JPG" not in images
        and "pcb1/Data/Images/Anomaly/002.JPG" not in images
    )
    assert images["candle/Data/Images/Normal/0001.JPG"]["source"] == "normal"  # the first row counts
    # ... but its first row says train and line 26 test: a test image is never trained on
    assert images["candle/Data/Images/Normal/0001.JPG"]["split"] == "test"
    (dup,) = [p for p in result.report["problems"] if p["kind"] == "duplicate_row"]
    assert "as train" in dup["reason"] and "goes to test" in dup["reason"]
    assert result.report["boxes"]["dropped_by_reason"]["image_missing"] == 2  # the missing image's mask


# --- the keys, the shipped configs, scan-labels, workers --------------------------------------------------


M = {"dataset_layout": "mvtec", "dataset_root": "m"}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"dataset_layout": "mvtec"}, r"data.yaml:2: dataset_root: .*mvtec needs dataset_root"),
        ({"dataset_layout": "visa", "dataset_root": "v"}, r"data.yaml:2: visa_split_csv: .*needs visa_split"),
        ({**M, "abnormal_dir": "a"}, r"data.yaml:4: abnormal_dir: .*dataset_root; remove abnormal_dir"),
        ({**M, "normal_dir": "n"}, r"data.yaml:4: normal_dir: .*own normal images"),
        ({**M, "split_by_parent": "true"}, r"data.yaml:4: split_by_parent: .*image by image"),
        ({**M, "annotation_format": "coco"}, r"data.yaml:4: annotation_format: .*reads its masks"),
        ({**M, "yolo_names": "c.txt"}, r"data.yaml:4: yolo_names: .*not read with dataset_layout"),
        ({**M, "visa_split_csv": "x"}, r"data.yaml:4: visa_split_csv: .*only with dataset_layout: visa"),
        ({"dataset_root": "m"}, r"data.yaml:2: dataset_root: .*read only with dataset_layout"),
        ({**M, "split_from": "random"}, r"data.yaml:4: split_from: "),
        (
            {"dataset_layout": "btad", "dataset_root": "m"},
            r"data.yaml:2: dataset_layout: .*one of mvtec, visa",
        ),
    ],
)
def test_layout_config_errors_name_the_key(tmp_path: Path, keys: dict[str, str], message: str) -> None:
    path = tmp_path / "data.yaml"
    path.write_text("seed: 1\n" + "".join(f"{k}: {v}\n" for k, v in keys.items()), encoding="utf-8")
    with pytest.raises(ConvertError, match=message):
        load_data_config(path)


def test_layout_needs_no_image_folders(tmp_path: Path) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(
        yaml.safe_dump({"dataset_layout": "mvtec", "dataset_root": "bench/mvtec"}), encoding="utf-8"
    )
    cfg = load_data_config(path)
    assert (cfg.abnormal_dir, cfg.normal_dir, cfg.split_by_parent) == (Path("bench/mvtec"), None, False)
    assert cfg.split_from is None  # the source's default: defect_types


@pytest.mark.parametrize("layout", ["mvtec", "visa"])
def test_shipped_layout_configs(layout: str) -> None:
    cfg = load_data_config(Path(__file__).resolve().parents[2] / "configs" / f"data.{layout}.yaml")
    assert cfg.dataset_layout == layout and cfg.normal_dir is None and not cfg.split_by_parent


def test_scan_labels_reads_a_layout(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    build_mvtec(root)
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"dataset_layout": "mvtec", "dataset_root": str(root)}), encoding="utf-8")
    out = scan_labels(config=load_data_config(path), progress=False)
    assert out["dataset_layout"] == "mvtec" and out["mask_files"] == 15
    assert out["boxes"] == 30  # every component, before min_box_size
    assert {row["label"]: row["boxes"] for row in out["labels"]} == {"scratch": 24, "hole": 6}


def test_workers_decode_masks_as_one_process(tmp_path: Path) -> None:
    from qwenvl_roi.converters.sources.layout import read_masks

    jobs = []
    for k in range(40):
        path = tmp_path / f"m{k:02d}.png"
        save_mask(path, defect_mask(k))
        jobs.append((str(path), path.name, "crack"))
    assert read_masks(jobs, workers=2) == read_masks(jobs, workers=1)


def test_forced_train_or_val_resolves_with_other_forced_splits() -> None:
    from qwenvl_roi.converters.split import TRAIN_OR_VAL, assign_train_or_val, forced_split

    key = "abnormal/widget/train/good/000.png"
    alone = assign_train_or_val(SEED, key, 0.8, 0.1)
    assert forced_split({TRAIN_OR_VAL}, SEED, key, 0.8, 0.1) == (alone, True)
    assert forced_split({TRAIN_OR_VAL, "train"}, SEED, key, 0.8, 0.1) == ("train", True)
    assert forced_split({TRAIN_OR_VAL, "val"}, SEED, key, 0.8, 0.1) == ("val", True)
    assert forced_split({TRAIN_OR_VAL, "test"}, SEED, key, 0.8, 0.1) == ("test", False)
    assert forced_split({"train", "val"}, SEED, key, 0.8, 0.1) == ("val", False)  # as before: the later
    vals = {assign_train_or_val(SEED, f"k{i}", 0.8, 0.1) for i in range(200)}
    assert vals == {"train", "val"} and assign_train_or_val(SEED, "k", 0.0, 0.0) == "train"


def test_components_in_order_on_random_masks() -> None:
    """layout.components (labelled with empty lines taken out) against the flood fill, order included, on
    masks of noise, diagonal chains and blobs separated by one or more empty rows or columns."""
    rng = np.random.default_rng(7)
    for t in range(400):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        fg = rng.random((h, w)) < rng.choice([0.01, 0.05, 0.15, 0.4])
        if t % 4 == 1:  # whole empty rows and columns between the pixels
            fg[rng.random(h) < 0.4] = False
            fg[:, rng.random(w) < 0.4] = False
        if t % 4 == 2:  # diagonal chains: one component only through corners
            fg |= np.eye(h, w, k=int(rng.integers(-3, 4)), dtype=bool)
        assert components(fg) == flood_components(fg), f"mask {t}"
