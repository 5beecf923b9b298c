"""Benchmark: `qwenvl-roi eval` on a 20,000-image evaluation, gallery included, and opening the gallery.

Generates N gold samples (one picture each, 4 candidates, a quarter abnormal) with predictions from a
mediocre model (so there are thousands of mistakes to sort), dataset_meta.json beside the gold file, and
N picture files: hard links to a few camera-sized sources (distinct paths, real decoding, little disk).
Times, in this process:
  eval    = qwenvl_roi.evaluation.cli.evaluate (metrics, gallery with the default options, report, plots),
  gallery = the gallery part alone (qwenvl_roi.evaluation.gallery.write_gallery),
then opens gallery/index.html from disk in headless Chromium (Debian's package, as the tests do) and times
the page's load event and, after scrolling to the bottom, every thumbnail decoded.
Usage: python bench/gallery.py [--n 20000] [--size 2048x1536] [--format jpeg|png] [--write-results FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model  # noqa: E402

LABELS = ["裂缝", "渗水", "掉块"]
SOURCES = 24


def _source(w: int, h: int, seed: int) -> Image.Image:
    """A photo-like surface: smooth shading, texture noise and a few dark blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 110 + 40 * np.sin(xx / (w / 3.1) + seed) * np.cos(yy / (h / 2.3))
    arr = base[..., None] + rng.normal(0, 12, (h, w, 1)).astype(np.float32) + np.array([0, 4, 8], np.float32)
    for _ in range(4):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(20, 120)
        arr[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] *= 0.5
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def generate(root: Path, n: int, size: tuple[int, int], fmt: str) -> tuple[Path, Path]:
    """Pictures, regions_test.jsonl, dataset_meta.json and predictions.jsonl under root."""
    from qwenvl_roi.converters.config import DataConfig
    from qwenvl_roi.converters.meta import build_meta

    w, h = size
    ext = "jpg" if fmt == "jpeg" else "png"
    sources = []
    for k in range(SOURCES):
        path = root / "sources" / f"s{k}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if ext == "jpg":
            _source(w, h, k).save(path, quality=90)
        else:
            _source(w, h, k).save(path)
        sources.append(path)
    data = root / "prepared"
    (data / "images").mkdir(parents=True)
    (data / "dataset_meta.json").write_text(
        build_meta(DataConfig(), LABELS).model_dump_json(indent=2), "utf-8"
    )
    rng = np.random.default_rng(0)
    gold, preds = [], []
    for i in range(n):
        name = f"images/{i:06d}.{ext}"
        try:
            os.link(sources[i % SOURCES], data / name)
        except OSError:
            shutil.copyfile(sources[i % SOURCES], data / name)
        abnormal = i % 4 == 0
        regions, pred = [], []
        for j in range(4):
            x, y = int(rng.integers(0, w - 200)), int(rng.integers(0, h - 200))
            box = [x, y, x + int(rng.integers(40, 200)), y + int(rng.integers(40, 200))]
            positive = abnormal and j == 0
            label = LABELS[i % 3] if positive else None
            regions.append({"id": f"R{j + 1}", "box": box, "label": label, "positive": positive})
            score = float(rng.beta(5, 2) if positive else rng.beta(1, 6))
            wrong = rng.random() < 0.1  # one predicted label in ten is another class
            pred.append({"id": f"R{j + 1}", "score": score, "label": LABELS[(i + wrong) % 3]})
        sid = f"{i:06d}#0"
        gold.append({"sample_id": sid, "image": name, "width": w, "height": h, "regions": regions})
        preds.append({"sample_id": sid, "image": name, "regions": pred})
    (data / "regions_test.jsonl").write_text(
        "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gold), "utf-8"
    )
    (root / "predictions.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), "utf-8"
    )
    return root / "predictions.jsonl", data / "regions_test.jsonl"


