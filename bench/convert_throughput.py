"""Benchmark: prepare + build-sft throughput (images/s) next to the floor (annotations + image headers).

Generates N synthetic small images (half abnormal with 1-3 boxes, half normal) in nested folders, each a
distinct picture (a seeded smooth pattern, so the near-duplicate check finds nothing and does its full
work), the abnormal images' boxes written in the annotation format of --format as that format's tools
write it (the same pictures, boxes and labels whatever the format: one seeded generator):
  txt     = the seed's messy txt beside each image (``name；x1，y1，x2，y2；label``, CRLF), the default;
  labelme = ``<stem>.json`` beside each image (rectangle shapes, imagePath, imageWidth/imageHeight,
            imageData null), as labelme 5 saves it;
  voc     = Pascal VOC XML under Annotations/, mirroring the images' sub-folders (``annotations_dir``),
            1-based pixels (xmin = x1 + 1) as labelImg writes them;
  yolo    = ``class cx cy w h`` (fractions) under labels/, mirroring the images' sub-folders, and
            labels/classes.txt (``yolo_names``) as labelImg keeps it;
  coco    = one annotations/instances_default.json (``coco_json``) listing every abnormal image (images,
            annotations with bbox [x, y, w, h], categories with ids from 1).
Then times, in one process pinned to one core:
  floor   = the least any converter of that format must do, read-only: every image header with PIL (no
            decoding) and every annotation file read with the standard parser for its format: txt and YOLO
            txt bytes + decode (YOLO: the names file too), labelme ``json.load`` per file, VOC
            ``xml.etree.ElementTree.parse`` per file, COCO one ``json.load`` of the file,
  convert = qwenvl_roi.converters.convert (prepare + build-sft, all outputs written) with the format's keys
            (annotation_format, annotations_dir, yolo_names, coco_json) and ``near_duplicates`` as
            --near-duplicates says; its hash cache is removed before each round, so every round decodes
            every picture, and one more run with the cache is timed after the rounds.
CPU time counts this process and its children (hashing workers, with --all-cores).
Checked on every run: the convert reads every box generated (the report's boxes "read"), uses every image
and reports no problem; otherwise a loud error, no result row written, exit status 1.
--breakdown: one more convert with a CPU timer around each step of prepare and build-sft (where the time goes;
the timers add a few milliseconds), printed as a table.
Usage: python bench/convert_throughput.py [--n 20000] [--size 64] [--format txt|labelme|voc|yolo|coco]
       [--near-duplicates off|report|group] [--breakdown] [--write-results FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model, timed  # noqa: E402

LABELS = ["crack", "Crack", "渗漏", "spall", "ＳＰＡＬＬ"]
FORMATS = ("txt", "labelme", "voc", "yolo", "coco")
Mark = tuple[tuple[int, int, int, int], str]  # a box (x1, y1, x2, y2: 0-based corners) and its label


def picture(rng: np.random.Generator, size: int) -> Image.Image:
    """A distinct smooth grey-brown pattern (an 8x8 random grid, upsampled) with a little noise."""
    coarse = rng.uniform(60, 190, (8, 8)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    grey = np.clip(smooth + rng.normal(0, 3, (size, size)), 0, 255)
    return Image.fromarray(np.stack([grey, grey * 0.97, grey * 0.9], axis=-1).astype(np.uint8))


# --- the annotations of one abnormal image, as each format's tool writes them ----------------------------
# root: the data folder; rel: the image's path under root/abnormal (POSIX); marks: its boxes in pixels.


def annotation_path(root: Path, fmt: str, rel: str) -> Path:
    """Where the annotation file of the image ``rel`` goes (per-image formats)."""
    stem = rel.rsplit(".", 1)[0]
    where = {"txt": "abnormal", "labelme": "abnormal", "voc": "Annotations", "yolo": "labels"}[fmt]
    ext = {"txt": ".txt", "labelme": ".json", "voc": ".xml", "yolo": ".txt"}[fmt]
    path = root / where / f"{stem}{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_txt(root: Path, rel: str, size: int, marks: list[Mark]) -> None:
    """The seed's messy txt: full-width delimiters, CRLF."""
    name = rel.rsplit("/", 1)[1]
    lines = [f"{name}；{x1}，{y1}，{x2}，{y2}；{lab}" for (x1, y1, x2, y2), lab in marks]
    annotation_path(root, "txt", rel).write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")


