"""Scoring mode versus generate mode on the same samples: samples/s, their ratio, and agreement.

    .venv/bin/python bench/scoring_vs_generate.py                      # tiny model, trained here on CPU
    .venv/bin/python bench/scoring_vs_generate.py --model M [--adapter A] --regions regions_test.jsonl

Without --model it builds a synthetic dataset and a tiny Qwen2.5-VL, fine-tunes it briefly with
`llamafactory-cli train` (LoRA + lm_head, so greedy answers follow the format) and measures on it.
Agreement: for every sample whose generated answer parses, the words generation wrote (image line and every
region) must equal scoring's `image_verdict` and `greedy` words; the count of differing answers is reported
(0 expected: scoring follows the greedy path).
Results are appended to bench/results/evaluation.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model  # noqa: E402

LABELS = ["crack", "seepage", "spalling"]


def make_dataset(root: Path, n_train: int, n_test: int, max_regions: int = 8, seed: int = 0) -> Path:
    """Textured grey images with dark patches in some candidate regions, converted with build_record."""
    import numpy as np
    from PIL import Image
    from qwenvl_roi.converters.build_sft import dataset_info_entry
    from qwenvl_roi.converters.config import DataConfig, PromptTexts
    from qwenvl_roi.converters.meta import build_meta
    from qwenvl_roi.converters.prompt import build_record

    rng = np.random.default_rng(seed)
    meta = build_meta(
        DataConfig(
            image_max_pixels=112 * 112,
            prompt_language="en",
            prompts=PromptTexts(system="Inspect.", region_instruction="Regions ({labels}):"),
        ),
        LABELS,
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_meta.json").write_text(meta.model_dump_json(indent=2), encoding="utf-8")
    info = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows, records = [], []
        for k in range(n):
            arr = rng.integers(110, 150, (112, 112, 3), dtype=np.uint8)
            regions = []
            for i in range(int(rng.integers(2, max_regions + 1))):
                x, y = int(rng.integers(0, 80)), int(rng.integers(0, 80))
                positive = bool(rng.random() < 0.3)
                if positive:
                    arr[y : y + 24, x : x + 24] = 20
                label = LABELS[int(rng.integers(3))] if positive else None
                regions.append(
                    {"id": f"R{i + 1}", "box": [x, y, x + 24, y + 24], "label": label, "positive": positive}
                )
            path = root / f"{split}_{k}.png"
            Image.fromarray(arr).save(path)
            pos = [r["id"] for r in regions if r["positive"]]
            sample = {
                "sample_id": f"{path.name}#0",
                "image": str(path),
                "width": 112,
                "height": 112,
                "split": split,
                "group": split,
                "source": "abnormal" if pos else "normal",
                "regions": regions,
                "positive_region_ids": pos,
            }
            rows.append(sample)
            records.append(build_record(sample, meta))
        (root / f"regions_{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
        )
        (root / f"sft_{split}.json").write_text(json.dumps(records), encoding="utf-8")
        info[f"roi_{split}"] = dataset_info_entry(f"sft_{split}.json")
    (root / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return root


def train_tiny(work: Path, data: Path, steps: int) -> Path:
    """Tiny Qwen2.5-VL + LoRA (with lm_head) trained by `llamafactory-cli train`, merged by `export`."""
    import yaml

    from qwenvl_roi.tiny_model import build_tiny_model

    base = build_tiny_model(work / "base", "qwen2_5_vl")
    exe = str(Path(sys.executable).parent / "llamafactory-cli")
    env = dict(os.environ, DISABLE_VERSION_CHECK="1")
    train = {
        "model_name_or_path": str(base),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "additional_target": "lm_head",
        "dataset": "roi_train",
        "dataset_dir": str(data),
        "template": "qwen2_vl",
        "cutoff_len": 2048,
        "image_max_pixels": 112 * 112,
        "output_dir": str(work / "adapter"),
        "per_device_train_batch_size": 4,
        "max_steps": steps,
        "learning_rate": 5.0e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 20,
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "seed": 0,
    }
    export = {
        "model_name_or_path": str(base),
        "adapter_name_or_path": str(work / "adapter"),
        "finetuning_type": "lora",
        "template": "qwen2_vl",
        "export_dir": str(work / "merged"),
        "export_device": "cpu",
    }
    for name, cfg in (("train", train), ("export", export)):
        (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
        subprocess.run([exe, name, f"{name}.yaml"], cwd=work, env=env, check=True, capture_output=True)
    return work / "merged"


def measure(
    model: str, adapter: str | None, regions: Path, limit: int, batch_size: int, repeats: int = 3
) -> dict:
    """Time both modes on the same samples (after one warm-up batch each) and compare verdicts."""
    from qwenvl_roi.inference.cli import load_samples
    from qwenvl_roi.inference.predictor import RegionPredictor

    samples = load_samples(regions)[:limit]
    predictor = RegionPredictor.load(model, adapter=adapter, meta=regions)
    predictor.score_samples(samples[:batch_size], batch_size=batch_size, progress=False)
    predictor.generate_samples(samples[:batch_size], batch_size=batch_size, progress=False)
    # best of `repeats` interleaved runs: the machine is shared, the minimum is the least disturbed
    t_score = t_gen = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        scored = predictor.score_samples(samples, batch_size=batch_size, progress=False)
        t_score = min(t_score, time.perf_counter() - t0)
        t0 = time.perf_counter()
        generated = predictor.generate_samples(samples, batch_size=batch_size, progress=False)
        t_gen = min(t_gen, time.perf_counter() - t0)
    # the part both modes share and that does not grow with model size: prompt ids, image preprocessing
    # (once per image) and the collator's batch
    enc, engine = predictor.encoder, predictor.backend  # the "hf" backend: its collator
    t_pre = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(samples), batch_size):
            prompts = [enc.prompt(s) for s in samples[i : i + batch_size]]
            engine._collate([(p.images, list(p.ids)) for p in prompts])
            enc.images.clear()
        t_pre = min(t_pre, time.perf_counter() - t0)
    normal = predictor.meta.normal_word
    compared = differ = unparsed = flagged = 0
    for s, g in zip(scored, generated, strict=True):
        if g["missing"] or g["unparsed"] or g["extra"] or g["image_verdict"] is None:
            unparsed += 1
            continue
        compared += 1
        words = [g["image_verdict"]] + [r["label"] or normal for r in g["regions"]]
        differ += words != [s["image_verdict"]] + [r["greedy"] for r in s["regions"]]
        flagged += sum(w != normal for w in words[1:])
    return {
        "samples": len(samples),
        "regions": sum(len(s["regions"]) for s in samples),
        "batch_size": batch_size,
        "repeats": repeats,
        "score_samples_per_s": len(samples) / t_score,
        "generate_samples_per_s": len(samples) / t_gen,
        "speedup": t_gen / t_score,
        "parsed_answers": compared,
        "answers_differing_from_scoring": differ,
        "unparsed_answers": unparsed,
        "regions_written_abnormal": flagged,
        "device": str(predictor.device),
        "preprocess_s": t_pre,
        "model_side_speedup": (t_gen - t_pre) / max(t_score - t_pre, 1e-9),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--regions", default=None)
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; the fastest counts")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--max-regions", type=int, default=8, help="candidates per synthetic sample: 2..N")
    parser.add_argument("--keep", default=None, help="keep the synthetic data and models in this folder")
    parser.add_argument("--label", default=None, help="how to describe --model in the results table")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluation.md"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="bench-hf-"))
    with tempfile.TemporaryDirectory(prefix="bench-svg-") as tmp:
        if args.model is None:
            work = Path(args.keep) if args.keep else Path(tmp)
            data = make_dataset(work / "data", n_train=96, n_test=args.limit, max_regions=args.max_regions)
            t0 = time.perf_counter()
            model, adapter, regions = (
                str(train_tiny(work, data, args.train_steps)),
                None,
                data / "regions_test.jsonl",
            )
            took = time.perf_counter() - t0
            setup = f"tiny Qwen2.5-VL, LoRA+lm_head trained {args.train_steps} steps ({took:.0f} s)"
        else:
            model, adapter, regions = args.model, args.adapter, Path(args.regions)
            setup = args.label or (f"model {model}" + (f" + adapter {adapter}" if adapter else ""))
        r = measure(model, adapter, regions, args.limit, args.batch_size, args.repeats)
    print(json.dumps(r, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        ""
        if out.exists()
        else (
            "# Evaluation benchmarks\n\n## Scoring mode vs generate mode (`bench/scoring_vs_generate.py`)\n\n"
            "`model-side` excludes the prompt/image preprocessing both modes share "
            "(it does not grow with model size).\n\n"
        )
    )
    table = (
        "\n| date (UTC) | machine | setup | device | samples | regions | batch | score samples/s "
        "| generate samples/s | speed-up | model-side speed-up | parsed answers differing from scoring "
        "| unparsed answers | regions written abnormal |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    machine = f"{os.cpu_count()} CPUs ({cpu_model()})"
    line = (
        f"| {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} | {machine} | {setup} | {r['device']} "
        f"| {r['samples']} | {r['regions']} | {r['batch_size']} | {r['score_samples_per_s']:.2f} "
        f"| {r['generate_samples_per_s']:.2f} | {r['speedup']:.1f}x | {r['model_side_speedup']:.1f}x "
        f"| {r['answers_differing_from_scoring']}/{r['parsed_answers']} "
        f"| {r['unparsed_answers']}/{r['samples']} | {r['regions_written_abnormal']} |\n"
    )
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    if "parsed answers differing from scoring" not in text:
        header += table  # the table of the greedy-consistent scoring (2026-11-30 on)
    with out.open("a", encoding="utf-8") as fh:
        fh.write(header + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
