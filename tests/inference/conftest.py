"""Fixtures for inference tests: a small converted dataset, a LoRA adapter trained by
`llamafactory-cli train` on the tiny model, its merged `llamafactory-cli export` (session-wide), and
`backend_name`, every registered scoring backend in turn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from qwenvl_roi.inference.backend import backend_names, get_backend

# Labels that share their first bytes ("裂" is 3 bytes; the tiny tokenizer splits Chinese into bytes), so
# scoring must tell labels apart beyond their first token; one starts with a digit (Qwen's pre-tokenizer
# keeps the space before a digit as a token of its own) and one with a Latin letter.
LABELS = ["3D划痕", "crack", "渗水", "裂缝", "裂纹"]
IMAGE_MAX_PIXELS = 112 * 112
IMAGE_MIN_PIXELS = 1024


def _make_split(root: Path, split: str, n: int, rng: np.random.Generator) -> list[dict]:
    samples = []
    for k in range(n):
        w, h = int(rng.integers(90, 160)), int(rng.integers(80, 140))
        arr = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
        path = root / "images" / f"{split}_{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        n_regions = int(rng.integers(2, 5))
        regions = []
        for i in range(n_regions):
            x1, y1 = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
            box = [x1, y1, x1 + int(rng.integers(12, 30)), y1 + int(rng.integers(12, 30))]
            positive = bool(rng.random() < 0.3)
            if positive:
                arr[box[1] : box[3], box[0] : box[2]] = 20  # a dark patch: something to see
            regions.append(
                {
                    "id": f"R{i + 1}",
                    "box": box,
                    "label": LABELS[int(rng.integers(len(LABELS)))] if positive else None,
                    "positive": positive,
                }
            )
        Image.fromarray(arr).save(path)
        pos = [r["id"] for r in regions if r["positive"]]
        samples.append(
            {
                "sample_id": f"{path.name}#0",
                "image": str(path),
                "width": w,
                "height": h,
                "split": split,
                "group": split,
                "source": "abnormal" if pos else "normal",
                "regions": regions,
                "positive_region_ids": pos,
            }
        )
    return samples


def make_dataset(
    root: Path, model_family: str = "qwen2_5_vl", language: str = "en", short_prompts: bool = False
) -> Path:
    """regions_{train,val,test}.jsonl, dataset_meta.json, sft_*.json and dataset_info.json under root.

    `short_prompts` overrides the instruction texts with short ones (fewer tokens: faster CPU training).
    """
    from qwenvl_roi.converters.build_sft import dataset_info_entry
    from qwenvl_roi.converters.config import DataConfig, PromptTexts
    from qwenvl_roi.converters.meta import build_meta
    from qwenvl_roi.converters.prompt import build_record

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    meta = build_meta(
        DataConfig(
            image_max_pixels=IMAGE_MAX_PIXELS,
            image_min_pixels=IMAGE_MIN_PIXELS,
            model_family=model_family,
            prompt_language=language,
            prompts=PromptTexts(system="Inspect.", region_instruction="Regions ({labels}):")
            if short_prompts
            else PromptTexts(),
        ),
        LABELS,
    )
    (root / "dataset_meta.json").write_text(meta.model_dump_json(indent=2), encoding="utf-8")
    info = {}
    for split, n in (("train", 48), ("val", 10), ("test", 10)):
        samples = _make_split(root, split, n, rng)
        (root / f"regions_{split}.jsonl").write_text(
            "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8"
        )
        records = [build_record(s, meta) for s in samples]
        (root / f"sft_{split}.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        roi_meta = {
            "image_max_pixels": IMAGE_MAX_PIXELS,
            "image_min_pixels": IMAGE_MIN_PIXELS,
            "model_family": model_family,
            "meta_file": "dataset_meta.json",
        }
        info[f"roi_{split}"] = dataset_info_entry(f"sft_{split}.json", roi_meta)
    (root / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return root


def _cli(*args: str, cwd: Path) -> None:
    exe = Path(sys.executable).parent / "llamafactory-cli"
    env = dict(os.environ, DISABLE_VERSION_CHECK="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(params=backend_names())
def backend_name(request: pytest.FixtureRequest) -> str:
    """Every registered scoring backend by name (the registry is read when the tests are collected, so a
    backend added to it is tested by every test that takes this fixture); skipped with the backend's reason
    where it cannot run here (not installed, no GPU)."""
    reason = get_backend(request.param).unavailable()
    if reason is not None:
        pytest.skip(f"scoring backend {request.param!r}: {reason}")
    return request.param


@pytest.fixture(scope="session")
def scored_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small converted dataset (Qwen2.5-VL frame, zh prompts, labels sharing a prefix)."""
    return make_dataset(tmp_path_factory.mktemp("roi-data"), short_prompts=True)


@pytest.fixture(scope="session")
def lora_adapter(
    tiny_qwen2_5_vl: Path, scored_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A LoRA adapter (plus lm_head, which is random in the tiny model) from real `llamafactory-cli train`."""
    work = tmp_path_factory.mktemp("lora")
    cfg = {
        "model_name_or_path": str(tiny_qwen2_5_vl),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 8,
        "additional_target": "lm_head",
        "dataset": "roi_train",
        "dataset_dir": str(scored_dataset),
        "template": "qwen2_vl",
        "cutoff_len": 2048,
        "image_max_pixels": IMAGE_MAX_PIXELS,
        "image_min_pixels": IMAGE_MIN_PIXELS,
        "output_dir": str(work / "adapter"),
        "per_device_train_batch_size": 4,
        "max_steps": 80,
        "learning_rate": 5.0e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 10,
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "seed": 0,
        "dataloader_num_workers": 0,
        "preprocessing_num_workers": 1,
        "overwrite_cache": True,
    }
    (work / "train.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    _cli("train", "train.yaml", cwd=work)
    return work / "adapter"


@pytest.fixture(scope="session")
def merged_model(tiny_qwen2_5_vl: Path, lora_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`llamafactory-cli export` of base + adapter."""
    work = tmp_path_factory.mktemp("export")
    cfg = {
        "model_name_or_path": str(tiny_qwen2_5_vl),
        "adapter_name_or_path": str(lora_adapter),
        "finetuning_type": "lora",
        "template": "qwen2_vl",
        "export_dir": str(work / "merged"),
        "export_device": "cpu",
    }
    (work / "export.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    _cli("export", "export.yaml", cwd=work)
    return work / "merged"