def write_labelme(root: Path, rel: str, size: int, marks: list[Mark]) -> None:
    """labelme 5.x: rectangle shapes (two corners, floats), the image named relative to the json."""
    shapes = [
        {
            "label": lab,
            "points": [[float(x1), float(y1)], [float(x2), float(y2)]],
            "group_id": None,
            "description": "",
            "shape_type": "rectangle",
            "flags": {},
            "mask": None,
        }
        for (x1, y1, x2, y2), lab in marks
    ]
    doc = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": rel.rsplit("/", 1)[1],
        "imageData": None,
        "imageHeight": size,
        "imageWidth": size,
    }
    text = json.dumps(doc, ensure_ascii=False, indent=2)
    annotation_path(root, "labelme", rel).write_text(text, encoding="utf-8")


def write_voc(root: Path, rel: str, size: int, marks: list[Mark]) -> None:
    """labelImg's Pascal VOC: 1-based pixels (xmin = x1 + 1, xmax = x2), tab-indented, no declaration."""
    folder, name = rel.rsplit("/", 1)
    objects = ""
    for (x1, y1, x2, y2), lab in marks:
        truncated = int(x1 == 0 or y1 == 0 or x2 == size or y2 == size)
        objects += (
            f"\t<object>\n\t\t<name>{lab}</name>\n\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{truncated}</truncated>\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n"
            f"\t\t\t<xmin>{x1 + 1}</xmin>\n\t\t\t<ymin>{y1 + 1}</ymin>\n"
            f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    xml = (
        f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{name}</filename>\n"
        f"\t<path>{(root / 'abnormal' / rel).as_posix()}</path>\n"
        "\t<source>\n\t\t<database>Unknown</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{size}</width>\n\t\t<height>{size}</height>\n\t\t<depth>3</depth>\n"
        f"\t</size>\n\t<segmented>0</segmented>\n{objects}</annotation>\n"
    )
    annotation_path(root, "voc", rel).write_text(xml, encoding="utf-8")


def write_yolo(root: Path, rel: str, size: int, marks: list[Mark]) -> None:
    """labelImg's YOLO txt: ``class cx cy w h`` as fractions with 6 decimals; class = index in LABELS."""
    lines = "".join(
        f"{LABELS.index(lab)} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} "
        f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}\n"
        for (x1, y1, x2, y2), lab in marks
    )
    annotation_path(root, "yolo", rel).write_text(lines, encoding="utf-8")


def add_coco(doc: dict[str, Any], rel: str, size: int, marks: list[Mark]) -> None:
    """One image and its annotations into a COCO document (CVAT's export: ids from 1, bbox [x, y, w, h])."""
    image_id = len(doc["images"]) + 1
    doc["images"].append({"id": image_id, "width": size, "height": size, "file_name": rel, "license": 0})
    for (x1, y1, x2, y2), lab in marks:
        doc["annotations"].append(
            {
                "id": len(doc["annotations"]) + 1,
                "image_id": image_id,
                "category_id": LABELS.index(lab) + 1,
                "segmentation": [],
                "area": (x2 - x1) * (y2 - y1),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
            }
        )


WRITERS = {"txt": write_txt, "labelme": write_labelme, "voc": write_voc, "yolo": write_yolo}
YOLO_NAMES = "labels/classes.txt"  # labelImg keeps it in the label folder
COCO_JSON = "annotations/instances_default.json"


