"""Synthetic defect images with candidate regions, turned into sharegpt records by the converters' own code.

Why: the benchmark needs inputs of the real task's size (1024-pixel short side, 8 candidate regions written
as text) without any real data. Each sample is a regions_*.jsonl-style dict (docs/architecture.md) and the
record comes from `qwenvl_roi.converters.prompt.build_record` with the default data config's prompt texts,
so the prompt and answer tokens per sample are those of the real task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwenvl_roi import fileio

LABELS = ("crack", "seepage", "spalling")


def _write_json(path: Path, obj: Any) -> None:
    fileio.write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _image(path: Path, width: int, height: int, seed: int, boxes: list[tuple[list[int], str | None]]) -> None:
    """A grey textured surface with dark/bright defects inside the positive boxes (JPEG)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    base = rng.normal(128, 12, size=(height // 8 + 1, width // 8 + 1)).clip(0, 255).astype("uint8")
    img = Image.fromarray(base, mode="L").resize((width, height), Image.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(img)
    for box, label in boxes:
        if label is None:
            continue
        x1, y1, x2, y2 = box
        if label == "crack":
            draw.line([(x1, y1), ((x1 + x2) // 2, y2), (x2, (y1 + y2) // 2)], fill=(40, 40, 40), width=3)
        elif label == "seepage":
            draw.ellipse([x1, y1, x2, y2], fill=(80, 80, 85))
        else:
            draw.rectangle([x1 + 4, y1 + 4, x2 - 4, y2 - 4], fill=(215, 215, 210))
    with fileio.atomic_open(path, "wb") as fh:
        img.save(fh, format="JPEG", quality=90)


def write_dataset(
    out_dir: Path,
    n_samples: int,
    short_side: int = 1024,
    aspect: float = 4 / 3,
    n_regions: int = 8,
    image_max_pixels: int = 1048576,
    image_min_pixels: int = 1024,
    n_images: int | None = None,
    prompt_language: str = "zh",
    seed: int = 0,
    model_family: str = "qwen2_5_vl",
) -> dict[str, Any]:
    """Write images, `sft_train.json`, `dataset_meta.json` and `dataset_info.json` (dataset `bench_train`).

    `n_images` distinct images (default: one per sample) are cycled through the samples. Half the images
    are abnormal (2 positive regions among `n_regions`). Returns a summary and the texts used to train the
    benchmark tokenizer.
    """
    import numpy as np
    from qwenvl_roi.converters.build_sft import dataset_info_entry
    from qwenvl_roi.converters.config import DataConfig
    from qwenvl_roi.converters.meta import build_meta
    from qwenvl_roi.converters.prompt import build_record

    meta = build_meta(
        DataConfig(
            model_family=model_family,
            image_max_pixels=image_max_pixels,
            image_min_pixels=image_min_pixels,
            prompt_language=prompt_language,
            max_boxes_per_image=max(n_regions, 2),
        ),
        list(LABELS),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    img_dir = out_dir / "images"
    img_dir.mkdir(exist_ok=True)
    width, height = int(round(short_side * aspect)), short_side
    rng = np.random.default_rng(seed)
    n_images = n_images or n_samples
    records, texts = [], []
    samples: dict[int, dict[str, Any]] = {}
    for i in range(n_samples):
        k = i % n_images
        if k not in samples:
            abnormal = k % 2 == 0
            regions = []
            for r in range(n_regions):
                bw, bh = (int(v) for v in rng.integers(short_side // 16, short_side // 5, size=2))
                x1, y1 = int(rng.integers(0, width - bw)), int(rng.integers(0, height - bh))
                label = str(rng.choice(LABELS)) if abnormal and r < 2 else None
                regions.append(
                    {"box": [x1, y1, x1 + bw, y1 + bh], "label": label, "positive": label is not None}
                )
            regions = [regions[j] for j in rng.permutation(n_regions)]
            for r, region in enumerate(regions):
                region["id"] = f"R{r + 1}"
            image = img_dir / f"img{k:04d}.jpg"
            _image(image, width, height, seed * 100003 + k, [(g["box"], g["label"]) for g in regions])
            samples[k] = {
                "sample_id": f"{image.name}#0",
                "image": str(image.resolve()),
                "width": width,
                "height": height,
                "split": "train",
                "source": "abnormal" if abnormal else "normal",
                "regions": regions,
                "positive_region_ids": [g["id"] for g in regions if g["positive"]],
            }
        record = build_record(samples[k], meta)
        records.append(record)
        texts.extend(m["content"] for m in record["messages"])
    _write_json(out_dir / "sft_train.json", records)
    _write_json(out_dir / "dataset_meta.json", meta.model_dump(mode="json"))
    roi_meta = {
        "image_max_pixels": image_max_pixels,
        "image_min_pixels": image_min_pixels,
        "model_family": model_family,
        "meta_file": "dataset_meta.json",
    }
    info = {"bench_train": dataset_info_entry("sft_train.json", roi_meta)}
    _write_json(out_dir / "dataset_info.json", info)
    return {
        "n_samples": n_samples,
        "n_images": n_images,
        "image_size": [width, height],
        "model_view_size": list(meta.frame_size(width, height)),
        "model_family": model_family,
        "n_regions": n_regions,
        "prompt_language": prompt_language,
        "texts": texts,
    }
