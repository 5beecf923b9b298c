"""Plugin overhead: phase 1 with the plugin versus the stock-LLaMA-Factory equivalent, in one run.

Both sides train the same parameters on the same tiny model and data (LoRA on the language model, projector
trained in full); the plugin side uses recipes/phase1.yaml's roi_ keys (per-group learning rates), the stock
side turns the plugin off (QWENVL_ROI_PLUGIN=0) and saves the projector with additional_target instead.
Runs alternate (stock, plugin, stock, ...) so machine load hits both alike; medians are reported.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/plugin_overhead.py [--steps 300] [--repeats 3]

Writes bench/results/plugin.md (with nproc and the CPU model) and prints the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _dataset(root: Path, n: int = 16) -> Path:
    """A small sharegpt dataset with images (LLaMA-Factory format, roi_meta as the converters write it)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        path = root / f"img{i}.png"
        Image.new("RGB", (56, 56), (40 + 10 * i, 90, 120)).save(path)
        verdict = "abnormal" if i % 2 else "normal"
        records.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": "<image>Judge the image.\n<regions> R1: [0, 0, 28, 28] </regions>",
                    },
                    {"role": "assistant", "content": f"image: {verdict}\nR1: {verdict}"},
                ],
                "images": [str(path)],
            }
        )
    (root / "train.json").write_text(json.dumps(records))
    meta = {
        "image_max_pixels": 1048576,
        "image_min_pixels": 1024,
        "model_family": "qwen2_5_vl",
        "meta_file": "dataset_meta.json",
    }
    entry = {
        "file_name": "train.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
        "roi_meta": meta,
    }
    (root / "dataset_info.json").write_text(json.dumps({"roi_train": entry}))
    return root


class _StepTimer:
    """Trainer callback (duck-typed) recording each optimizer step's duration and the first step's start."""

    def __init__(self) -> None:
        self.first_step_at: float | None = None
        self.durations: list[float] = []
        self._begin = 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
        self._begin = time.perf_counter()
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.durations.append(time.perf_counter() - self._begin)

    def __getattr__(self, name: str):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def _child(spec_file: str) -> int:
    """Inside the child interpreter: train through LLaMA-Factory's run_exp with a step timer."""
    spec = json.loads(Path(spec_file).read_text())
    from llamafactory.train.tuner import run_exp

    timer = _StepTimer()
    run_exp(spec["args"], callbacks=[timer])
    Path(spec["result"]).write_text(
        json.dumps({"first_step_at": timer.first_step_at, "durations": timer.durations})
    )
    return 0


def _ab_child(spec_file: str) -> int:
    """Same model, two optimizers (HF Trainer's default groups vs the plugin's), steps interleaved A/B/A/B.

    Interleaving at step granularity cancels the load drift of a shared machine; everything but the optimizer
    is the same object, which is all the plugin changes per step.
    """
    import torch
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer
    from llamafactory.train.trainer_utils import _get_decay_parameter_names, create_custom_optimizer
    from PIL import Image
    from transformers import AutoProcessor, Trainer

    spec = json.loads(Path(spec_file).read_text())
    model_args, _data_args, training_args, finetuning_args, _ = get_train_args(spec["args"])
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    model = load_model(tokenizer, model_args, finetuning_args, is_trainable=True)
    model.train()
    plugin_opt = create_custom_optimizer(model, training_args, finetuning_args)
    decay = set(_get_decay_parameter_names(model))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if n in decay], "weight_decay": training_args.weight_decay},
        {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
    ]
    optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    stock_opt = optim_cls(groups, **optim_kwargs)
    processor = AutoProcessor.from_pretrained(spec["args"]["model_name_or_path"])
    text = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "Judge. R1: [0, 0, 28, 28]"}],
            }
        ],
        add_generation_prompt=True,
    )
    batch = processor(
        text=[text, text], images=[Image.new("RGB", (56, 56), (90, 90, 90))] * 2, return_tensors="pt"
    )
    batch["labels"] = batch["input_ids"].clone()
    times: dict[str, list[float]] = {"stock": [], "plugin": []}
    for i in range(2 * spec["steps"]):
        side = "stock" if i % 2 == 0 else "plugin"
        optimizer = stock_opt if side == "stock" else plugin_opt
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times[side].append(time.perf_counter() - start)
    Path(spec["result"]).write_text(json.dumps({k: v[5:] for k, v in times.items()}))
    return 0


def _run_ab(model: Path, data: Path, work: Path, steps: int) -> dict[str, float]:
    """Run the interleaved A/B child; median ms per step for each optimizer."""
    out = work / f"ab-{time.monotonic_ns()}"
    spec = work / f"{out.name}.json"
    spec.write_text(
        json.dumps({"args": _recipe_args(model, data, out, 10), "steps": steps, "result": str(out) + ".json"})
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(work / "hf_home")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "DISABLE_VERSION_CHECK": "1", "OMP_NUM_THREADS": "1"})
    proc = subprocess.run(
        [sys.executable, __file__, "--ab-child", str(spec)], cwd=work, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"A/B run failed:\n{proc.stderr[-4000:]}")
    times = json.loads(Path(str(out) + ".json").read_text())
    return {side: 1000 * statistics.median(t) for side, t in times.items()}