def generate(root: Path, n: int, size: int, fmt: str = "txt", seed: int = 0) -> int:
    """n images: n//2 abnormal (jpg + their annotations in ``fmt``) and the rest normal (png, no annotation),
    50 images per folder; returns the number of boxes written. The pictures, boxes and labels depend on the
    seed only, not on ``fmt``; with txt the files are those of the benchmark before --format."""
    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    n_abn = n // 2
    coco: dict[str, Any] = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "version": "", "year": ""},
        "categories": [{"id": i + 1, "name": lab, "supercategory": ""} for i, lab in enumerate(LABELS)],
        "images": [],
        "annotations": [],
    }
    boxes = 0
    for i in tqdm(range(n), desc=f"generate ({fmt})", unit="img"):
        img = picture(pixels, size)
        if i < n_abn:
            rel = f"batch{i // 50:04d}/a{i:06d}.jpg"
            (root / "abnormal" / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / "abnormal" / rel, quality=80)
            marks: list[Mark] = []
            for _ in range(rng.randint(1, 3)):
                w, h = rng.randint(6, size // 4), rng.randint(6, size // 4)
                x, y = rng.randint(0, size - w), rng.randint(0, size - h)
                marks.append(((x, y, x + w, y + h), rng.choice(LABELS)))
            boxes += len(marks)
            if fmt == "coco":
                add_coco(coco, rel, size, marks)
            else:
                WRITERS[fmt](root, rel, size, marks)
        else:
            d = root / "normal" / f"scene{(i - n_abn) // 50:04d}"
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"n{i:06d}.png")
    if fmt == "yolo":
        (root / YOLO_NAMES).parent.mkdir(parents=True, exist_ok=True)
        (root / YOLO_NAMES).write_text("".join(f"{lab}\n" for lab in LABELS), encoding="utf-8")
    elif fmt == "coco":
        (root / COCO_JSON).parent.mkdir(parents=True, exist_ok=True)
        (root / COCO_JSON).write_text(json.dumps(coco), encoding="utf-8")
    return boxes


def format_keys(data: Path, fmt: str) -> dict[str, Any]:
    """The data.yaml keys of the format (none for txt: the config of the benchmark before --format)."""
    if fmt == "txt":
        return {}
    keys: dict[str, Any] = {"annotation_format": fmt}
    if fmt == "voc":
        keys["annotations_dir"] = str(data / "Annotations")
    elif fmt == "yolo":
        keys["annotations_dir"] = str(data / "labels")
        keys["yolo_names"] = str(data / YOLO_NAMES)
    elif fmt == "coco":
        keys["coco_json"] = str(data / COCO_JSON)
    return keys


