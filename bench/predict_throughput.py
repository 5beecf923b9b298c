"""Throughput of `qwenvl-roi predict --boxes`: images/s, regions/s, and where the time goes.

    .venv/bin/python bench/predict_throughput.py                 # tiny random-weight Qwen2.5-VL on CPU
    .venv/bin/python bench/predict_throughput.py --images 400 --side 1024 --batch-size 8
    python bench/predict_throughput.py --shape 7b --device cuda --dtype bfloat16 --side 1024 --batch-size 16

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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model  # noqa: E402

LABELS = ["crack", "seepage", "spalling"]


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


def make_model(root: Path, side: int, shape: str, device: str, dtype: str) -> Path:
    """The model folder with the dataset_meta.json the converters would write for it: the tiny
    random-weight Qwen2.5-VL (`--shape tiny`), or a random-weight model of a published shape
    (`--shape 7b`: Qwen2.5-VL-7B, built by bench/gpu/shapes.py on `device`)."""
    from qwenvl_roi.converters.config import DataConfig
    from qwenvl_roi.converters.meta import build_meta

    from qwenvl_roi.demo.pipeline import vocab_texts
    from qwenvl_roi.tiny_model import build_tiny_model

    if shape == "tiny":
        meta = build_meta(DataConfig(image_max_pixels=side * side), LABELS)
        model = build_tiny_model(root / "model", "qwen2_5_vl", size="demo")
    else:
        from gpu.shapes import build_model_dir, shape_family

        meta = build_meta(
            DataConfig(model_family=shape_family(shape).name, image_max_pixels=side * side), LABELS
        )
        model = root / "model"
        build_model_dir(model, shape, vocab_texts(meta.model_dump()), device, dtype)
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


def measure(model: Path, boxes: Path, batch_size: int, out: Path, device: str, dtype: str | None) -> dict:
    """Run the predict job once with timers around model loading, image preprocessing and the model."""
    from qwenvl_roi.inference import detections, job
    from qwenvl_roi.inference.predictor import RegionPredictor

    loading, pre, fwd, passes = Timer(), Timer(), Timer(), [0]
    original_load, original_read = RegionPredictor.load, detections.load

    def load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        predictor = original_load(*args, **kwargs)
        images = predictor.encoder.images
        images.original = pre.wrap(images.original)  # LLaMA-Factory's resize + the image processor
        forward = predictor.backend.model.forward  # the "hf" backend's transformers model

        def counted(*a, **k):  # noqa: ANN002, ANN003, ANN202
            passes[0] += 1
            result = forward(*a, **k)
            if device.startswith("cuda"):  # the timer measures the kernels, not their launch
                import torch

                torch.cuda.synchronize()
            return result

        predictor.backend.model.forward = fwd.wrap(counted)
        return predictor

    RegionPredictor.load = loading.wrap(load)  # type: ignore[method-assign]
    detections.load = pre.wrap(original_read)  # reading the file, EXIF turn, 8-bit conversion
    try:
        predict = job.PredictJob(
            model=str(model), device=device, dtype=dtype, boxes=str(boxes), images=str(boxes.parent),
            out=str(out), batch_size=batch_size, progress=False,
        )  # fmt: skip
        t0 = time.perf_counter()
        assert job.run(predict) == 0
        total = time.perf_counter() - t0 - loading.seconds  # throughput excludes loading the model once
    finally:
        RegionPredictor.load = original_load  # type: ignore[method-assign]
        detections.load = original_read
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {
        "total_s": total,
        "model_load_s": loading.seconds,
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
    parser.add_argument("--shape", default="tiny", help="tiny, or a bench/gpu/shapes.py shape such as 7b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 on a GPU (default: the model's)")
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
        model = make_model(root, args.side, args.shape, args.device, args.dtype or "bfloat16")
        r = measure(model, boxes, args.batch_size, root / "pred.jsonl", args.device, args.dtype)
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
    model_name = "tiny Qwen2.5-VL (demo size)" if args.shape == "tiny" else f"{args.shape} shape"
    line = (
        f"| {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} | {os.cpu_count()} CPUs ({cpu_model()}), "
        f"{args.threads} threads | {model_name}, random weights, {args.device} {args.dtype or ''} "
        f"| {r['images']} "
        f"| {args.side} | {args.batch_size} | {r['images'] / t:.1f} | {r['regions'] / t:.1f} "
        f"| {r['prompts']} | {r['forward_passes']} | {r['preprocess_s'] / t:.0%} | {r['model_s'] / t:.0%} "
        f"| {(t - r['preprocess_s'] - r['model_s']) / t:.0%} |\n"
    )
    with out.open("a", encoding="utf-8") as fh:
        fh.write(header + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
