"""Benchmark: prepare + build-sft of a benchmark layout (MVTec AD) next to its floor.

A layout's boxes are in its masks, so the floor (the least any converter must do) is: read every image
header and decode every mask. Generates an MVTec AD tree of N images (categories of 200: half train/good,
half test/<defect type> with a PNG mask of 1-3 defects each, plus a speck below min_box_size), then times in
one process pinned to one core (best of --rounds, interleaved):
  floor   = every image header (PIL, no decoding) + every mask decoded (PIL load),
  convert = qwenvl_roi.converters.convert with dataset_layout: mvtec (near_duplicates off: the twin check
            has its own benchmark; workers as --workers, default 1).
Usage: python bench/layout_throughput.py [--n 4000] [--size 256] [--workers 1|0] [--all-cores]
       [--write-results FILE.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model, timed  # noqa: E402

HEADER = (
    "| images (masks) | size | workers | floor CPU (headers + masks decoded) | prepare + build-sft CPU "
    "| ratio (CPU) | wall floor / convert | boxes kept / dropped |\n|---|---|---|---|---|---|---|---|\n"
)


def generate(root: Path, n: int, size: int, seed: int = 0) -> int:
    """The MVTec AD tree; returns the number of masks."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (120, 120, 120))  # only its header is read (near_duplicates off)
    masks = 0
    for i in tqdm(range(n), desc="generate", unit="img"):
        cat = root / f"cat{i // 200:03d}"
        if i % 2 == 0:
            d = cat / "train" / "good"
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"{i:06d}.png")
            continue
        kind = ("scratch", "hole", "crack")[i % 3]
        d, g = cat / "test" / kind, cat / "ground_truth" / kind
        d.mkdir(parents=True, exist_ok=True)
        g.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{i:06d}.png")
        mask = np.zeros((size, size), np.uint8)
        for _ in range(rng.randint(1, 3)):
            w, h = rng.randint(8, size // 4), rng.randint(8, size // 4)
            x, y = rng.randint(0, size - w), rng.randint(0, size - h)
            mask[y : y + h, x : x + w] = 255
        mask[size - 3 :, size - 3 :] = 255  # a speck below min_box_size
        Image.fromarray(mask).save(g / f"{i:06d}_mask.png")
        masks += 1
    return masks


def floor(root: Path) -> None:
    """Every image header and every mask decoded."""
    for dirpath, _, names in os.walk(root):
        decode = os.path.basename(os.path.dirname(dirpath)) == "ground_truth"
        for name in names:
            with Image.open(os.path.join(dirpath, name)) as im:
                if decode:
                    im.load()
                else:
                    _ = im.size


def machine() -> str:
    return f"{cpu_model()}; nproc {os.cpu_count()}; Python {platform.python_version()}; {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="images (half good, half defect with a mask)")
    ap.add_argument("--size", type=int, default=256, help="image and mask side in pixels")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="the workers setting (mask-decoding processes; 0: null, by the work)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best of each is kept")
    ap.add_argument("--all-cores", action="store_true", help="do not pin the process to one core")
    ap.add_argument("--write-results", default=None, help="append a result row to this markdown file")
    args = ap.parse_args()

    from qwenvl_roi.converters.convert import convert

    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    work = Path(tempfile.mkdtemp(prefix="roi-layout-bench-"))
    try:
        data = work / "mvtec"
        masks = generate(data, args.n, args.size)
        cfg = {
            "dataset_layout": "mvtec",
            "dataset_root": str(data),
            "out_dir": str(work / "prepared"),
            "dataset_info_dir": str(work / "dataset_info"),
            "min_box_size": 4,
            "near_duplicates": "off",
            "workers": args.workers or None,
        }
        floor_t, conv_t = [], []
        for _ in range(args.rounds):
            floor_t.append(timed(floor, data))
            conv_t.append(timed(convert, cfg, progress=False))
        fw, fc = min(r[0] for r in floor_t), min(r[1] for r in floor_t)
        cw, cc = min(r[0] for r in conv_t), min(r[1] for r in conv_t)
        boxes = conv_t[-1][2]["prepare"]["boxes"]
        n = args.n
        row = (
            f"| {n} ({masks}) | {args.size}x{args.size} | {args.workers} | {fc:.2f} s ({n / fc:,.0f} img/s) "
            f"| {cc:.2f} s ({n / cc:,.0f} img/s) | **{cc / fc:.2f}x** | {fw:.2f} s / {cw:.2f} s "
            f"| {boxes['kept']} / {boxes['dropped']} |"
        )
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
        print(HEADER + row)
        if args.write_results:
            path = Path(args.write_results)
            new = not path.exists()
            with path.open("a", encoding="utf-8") as fh:
                if new:
                    fh.write(
                        "# Benchmark layouts: converter throughput\n\n`python bench/layout_throughput.py "
                        "--write-results bench/results/layouts.md`: an MVTec AD tree, one process pinned to "
                        "one core; the floor reads every image header and decodes every mask.\n\n"
                    )
                stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                fh.write(f"Machine: {machine()}; date {stamp}; load average {os.getloadavg()[0]:.2f}\n\n")
                fh.write(HEADER + row + "\n\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
