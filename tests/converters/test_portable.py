"""Portable outputs: convert on one machine, move the whole folder (data, out_dir, dataset_info), then train
with the real `llamafactory-cli` from somewhere else, and predict/eval still find every image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def test_moved_folder_trains_and_predict_eval_resolve_the_same_images(
    tmp_path: Path, files, tiny_qwen2_5_vl: Path
) -> None:
    from qwenvl_roi.evaluation.records import load_gold
    from qwenvl_roi.inference.cli import load_samples

    site = tmp_path / "workstation" / "site"
    files.simple(site, n_abnormal=6, n_normal=4, folders=2)
    grey = np.full((120, 160), 900, np.uint16)  # a 12-bit image: gets a cached copy under out_dir
    grey[40:80, 50:110] = 3500
    Image.fromarray(grey).save(site / "abn" / "batch0" / "mono.png")
    files.txt(site / "abn" / "batch0" / "mono.txt", "mono.png;50;40;110;80;crack\n")
    cfg = {
        "abnormal_dir": str(site / "abn"),
        "normal_dir": str(site / "nor"),
        "out_dir": str(site / "out"),
        "dataset_info_dir": str(site / "dataset_info"),
        "train_ratio": 1.0,
        "val_ratio": 0.0,
        "test_ratio": 0.0,
    }
    (site / "data.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "convert", "--config", str(site / "data.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr

    moved = tmp_path / "gpu-server" / "datasets" / "site"
    moved.parent.mkdir(parents=True)
    shutil.move(site, moved)
    assert not site.exists()

    regions = moved / "out" / "regions_train.jsonl"
    rows = [json.loads(x) for x in regions.read_text(encoding="utf-8").splitlines()]
    assert all(not Path(r["image"]).is_absolute() for r in rows)
    assert any(r["image"].startswith("image_cache/") for r in rows)
    records = json.loads((moved / "out" / "sft_train.json").read_text(encoding="utf-8"))
    # LLaMA-Factory joins each image to media_dir (= dataset_dir by default) and checks the file exists
    assert all(os.path.isfile(os.path.join(moved / "dataset_info", r["images"][0])) for r in records)

    # predict and eval resolve the moved paths identically
    predict_images = [s["image"] for s in load_samples(regions)]
    gold_images = [g.image for _, g in load_gold(regions)]
    assert predict_images == gold_images
    assert all(Path(p).is_file() and Path(p).is_relative_to(moved) for p in predict_images)

    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    overrides = {
        "model_name_or_path": tiny_qwen2_5_vl,
        "dataset_dir": moved / "dataset_info",
        "dataset": "roi_train",
        "eval_dataset": "null",
        "eval_strategy": '"no"',  # quoted: the override is read as YAML
        "load_best_model_at_end": "false",
        "save_strategy": '"no"',
        "output_dir": tmp_path / "train-out",
        "overwrite_output_dir": "true",
        "max_steps": 1,
        "use_cpu": "true",
        "bf16": "false",
        "gradient_checkpointing": "false",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "cutoff_len": 1024,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "lora_rank": 4,
        "lora_alpha": 8,
        "plot_loss": "false",
        "report_to": "none",
    }
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "CUDA_VISIBLE_DEVICES": "",
        "DISABLE_VERSION_CHECK": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cli = Path(sys.executable).with_name("llamafactory-cli")
    args = [str(cli), "train", str(REPO / "recipes" / "phase1.yaml")]
    args += [f"{k}={v}" for k, v in overrides.items()]
    train = subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
    log = train.stdout + train.stderr
    assert train.returncode == 0, log[-4000:]
    assert "does not exist in `media_dir`" not in log
    assert "'train_loss'" in log or "train_loss" in log