def floor(root: Path) -> None:
    """Every image header and every annotation file read with its format's standard parser (the least any
    converter must do): txt (the seed's and YOLO's, classes.txt included) bytes + decode, json (labelme per
    image, COCO's one file) json.load, xml (VOC) ElementTree.parse."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            if name.endswith(".txt"):
                with open(p, "rb") as fh:
                    fh.read().decode("utf-8")
            elif name.endswith(".json"):
                with open(p, "rb") as fh:
                    json.load(fh)
            elif name.endswith(".xml"):
                ET.parse(p)
            else:
                with Image.open(p) as im:
                    _ = im.size


def check(report: dict[str, Any], n: int, boxes: int | None) -> list[str]:
    """What is wrong with a convert of the generated data: every box read, every image used, no problem."""
    errors = []
    read = report["boxes"]["read"]
    if boxes is not None and read != boxes:
        errors.append(f"boxes read {read}, but {boxes} were generated")
    inputs = report["inputs"]
    used = (inputs["abnormal_images_used"], inputs["normal_images_used"])
    if used != (n // 2, n - n // 2):
        errors.append(f"images used (abnormal, normal) {used}, generated {(n // 2, n - n // 2)}")
    if report["problems"]:
        first = "; ".join(json.dumps(p, ensure_ascii=False) for p in report["problems"][:3])
        errors.append(f"{len(report['problems'])} problem(s) {report['problem_counts']}: {first}")
    return errors


# the steps --breakdown times: (module, attribute path, what it is); the survey runs inside the walk, so it
# is taken out of it
STEPS = (
    ("prepare", "_Collector.walk", "listing the folders and the header survey"),
    ("images", "ImageFixer.survey", "  of which the header survey (every image header)"),
    ("prepare", "_Collector.abnormal", "annotations read, paired and checked against their images"),
    ("prepare", "_Collector.normal", "normal images checked"),
    ("prepare", "_resolve_labels", "labels resolved"),
    ("prepare", "_assign_splits", "groups and splits"),
    ("prepare", "_samples", "candidate drawing (samples and their regions)"),
    ("prepare", "position_audit", "position audit (at most 1,000 images: a fixed cost)"),
    ("prepare", "split_stats", "split statistics"),
    ("prepare", "check_records", "contract check of every regions sample"),
    ("prepare", "write_jsonl", "regions_*.jsonl written"),
    ("build_sft", "build_into", "build-sft (prompt texts, sharegpt records written)"),
)


def breakdown(cfg: dict[str, Any]) -> list[tuple[str, float]]:
    """CPU seconds of this process in each step of one convert (STEPS), and the rest, with timers wrapped
    around them (hashing workers, with --all-cores, are not counted)."""
    import importlib

    from qwenvl_roi.converters.convert import convert

    spent: dict[str, float] = dict.fromkeys((s[1] for s in STEPS), 0.0)
    undo = []
    for module, path, _ in STEPS:
        owner: Any = importlib.import_module(f"qwenvl_roi.converters.{module}")
        *parents, name = path.split(".")
        for part in parents:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        def timer(*args: Any, _f: Any = original, _key: str = path, **kwargs: Any) -> Any:
            t = time.process_time()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[_key] += time.process_time() - t

        setattr(owner, name, timer)
        undo.append((owner, name, original))
    try:
        t0 = time.process_time()
        convert(cfg, progress=False)
        total = time.process_time() - t0
    finally:
        for owner, name, original in undo:
            setattr(owner, name, original)
    rows = [(what, spent[path]) for _, path, what in STEPS]
    counted = sum(v for (_, path, _), (_, v) in zip(STEPS, rows, strict=True) if path != "ImageFixer.survey")
    return [*rows, ("the rest (report, labels, staging, dataset_info)", total - counted), ("total", total)]


HEADER = (
    "| format | images | size | near_duplicates | floor CPU (annotations + headers) "
    "| prepare + build-sft CPU | ratio (CPU) | wall floor / convert (ratio) "
    "| rerun with the hash cache, CPU (ratio) | boxes |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)


def best(runs: list[tuple[float, float, Any]]) -> tuple[float, float]:
    """The smallest wall and the smallest CPU time over the rounds."""
    return min(r[0] for r in runs), min(r[1] for r in runs)


def machine() -> str:
    cpu = cpu_model()
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}; nproc {os.cpu_count()}; Python {platform.python_version()}; {system}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="number of images (half abnormal, half normal)")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument(
        "--format",
        choices=FORMATS,
        default="txt",
        help="annotation format of the abnormal images (default: txt, the seed's messy txt)",
    )
    ap.add_argument(
        "--workdir",
        default=None,
        help="where to generate (default: a temporary folder, removed); data of a format is kept in "
        "data/ (txt) or data-FORMAT/ and reused",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best of each is kept")
    ap.add_argument("--all-cores", action="store_true", help="do not pin the process to one core")
    ap.add_argument(
        "--near-duplicates",
        choices=("off", "report", "group"),
        default="report",
        help="the near_duplicates setting (default: report, the converters' default)",
    )
    ap.add_argument(
        "--breakdown", action="store_true", help="one more convert, timed step by step (printed as a table)"
    )
    ap.add_argument("--write-results", default=None, help="append a result row to this markdown file")
    args = ap.parse_args()
    fmt = args.format

    from qwenvl_roi.converters.convert import convert

    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="roi-bench-"))
    try:
        data = work / ("data" if fmt == "txt" else f"data-{fmt}")
        manifest = work / f"{data.name}.generated.json"  # outside data/: neither converted nor in the floor
        if not data.exists():
            generated = generate(data, args.n, args.size, fmt)
            manifest.write_text(json.dumps({"n": args.n, "size": args.size, "boxes": generated}), "utf-8")
        made = json.loads(manifest.read_text("utf-8")) if manifest.exists() else {}
        expected = made.get("boxes") if made.get("n") == args.n and made.get("size") == args.size else None
        cfg = {
            "abnormal_dir": str(data / "abnormal"),
            "normal_dir": str(data / "normal"),
            **format_keys(data, fmt),
            "out_dir": str(work / "prepared"),
            "dataset_info_dir": str(work / "dataset_info"),
            "min_box_size": 4,
            "label_map": {"crack": "裂缝", "spall": "掉块", "渗漏": "渗漏"},
            "near_duplicates": args.near_duplicates,
        }
        cache = work / "prepared" / "image_cache" / "near_duplicates.json"
        floor_t, conv_t = [], []
        for _ in range(args.rounds):  # interleaved, best of each: the machine may be shared
            floor_t.append(timed(floor, data))
            cache.unlink(missing_ok=True)  # every round hashes every picture
            conv_t.append(timed(convert, cfg, progress=False))
        _, rc, _ = timed(convert, cfg, progress=False)  # the cache of the last round: nothing decoded
        (fw, fc), (cw, cc) = best(floor_t), best(conv_t)
        n, report = args.n, conv_t[-1][2]["prepare"]
        boxes = report["boxes"]["read"]
        rerun = f"{rc:.2f} s ({rc / fc:.2f}x)" if args.near_duplicates != "off" else "-"
        row = (
            f"| {fmt} | {n} | {args.size}x{args.size} | {args.near_duplicates} "
            f"| {fc:.2f} s ({n / fc:,.0f} img/s) | {cc:.2f} s ({n / cc:,.0f} img/s) | **{cc / fc:.2f}x** "
            f"| {fw:.2f} s / {cw:.2f} s ({cw / fw:.2f}x) | {rerun} | {boxes} |"
        )
        print(f"machine: {machine()}")
        print(f"pinned to one core: {not args.all_cores}")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        print(HEADER, end="")
        print(row)
        errors = check(report, n, expected)
        if expected is None:
            print(f"note: {data} was made before (no {manifest.name} for this --n/--size): boxes unchecked")
        if errors:
            bar = "!" * 100
            lines = "\n".join(f"  - {e}" for e in errors)
            print(
                f"{bar}\nERROR: the {fmt} convert does not match the generated data (no result written):\n"
                f"{lines}\n{bar}",
                file=sys.stderr,
            )
            sys.exit(1)
        if args.breakdown:  # a run like the timed rounds: the hash cache removed first
            cache.unlink(missing_ok=True)
            print("\n| step | CPU s (this process) |\n|---|---|")
            for what, secs in breakdown(cfg):
                print(f"| {what} | {secs:.2f} |")
        if args.write_results:
            path = Path(args.write_results)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(
                    "# Converter throughput\n\n`python bench/convert_throughput.py --n N [--format F] "
                    "--write-results bench/results/converters.md`: one process pinned to one core; the ratio "
                    "is taken on the process's CPU time (the machine is shared, so wall time is also shown); "
                    "target: prepare + build-sft within 3x of the floor of its format.\n\n",
                    encoding="utf-8",
                )
            with path.open("a", encoding="utf-8") as fh:
                fh.write(
                    f"Machine: {machine()}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
                )
                fh.write(f"1-minute load average at the end of the run: {os.getloadavg()[0]:.2f}\n\n")
                fh.write(HEADER)
                fh.write(row + "\n\n")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
