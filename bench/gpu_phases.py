"""GPU benchmark of the three training phases at Qwen2.5-VL-7B / Qwen3-VL-8B shape: memory, samples/s, MFU.

Why: users choose a fine-tuning setup by memory and speed on their card. This script builds a random-weight
model with the published Qwen2.5-VL-7B-Instruct (or 3B) or Qwen3-VL-8B-Instruct configuration, synthetic
1024-short-side images with 8 candidate regions (prompts by the converters' own builder, in the shape's model
family), and runs the family's real recipes (recipes/phase*.yaml, recipes/qwen3_vl/phase*.yaml, with
key=value overrides) through LLaMA-Factory's train entry for a fixed number of steps after warm-up: stock
phase-1 LoRA (plugin off, roi_ keys removed) as the baseline, then phase-1 LoRA, phase-1 QLoRA 4-bit,
phase 2 and phase 3 with the plugin. Results: results.json and results.md in --out.

`--quick` checks the whole path on CPU with a tiny shape in about a minute (`--shape qwen3_vl_quick`: the
Qwen3-VL path).
Examples:
  python bench/gpu_phases.py --quick --out runs/bench-quick
  python bench/gpu_phases.py --quick --shape qwen3_vl_quick --runs p1_qlora,p3 --out runs/bench-quick-q3
  python bench/gpu_phases.py --shape 7b --out runs/bench-7b --steps 5 --warmup 2
  python bench/gpu_phases.py --shape qwen3_vl_8b --out runs/bench-q3-8b
  python bench/gpu_phases.py --shape 7b --runs p1_lora --extra "p1_b4:p1_lora:per_device_train_batch_size=4"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ -> `gpu` package

from gpu.report import markdown_table, summarise  # noqa: E402
from gpu.shapes import ALL_SHAPES, QWEN3_VL_SHAPES, shape_family  # noqa: E402
from host import cpu_model  # noqa: E402

# name -> (recipe, plugin on, extra overrides); recipes are the Qwen2.5-VL ones, swapped for the shape's
# family's (recipe_for). The stock run is phase 1 with the plugin off and its roi_ keys removed, training the
# same parameters in stock terms (roi_train_projector = the projector modules as peft modules_to_save via
# additional_target, see stock_projector), so its cost is the baseline of the plugin's phase 1.
RUNS: dict[str, tuple[str, bool, dict[str, Any]]] = {
    "stock_p1_lora": ("recipes/phase1.yaml", False, {"additional_target": "model.visual.merger"}),
    "p1_lora": ("recipes/phase1.yaml", True, {}),
    "p1_qlora": ("recipes/phase1_qlora.yaml", True, {}),
    "p2": ("recipes/phase2.yaml", True, {}),
    "p3": ("recipes/phase3.yaml", True, {}),
}


def recipe_for(recipe_rel: str, shape: str) -> str:
    """The shape's family's version of a recipes/phase*.yaml path (recipes/qwen3_vl/... for Qwen3-VL)."""
    folder = shape_family(shape).recipes_dir
    return recipe_rel if folder == "recipes" else f"{folder}/{Path(recipe_rel).name}"


def stock_projector(shape: str) -> str:
    """additional_target that trains the shape's projector in stock terms: the merger, and for Qwen3-VL
    every deepstack merger (one per deepstack_visual_indexes entry of the shape's config)."""
    names = ["model.visual.merger"]
    if shape in QWEN3_VL_SHAPES:
        count = len(QWEN3_VL_SHAPES[shape]["vision_config"]["deepstack_visual_indexes"])
        names += [f"model.visual.deepstack_merger_list.{i}" for i in range(count)]
    return ",".join(names)


DEFAULT_RUNS = list(RUNS)

# Dense bf16 peak (no sparsity) by device name, TFLOP/s, from the vendors' datasheets (SXM parts).
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are ordinary files
    os.replace(tmp, path)


def parse_extra(spec: str) -> tuple[str, str, dict[str, Any]]:
    """`NAME:BASE:key=value,key=value` -> (name, base run, overrides); values parsed as YAML scalars."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or parts[1] not in RUNS:
        raise argparse.ArgumentTypeError(
            f"--extra {spec!r}: expected NAME:BASE[:k=v,...], BASE one of {list(RUNS)}"
        )
    overrides: dict[str, Any] = {}
    for item in filter(None, (parts[2] if len(parts) == 3 else "").split(",")):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--extra {spec!r}: {item!r} is not key=value")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return parts[0], parts[1], overrides


def _family_extra(extra: dict[str, Any], shape: str) -> dict[str, Any]:
    """A run's overrides with the stock projector target made the shape family's."""
    if extra.get("additional_target") == "model.visual.merger":
        return {**extra, "additional_target": stock_projector(shape)}
    return extra


def bench_overrides(ns: argparse.Namespace, model_dir: Path, data_dir: Path, run_dir: Path) -> dict[str, Any]:
    """Keys every run gets: our model and data, a fixed number of steps, no eval, no checkpoints."""
    o: dict[str, Any] = {
        "model_name_or_path": str(model_dir),
        "dataset_dir": str(data_dir),
        "dataset": "bench_train",
        "eval_dataset": None,
        "eval_strategy": "no",
        "load_best_model_at_end": False,
        "output_dir": str(run_dir / "out"),
        "overwrite_output_dir": True,
        "max_steps": ns.warmup + ns.steps + (1 if ns.profile else 0),
        "logging_steps": 1,
        "save_strategy": "no",
        "plot_loss": False,
        "report_to": "none",
        "image_max_pixels": ns.image_max_pixels,
        "image_min_pixels": ns.image_min_pixels,
        "per_device_train_batch_size": ns.batch,
        "gradient_accumulation_steps": ns.accum,
        "preprocessing_num_workers": ns.preprocessing_workers,
        "dataloader_num_workers": ns.dataloader_workers,
        "seed": 0,
    }
    if ns.quick:
        o.update({"bf16": False, "use_cpu": True})
    return o


def run_config(
    recipe: Path, plugin: bool, extra: dict[str, Any], common: dict[str, Any], run_dir: Path
) -> Path:
    """The YAML this run trains with: the recipe (without roi_ keys for stock runs) + overrides."""
    try:
        cfg = yaml.safe_load(recipe.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"{recipe}: cannot read recipe: {err}") from None
    if not isinstance(cfg, dict):
        raise SystemExit(f"{recipe}: expected a YAML mapping, got {type(cfg).__name__}")
    if not plugin:
        cfg = {k: v for k, v in cfg.items() if not k.startswith("roi_")}
        if cfg.get("metric_for_best_model", "eval_loss") != "eval_loss":  # verdict metrics need the plugin
            cfg.update(metric_for_best_model="eval_loss", greater_is_better=False)
    cfg.update(common)
    cfg.update(extra)
    cfg = {k: v for k, v in cfg.items() if v is not None}  # None = LLaMA-Factory's default (eval_dataset off)
    path = run_dir / "config.yaml"
    _write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def build_inputs(ns: argparse.Namespace, work: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Synthetic data, then the model folder (built in a child process so this one holds no GPU memory)."""
    from gpu.data import write_dataset

    data_dir = work / "data"
    n_samples = ns.batch * ns.accum * (ns.warmup + ns.steps) * 2
    t0 = time.perf_counter()
    summary = write_dataset(
        data_dir,
        model_family=shape_family(ns.shape).name,
        n_samples=n_samples,
        short_side=ns.short_side,
        n_regions=ns.regions,
        image_max_pixels=ns.image_max_pixels,
        image_min_pixels=ns.image_min_pixels,
        n_images=min(n_samples, 32),
    )
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    texts = summary.pop("texts")
    corpus = data_dir / "tokenizer_corpus.json"
    _write_text(corpus, json.dumps(texts, ensure_ascii=False))
    model_dir = work / f"model-{ns.shape}"
    info_file = model_dir / "bench_model_info.json"
    if not info_file.is_file():
        device = "cpu" if ns.quick else "cuda"
        dtype = "float32" if ns.quick else "bfloat16"
        code = (
            "import json,sys; from pathlib import Path; from gpu.shapes import build_model_dir; "
            f"texts=json.loads(Path({str(corpus)!r}).read_text()); "
            f"print(json.dumps(build_model_dir(Path({str(model_dir)!r}), {ns.shape!r}, texts, {device!r}, "
            f"{dtype!r})))"
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"building the {ns.shape} model failed:\n{proc.stderr[-4000:]}")
    summary["model"] = json.loads(info_file.read_text())
    return model_dir, data_dir, summary


def run_one(
    name: str,
    recipe: Path,
    plugin: bool,
    cfg_path: Path,
    run_dir: Path,
    ns: argparse.Namespace,
    timeout: float,
) -> dict[str, Any]:
    """One training process; returns its metrics (or the failure and the log's tail)."""
    metrics = run_dir / "metrics.json"
    metrics.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "bench" / "gpu" / "lf_train.py"), "--metrics", str(metrics)]
    cmd += ["--warmup", str(ns.warmup), "--exit-after-train"] + (["--plugin"] if plugin else [])
    cmd += (["--profile", str(run_dir / "profile.txt")] if ns.profile else []) + [str(cfg_path)]
    env = {**os.environ, "QWENVL_ROI_PLUGIN": "1" if plugin else "0", "DISABLE_VERSION_CHECK": "1"}
    t0 = time.perf_counter()
    log = run_dir / "train.log"
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=ROOT
            )
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = round(time.perf_counter() - t0, 1)
    result: dict[str, Any] = {"run": name, "recipe": str(recipe), "plugin": plugin, "wall_s": wall}
    if rc == 0 and metrics.is_file():
        result.update(status="ok", **json.loads(metrics.read_text()))
    else:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        result.update(status=f"failed (exit {rc})", log_tail=tail)
    print(f"[{name}] {result['status']} in {wall} s", flush=True)
    if result["status"] != "ok":
        print("\n".join(f"    {line}" for line in result["log_tail"]), flush=True)
    return result


