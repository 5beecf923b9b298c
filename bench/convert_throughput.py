"""Benchmark: prepare + build-sft throughput (images/s) next to the floor (read every txt + image header).

Generates N synthetic small images (half abnormal with a txt of 1-3 boxes, half normal) in nested folders,
each a distinct picture (a seeded smooth pattern, so the near-duplicate check finds nothing and does its
full work), then times, in one process pinned to one core:
  floor   = read every txt file (bytes + decode) and every image header with PIL (no decoding),
  convert = qwenvl_roi.converters.convert (prepare + build-sft, all outputs written), with
            ``near_duplicates`` as --near-duplicates says; its hash cache is removed before each round, so
            every round decodes every picture, and one more run with the cache is timed after the rounds.
CPU time counts this process and its children (hashing workers, with --all-cores).
Usage: python bench/convert_throughput.py [--n 20000] [--size 64] [--near-duplicates off|report|group]
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
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model, timed  # noqa: E402

LABELS = ["crack", "Crack", "渗漏", "spall", "ＳＰＡＬＬ"]


def picture(rng: np.random.Generator, size: int) -> Image.Image:
    """A distinct smooth grey-brown pattern (an 8x8 random grid, upsampled) with a little noise."""
    coarse = rng.uniform(60, 190, (8, 8)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    grey = np.clip(smooth + rng.normal(0, 3, (size, size)), 0, 255)
    return Image.fromarray(np.stack([grey, grey * 0.97, grey * 0.9], axis=-1).astype(np.uint8))


def generate(root: Path, n: int, size: int, seed: int = 0) -> None:
    """n images: n//2 abnormal (jpg + txt) and the rest normal (png), 50 images per folder."""
    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    n_abn = n // 2
    for i in tqdm(range(n), desc="generate", unit="img"):
        img = picture(pixels, size)
        if i < n_abn:
            d = root / "abnormal" / f"batch{i // 50:04d}"
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"a{i:06d}.jpg", quality=80)
            lines = []
            for _ in range(rng.randint(1, 3)):
                w, h = rng.randint(6, size // 4), rng.randint(6, size // 4)
                x, y = rng.randint(0, size - w), rng.randint(0, size - h)
                lines.append(f"a{i:06d}.jpg；{x}，{y}，{x + w}，{y + h}；{rng.choice(LABELS)}")
            (d / f"a{i:06d}.txt").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
        else:
            d = root / "normal" / f"scene{(i - n_abn) // 50:04d}"
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"n{i:06d}.png")


def floor(root: Path) -> None:
    """Read every txt file and every image header (the least any converter must do)."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            if name.endswith(".txt"):
                with open(p, "rb") as fh:
                    fh.read().decode("utf-8")
            else:
                with Image.open(p) as im:
                    _ = im.size


HEADER = (
    "| images | size | near_duplicates | floor CPU (txt + headers) | prepare + build-sft CPU | ratio (CPU) "
    "| wall floor / convert (ratio) | rerun with the hash cache, CPU (ratio) | boxes |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
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
        "--workdir", default=None, help="where to generate (default: a temporary folder, removed)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best of each is kept")
    ap.add_argument("--all-cores", action="store_true", help="do not pin the process to one core")
    ap.add_argument(
        "--near-duplicates",
        choices=("off", "report", "group"),
        default="report",
        help="the near_duplicates setting (default: report, the converters' default)",
    )
    ap.add_argument("--write-results", default=None, help="append a result row to this markdown file")
    args = ap.parse_args()

    from qwenvl_roi.converters.convert import convert

    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="roi-bench-"))
    try:
        data = work / "data"
        if not data.exists():
            generate(data, args.n, args.size)
        cfg = {
            "abnormal_dir": str(data / "abnormal"),
            "normal_dir": str(data / "normal"),
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
        n, boxes = args.n, conv_t[-1][2]["prepare"]["boxes"]["read"]
        rerun = f"{rc:.2f} s ({rc / fc:.2f}x)" if args.near_duplicates != "off" else "-"
        row = (
            f"| {n} | {args.size}x{args.size} | {args.near_duplicates} | {fc:.2f} s ({n / fc:,.0f} img/s) "
            f"| {cc:.2f} s ({n / cc:,.0f} img/s) | **{cc / fc:.2f}x** "
            f"| {fw:.2f} s / {cw:.2f} s ({cw / fw:.2f}x) | {rerun} | {boxes} |"
        )
        print(f"machine: {machine()}")
        print(f"pinned to one core: {not args.all_cores}")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        print(HEADER, end="")
        print(row)
        if args.write_results:
            path = Path(args.write_results)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(
                    "# Converter throughput\n\n`python bench/convert_throughput.py --n N --write-results "
                    "bench/results/converters.md`: one process pinned to one core; the ratio is taken on the "
                    "process's CPU time (the machine is shared, so wall time is also shown); "
                    "target: prepare + build-sft within 3x of the floor.\n\n",
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
