"""Benchmark: prepare + build-sft throughput (images/s) next to the floor (read every txt + image header).

Generates N synthetic small images (half abnormal with a txt of 1-3 boxes, half normal) in nested folders,
then times, in one process pinned to one core:
  floor   = read every txt file (bytes + decode) and every image header with PIL (no decoding),
  convert = qwenvl_roi.converters.convert (prepare + build-sft, all outputs written).
Usage: python bench/convert_throughput.py [--n 20000] [--size 64] [--write-results FILE.md]
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

from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model  # noqa: E402

LABELS = ["crack", "Crack", "渗漏", "spall", "ＳＰＡＬＬ"]


def generate(root: Path, n: int, size: int, seed: int = 0) -> None:
    """n images: n//2 abnormal (jpg + txt) and the rest normal (png), 50 images per folder."""
    rng = random.Random(seed)
    n_abn = n // 2
    img = Image.new("RGB", (size, size), (120, 120, 120))
    for i in tqdm(range(n), desc="generate", unit="img"):
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
    "| images | size | floor CPU (txt + headers) | prepare + build-sft CPU | ratio (CPU) "
    "| wall floor / convert (ratio) | boxes |\n|---|---|---|---|---|---|---|\n"
)


def timed(func: Any, *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = func(*args, **kwargs)
    return time.perf_counter() - w0, time.process_time() - c0, result


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
        }
        floor_t, conv_t = [], []
        for _ in range(args.rounds):  # interleaved, best of each: the machine may be shared
            floor_t.append(timed(floor, data))
            conv_t.append(timed(convert, cfg, progress=False))
        (fw, fc), (cw, cc) = best(floor_t), best(conv_t)
        n, boxes = args.n, conv_t[-1][2]["prepare"]["boxes"]["read"]
        row = (
            f"| {n} | {args.size}x{args.size} | {fc:.2f} s ({n / fc:,.0f} img/s) "
            f"| {cc:.2f} s ({n / cc:,.0f} img/s) | **{cc / fc:.2f}x** "
            f"| {fw:.2f} s / {cw:.2f} s ({cw / fw:.2f}x) | {boxes} |"
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