def machine_info() -> dict[str, Any]:
    """Where the figures came from."""
    info: dict[str, Any] = {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version()}
    import importlib.metadata as md

    for pkg in ("torch", "transformers", "peft", "llamafactory", "accelerate", "bitsandbytes", "qwenvl-roi"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    return info


def peak_for(device: str, override: float | None) -> float | None:
    """Dense bf16 peak TFLOP/s of `device` (None on CPU or an unknown card)."""
    if override:
        return override
    return next((v for k, v in PEAK_TFLOPS.items() if k in device), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="CPU check with the tiny shape (sets the small defaults)"
    )
    p.add_argument("--shape", choices=list(ALL_SHAPES), help="model shape (default 7b; quick with --quick)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-gpu"), help="results and work folder")
    p.add_argument("--runs", default=",".join(DEFAULT_RUNS), help=f"comma list of {list(RUNS)}")
    p.add_argument(
        "--extra", action="append", default=[], type=parse_extra, help="NAME:BASE:k=v,... extra run"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed optimizer steps (default 2; 1 quick)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 4; 2 quick)")
    p.add_argument("--batch", type=int, default=None, help="per-device batch (default: 4 on GPU, 2 quick)")
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument(
        "--short-side", type=int, default=None, help="image short side px (default 1024; 224 quick)"
    )
    p.add_argument("--regions", type=int, default=8, help="candidate regions per image (default 8)")
    p.add_argument("--image-max-pixels", type=int, default=None, help="default 1048576 (50176 quick)")
    p.add_argument("--image-min-pixels", type=int, default=1024)
    p.add_argument("--preprocessing-workers", type=int, default=None, help="default 8 on GPU, 1 quick")
    p.add_argument("--dataloader-workers", type=int, default=None, help="default 4 on GPU, 0 quick")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default by device)"
    )
    p.add_argument("--profile", action="store_true", help="torch.profiler table of one extra step per run")
    p.add_argument(
        "--budget-s", type=float, default=None, help="skip runs that would start after this many s"
    )
    p.add_argument("--run-timeout-s", type=float, default=600.0, help="per-run limit (default 600)")
    ns = p.parse_args(argv)
    ns.shape = ns.shape or ("quick" if ns.quick else "7b")
    ns.batch = ns.batch or (2 if ns.quick else 4)
    ns.warmup = ns.warmup if ns.warmup is not None else (1 if ns.quick else 2)
    ns.steps = ns.steps or (2 if ns.quick else 4)
    if ns.warmup < 1 or ns.steps < 1:
        p.error("--warmup and --steps must be at least 1 (the first step compiles and allocates)")
    ns.short_side = ns.short_side or (224 if ns.quick else 1024)
    ns.image_max_pixels = ns.image_max_pixels or (50176 if ns.quick else 1048576)
    ns.preprocessing_workers = ns.preprocessing_workers or (1 if ns.quick else 8)
    if ns.dataloader_workers is None:
        ns.dataloader_workers = 0 if ns.quick else 4
    names = [r.strip() for r in ns.runs.split(",") if r.strip()]
    unknown = [r for r in names if r not in RUNS]
    if unknown:
        p.error(f"--runs: unknown {unknown}; known: {list(RUNS)}")

    t_start = time.perf_counter()
    out = ns.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HOME", str(out / "hf_home"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir, data_dir, inputs = build_inputs(ns, out / "work")
    print(f"inputs ready in {time.perf_counter() - t_start:.1f} s: {json.dumps(inputs['model'])}", flush=True)

    plan = [(n, *RUNS[n]) for n in names] + [
        (n, RUNS[b][0], RUNS[b][1], {**RUNS[b][2], **o}) for n, b, o in ns.extra
    ]
    plan = [
        (n, recipe_for(recipe, ns.shape), plugin, _family_extra(extra, ns.shape))
        for n, recipe, plugin, extra in plan
    ]
    results = []
    for name, recipe_rel, plugin, extra in plan:
        run_dir = out / "runs" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        elapsed = time.perf_counter() - t_start
        recipe = ROOT / recipe_rel
        if ns.budget_s is not None and elapsed > ns.budget_s:
            results.append(
                {"run": name, "recipe": recipe_rel, "plugin": plugin, "status": "skipped (budget)"}
            )
            continue
        if not recipe.is_file():
            results.append(
                {"run": name, "recipe": recipe_rel, "plugin": plugin, "status": "pending (no recipe)"}
            )
            continue
        common = bench_overrides(ns, model_dir, data_dir, run_dir)
        cfg_path = run_config(recipe, plugin, extra, common, run_dir)
        timeout = ns.run_timeout_s
        if ns.budget_s is not None:
            timeout = max(30.0, min(timeout, ns.budget_s + 60 - elapsed))
        res = run_one(name, Path(recipe_rel), plugin, cfg_path, run_dir, ns, timeout)
        res["overrides"] = extra
        results.append(res)

    device = next((r["device"] for r in results if r.get("device")), "cpu")
    peak = None if ns.quick else peak_for(device, ns.peak_tflops)
    rows = summarise(results, peak)
    report = {
        "machine": {**machine_info(), "device": device, "peak_bf16_tflops": peak},
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(ns).items()
            if k not in {"extra", "out"}
        },
        "inputs": inputs,
        "runs": rows,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    _write_text(out / "results.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    md = markdown_table(report)
    _write_text(out / "results.md", md)
    print(md, flush=True)
    return (
        0 if all(r["status"] == "ok" or r["status"].startswith(("pending", "skipped")) for r in rows) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
