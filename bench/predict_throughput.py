"""Throughput of `qwenvl-roi predict --boxes`: images/s, regions/s, and where the time goes.

    .venv/bin/python bench/predict_throughput.py                 # tiny random-weight Qwen2.5-VL on CPU
    .venv/bin/python bench/predict_throughput.py --images 400 --side 1024 --batch-size 8

Synthetic detector output (textured images, 2-12 boxes each) scored through the real CLI code path
(`qwenvl_roi.inference.job`). Time is split by timers around the pieces: image preprocessing (reading the
file, LLaMA-Factory's resize and the processor: once per image), the model's forward passes (prefill and
continuations), and the rest (prompt text and tokens, collation, bookkeeping, writing). A random-weight model
answers non-normal often, so it needs more continuations than a trained one: an upper bound on their cost.
Results are appended to bench/results/predict.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model  # noqa: E402


def make_inputs(root: Path, n: int, side: int, seed: int = 0) -> tuple[Path, int]:
    """n textured JPEGs with 2-12 boxes each as detector JSONL; returns (boxes file, number of boxes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, total = [], 0
    for k in range(n):
        arr = rng.integers(90, 160, (side, side, 3), dtype=np.uint8)
        path = root / "images" / f"{k:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, quality=90)
        boxes = []
        for _ in range(int(rng.integers(2, 13))):
            w, h = int(rng.integers(side // 16, side // 4)), int(rng.integers(side // 16, side // 4))
            x, y = int(rng.integers(0, side - w)), int(rng.integers(0, side - h))
            boxes.append([x, y, x + w, y + h])
        total += len(boxes)
        rows.append({"image": f"images/{k:05d}.jpg", "boxes": boxes})
    boxes_file = root / "boxes.jsonl"
    boxes_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return boxes_file, total


def make_model(root: Path, side: int) -> Path:
    """A tiny Qwen2.5-VL and the dataset_meta.json the converters would write for it."""
    from qwenvl_roi.converters.config import DataConfig
    from qwenvl_roi.converters.meta import build_meta

    from qwenvl_roi.tiny_model import build_tiny_model

    model = build_tiny_model(root / "model", "qwen2_5_vl", size="demo")
    meta = build_meta(DataConfig(image_max_pixels=side * side), ["crack", "seepage", "spalling"])
    (model / "dataset_meta.json").write_text(meta.model_dump_json(indent=2), encoding="utf-8")
    return model


class Timer:
    """Wall time spent inside wrapped calls (not re-entrant)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, func):  # noqa: ANN001, ANN201
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def measure(model: Path, boxes: Path, batch_size: int, out: Path) -> dict:
    """Run the predict job once (after a warm-up batch) with timers around preprocessing and the model."""
    from qwenvl_roi.inference import job
    from qwenvl_roi.inference.predictor import RegionPredictor

    pre, fwd, passes = Timer(), Timer(), [0]
    original_load = RegionPredictor.load

    def load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        predictor = original_load(*args, **kwargs)
        images = predictor.encoder.images
        images.original = pre.wrap(images.original)
        forward = predictor.engine.model.forward

        def counted(*a, **k):  # noqa: ANN002, ANN003, ANN202
            passes[0] += 1
            return forward(*a, **k)

        predictor.engine.model.forward = fwd.wrap(counted)
        return predictor

    RegionPredictor.load = load  # type: ignore[method-assign]
    try:
        args = SimpleNamespace(
            model=str(model), adapter=None, meta=None, inference_config=None, device="cpu", dtype=None,
            boxes=str(boxes), images=str(boxes.parent), out=str(out), batch_size=batch_size,
            strict=False, no_progress=True,
        )  # fmt: skip
        t0 = time.perf_counter()
        assert job.run(args) == 0
        total = time.perf_counter() - t0
    finally:
        RegionPredictor.load = original_load  # type: ignore[method-assign]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {
        "total_s": total,
        "images": len(rows),
        "regions": sum(len(r["boxes"]) for r in rows),
        "prompts": sum(r["prompts"] for r in rows),
        "forward_passes": passes[0],
        "preprocess_s": pre.seconds,
        "model_s": fwd.seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--side", type=int, default=448, help="image side in pixels (square JPEGs)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "predict.md"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="bench-hf-"))
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = Path(tmp)
        boxes, _ = make_inputs(root / "data", args.images, args.side)
        model = make_model(root, args.side)
        r = measure(model, boxes, args.batch_size, root / "pred.jsonl")
    r.update(vars(args))
    print(json.dumps(r, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        ""
        if out.exists()
        else (
            "# `qwenvl-roi predict --boxes` throughput (`bench/predict_throughput.py`)\n\n"
            "| date (UTC) | machine | model | images | side | batch | images/s | regions/s | prompts "
            "| forward passes | preprocessing | model | rest |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
    )
    t = r["total_s"]
    line = (
        f"| {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} | {os.cpu_count()} CPUs ({cpu_model()}), "
        f"{args.threads} threads | tiny Qwen2.5-VL (demo size), random weights, cpu | {r['images']} "
        f"| {args.side} | {args.batch_size} | {r['images'] / t:.1f} | {r['regions'] / t:.1f} "
        f"| {r['prompts']} | {r['forward_passes']} | {r['preprocess_s'] / t:.0%} | {r['model_s'] / t:.0%} "
        f"| {(t - r['preprocess_s'] - r['model_s']) / t:.0%} |\n"
    )
    with out.open("a", encoding="utf-8") as fh:
        fh.write(header + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