def _recipe_args(model: Path, data: Path, out: Path, steps: int) -> dict:
    """recipes/phase1.yaml with the CPU/tiny-model overrides (no eval, no checkpoints)."""
    import yaml

    args = yaml.safe_load((REPO / "recipes" / "phase1.yaml").read_text())
    args.update(
        {
            "model_name_or_path": str(model),
            "dataset_dir": str(data),
            "output_dir": str(out),
            "use_cpu": True,
            "bf16": False,
            "report_to": "none",
            "max_steps": steps,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "no",
            "load_best_model_at_end": False,
            "logging_steps": 50,
            "plot_loss": False,
            "preprocessing_num_workers": 1,
            "dataloader_num_workers": 0,
            "warmup_ratio": 0.0,
            "cutoff_len": 512,
        }
    )
    args.pop("eval_dataset")
    return args


def _run(side: str, model: Path, data: Path, work: Path, steps: int) -> dict[str, float]:
    """One training in a fresh interpreter; start-up (spawn to first step) and median step time."""
    out = work / f"{side}-{time.monotonic_ns()}"
    args = _recipe_args(model, data, out, steps)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(work / "hf_home"),
        "CUDA_VISIBLE_DEVICES": "",
        "DISABLE_VERSION_CHECK": "1",
        "OMP_NUM_THREADS": "1",
    }
    if side == "stock":
        env["QWENVL_ROI_PLUGIN"] = "0"
        args = {k: v for k, v in args.items() if not k.startswith("roi_")}
        args["additional_target"] = "visual.merger"  # same trainable set: projector saved whole
    spec = work / f"{out.name}.json"
    spec.write_text(json.dumps({"args": args, "result": str(out) + ".result.json"}))
    spawned = time.time()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(spec)], cwd=work, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{proc.stderr[-4000:]}")
    result = json.loads(Path(str(out) + ".result.json").read_text())
    steady = result["durations"][5:]  # skip warm-up steps
    return {
        "ms_per_step": 1000 * statistics.median(steady),
        "ms_per_step_mean": 1000 * statistics.fmean(steady),
        "startup_s": result["first_step_at"] - spawned,
        "wall_s": wall,
    }


def _python_startup(plugin: bool, repeats: int = 15) -> float:
    """Median seconds of `python -c pass` (the .pth hook's cost in processes that never use LLaMA-Factory)."""
    env = {**os.environ, "QWENVL_ROI_PLUGIN": "1" if plugin else "0"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _machine() -> str:
    return f"nproc {os.cpu_count()}, CPU {cpu_model()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ab-child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "plugin.md")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    if args.ab_child:
        return _ab_child(args.ab_child)

    from qwenvl_roi.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="plugin-bench-") as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model", "qwen2_5_vl")
        data = _dataset(work / "data")
        results: dict[str, list[dict[str, float]]] = {"stock": [], "plugin": []}
        for i in range(args.repeats):
            for side in ("stock", "plugin"):
                results[side].append(_run(side, model, data, work, args.steps))
                print(f"repeat {i + 1} {side}: {results[side][-1]}", flush=True)
        ab = _run_ab(model, data, work, args.steps)
        print(f"interleaved A/B: {ab}", flush=True)
        py_off, py_on = _python_startup(False), _python_startup(True)

    med = {s: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for s, runs in results.items()}
    ratio = med["plugin"]["ms_per_step"] / med["stock"]["ms_per_step"]
    load = os.getloadavg()
    startup_delta = med["plugin"]["startup_s"] - med["stock"]["startup_s"]
    lines = [
        "# Plugin overhead (bench/plugin_overhead.py)",
        "",
        f"Machine: {_machine()}; load average {load[0]:.1f} at the end (shared machine: other jobs ran).",
        "Tiny Qwen2.5-VL (`qwenvl-roi tiny-model`, size test), recipes/phase1.yaml on CPU "
        f"(OMP_NUM_THREADS=1), {args.steps} steps at batch 2, {args.repeats} alternating repeats per side. "
        "Step time = median of per-step durations after 5 warm-up steps (Trainer callback); "
        "start-up = process spawn to first step.",
        "Stock = plugin off (QWENVL_ROI_PLUGIN=0), projector saved via additional_target, one learning rate.",
        "",
        "| side | ms/step (median) | ms/step (mean) | start-up s | wall s |",
        "|---|---:|---:|---:|---:|",
    ]
    for side in ("stock", "plugin"):
        m = med[side]
        row = (
            f"{m['ms_per_step']:.2f} | {m['ms_per_step_mean']:.2f} | {m['startup_s']:.2f} | {m['wall_s']:.2f}"
        )
        lines.append(f"| {side} | {row} |")
    ab_ratio = ab["plugin"] / ab["stock"]
    lines += [
        "",
        f"Whole-run step-time ratio plugin/stock: {ratio:.3f} (separate processes; on a loaded machine "
        "this swings by tens of percent between repeats in both directions, see the per-run medians below).",
        "",
        f"Interleaved A/B in one process (same model, forward + backward + clip + optimizer step, stock HF "
        f"optimizer groups and plugin groups alternating every step, {args.steps} steps each): "
        f"stock {ab['stock']:.2f} ms, plugin {ab['plugin']:.2f} ms, ratio **{ab_ratio:.3f}** "
        "(target <= 1.02). "
        "The optimizer is the only per-step code the plugin changes.",
        "",
        f"Start-up difference (plugin - stock): {startup_delta:+.2f} s.",
        f"`python -c pass`: {py_off * 1000:.1f} ms without the hook, {py_on * 1000:.1f} ms with it "
        f"({(py_on - py_off) * 1000:+.1f} ms).",
        "",
        "Per-run medians: "
        + json.dumps({s: [round(r["ms_per_step"], 2) for r in runs] for s, runs in results.items()}),
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