def open_in_chromium(index: Path) -> tuple[float, float, int]:
    """(seconds to the load event, seconds until every thumbnail is decoded after scrolling through the
    page, images on it)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--headless", "--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            t0 = time.perf_counter()
            page.goto(index.resolve().as_uri(), wait_until="load")
            loaded = time.perf_counter() - t0
            # thumbnails load lazily: scroll through the page as a reader would, then wait for all of them
            page.evaluate(
                """async () => {
                    for (let y = 0; y < document.body.scrollHeight; y += window.innerHeight) {
                        window.scrollTo(0, y);
                        await new Promise(r => requestAnimationFrame(r));
                    }
                    window.scrollTo(0, document.body.scrollHeight);
                }"""
            )
            page.wait_for_function(
                "[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=120_000
            )
            decoded = time.perf_counter() - t0
            count = page.evaluate("document.images.length")
        finally:
            browser.close()
    return loaded, decoded, int(count)


def machine() -> str:
    return (
        f"{cpu_model()}; nproc {os.cpu_count()}; Python {platform.python_version()}; "
        f"{platform.system()} {platform.release()}"
    )


HEADER = (
    "| pictures evaluated | source pictures | gallery (shown / pages) | eval total wall (CPU) "
    "| gallery wall (CPU) | gallery size | Chromium: load event / all thumbnails decoded |\n"
    "|---|---|---|---|---|---|---|\n"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", default="2048x1536", help="source picture size WxH")
    ap.add_argument("--format", choices=["jpeg", "png"], default="jpeg", help="source picture format")
    ap.add_argument(
        "--workdir", default=None, help="where to generate (default: a temporary folder, removed)"
    )
    ap.add_argument("--write-results", default=None, help="append a result row to this markdown file")
    args = ap.parse_args()

    from qwenvl_roi.evaluation.cli import evaluate
    from qwenvl_roi.evaluation.gallery import GalleryOptions, write_gallery
    from qwenvl_roi.evaluation.metrics import compute_metrics
    from qwenvl_roi.evaluation.records import join

    size = tuple(int(v) for v in args.size.lower().split("x"))
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="roi-gallery-bench-"))
    try:
        pred, gold = generate(work, args.n, size, args.format)  # type: ignore[arg-type]
        out = work / "eval"
        w0, c0 = time.perf_counter(), time.process_time()
        metrics = evaluate(str(pred), str(gold), str(out), threshold=0.5)
        eval_w, eval_c = time.perf_counter() - w0, time.process_time() - c0
        regions = join(pred, gold)
        m = compute_metrics(regions, 0.5)
        w0, c0 = time.perf_counter(), time.process_time()
        write_gallery(m, regions, gold, work / "gallery-only", GalleryOptions())
        gal_w, gal_c = time.perf_counter() - w0, time.process_time() - c0
        g = metrics["gallery"]
        print(f"eval {eval_w:.1f} s wall ({eval_c:.1f} s CPU); gallery alone {gal_w:.1f} s ({gal_c:.1f} s)")
        nbytes = sum(p.stat().st_size for p in (out / "gallery").rglob("*") if p.is_file())
        loaded, decoded, n_img = open_in_chromium(out / "gallery" / "index.html")
        row = (
            f"| {args.n:,} | {size[0]}x{size[1]} {args.format.upper()} | {g['shown']} / {g['pages']} "
            f"| {eval_w:.1f} s ({eval_c:.1f} s) | {gal_w:.1f} s ({gal_c:.1f} s) | {nbytes / 2**20:.1f} MiB "
            f"| {loaded:.2f} s / {decoded:.2f} s ({n_img} images) |"
        )
        print(f"machine: {machine()}")
        print(f"mistakes: {g['by_category']}; load average at the end: {os.getloadavg()[0]:.2f}")
        print(HEADER, end="")
        print(row)
        if args.write_results:
            path = Path(args.write_results)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(
                    f"\nMachine: {machine()}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                )
                fh.write(f"1-minute load average at the end: {os.getloadavg()[0]:.2f}\n\n")
                fh.write(HEADER + row + "\n")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
