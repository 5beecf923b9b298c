"""The end-to-end CPU demo: synthetic data -> convert -> phase 1/2/3 through llamafactory-cli -> eval.

Why: a new user must see the whole system work (and learn) before they own a GPU or a model. Every step
is the real tool a user would run: `qwenvl-roi tiny-model`, `scan-labels`, `convert`, the stock
`llamafactory-cli train recipes/phaseN.yaml key=value ...` and `llamafactory-cli export`, then
`qwenvl-roi predict` and `eval` with the threshold chosen on val. The test split is only ever predicted
and scored, never trained on or used to choose anything.

The learning schedule follows ../shared/notes/demo-learning-notes.md: a tiny random-weight model must train
its vision tower, projector and output head; an image-level stage comes before the region stage, and
image-level samples stay in the mix afterwards. Phase 1 (vision frozen) teaches the answer format,
phase 2 (vision LoRA on every block) is the image-level stage, phase 3 (every vision block unfrozen)
trains on region and image-level samples together.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qwenvl_roi.errors import DemoError, OutputError
from qwenvl_roi.families import DEFAULT_TINY_ARCH, TINY_ARCHES, tiny_arch
from qwenvl_roi.fileio import write_text
from qwenvl_roi.outputs import claim, legacy_json, mark

from .synth import LABEL_SPELLINGS, MANIFEST, SynthConfig, generate

REPO_ROOT = Path(__file__).resolve().parents[2]


# the folders every demo run starts over in (its data, prepared set and preview are replaced by their steps)
DEMO_STEP_FOLDERS = ("train", "models", "predictions", "eval", "tokenized", "preview")
DEMO_LEGACY = legacy_json(f"data/{MANIFEST}", "bad_lines", "n_images")  # a demo before the marker file


class PhaseSpec(BaseModel):
    """One training phase: which recipe, on which datasets, for how long, with which `roi_` settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    recipe: str
    export_recipe: str
    datasets: list[str]
    max_steps: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    # phases on the same datasets share one tokenized copy (LLaMA-Factory's tokenized_path), so the
    # multimodal preprocessing runs once per dataset mix, not once per phase
    tokenized: str
    overrides: dict[str, Any] = Field(default_factory=dict)


class DemoConfig(BaseModel):
    """Everything the demo does; the defaults are the measured `make demo` run (bench/results/demo.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    synth: SynthConfig = SynthConfig()
    arch: Literal[TINY_ARCHES] = DEFAULT_TINY_ARCH  # type: ignore[valid-type]  # tiny-model architecture
    model_size: str | dict[str, int] = "demo"
    seed: int = 42
    split_seed: int = 42
    batch_size: int = 8
    lora_rank: int = 16
    predict_batch_size: int = 8
    stage_check_auroc: float = 0.85
    preview_limit: int = Field(24, ge=0, description="samples in the annotation preview (problems first)")
    checkpoints: int = Field(
        0,
        ge=0,
        description="evaluations on roi_val (with the verdict metrics) and checkpoints per phase, every "
        "max_steps // checkpoints steps; the best by best_metric is loaded and handed on (0: none, the last "
        "weights go on, as in the measured demo)",
    )
    best_metric: str = Field(
        "eval_roi_auroc", description="with checkpoints: the metric_for_best_model (the recipes' by default)"
    )
    phases: list[PhaseSpec] = Field(
        default_factory=lambda: [
            PhaseSpec(
                name="phase1",
                recipe="recipes/phase1.yaml",
                export_recipe="recipes/export_phase1.yaml",
                datasets=["roi_train", "roi_image_train"],
                tokenized="mix",
                max_steps=40,
                learning_rate=1e-3,
                overrides={"roi_lr_language": 1e-3, "roi_lr_projector": 1e-3},
            ),
            PhaseSpec(
                name="phase2",
                recipe="recipes/phase2.yaml",
                export_recipe="recipes/export_phase2.yaml",
                datasets=["roi_image_train"],
                tokenized="image",
                max_steps=300,
                learning_rate=1e-3,
                overrides={
                    "roi_vision_lora_top_blocks": 4,
                    "roi_lr_language": 1e-3,
                    "roi_lr_projector": 1e-3,
                    "roi_lr_vision_lora": 1e-3,
                },
            ),
            PhaseSpec(
                name="phase3",
                recipe="recipes/phase3.yaml",
                export_recipe="recipes/export_phase3.yaml",
                datasets=["roi_train", "roi_image_train"],
                tokenized="mix",
                max_steps=200,
                learning_rate=3e-4,
                overrides={
                    "roi_vision_lora_top_blocks": 0,
                    "roi_lr_vision_lora": None,
                    "roi_vision_unfreeze_top_blocks": 4,
                    "roi_lr_language": 3e-4,
                    "roi_lr_projector": 3e-4,
                    "roi_lr_vision_unfrozen": 3e-4,
                },
            ),
        ]
    )


def _bin(name: str) -> str:
    """A console script of the running environment (the venv's llamafactory-cli / qwenvl-roi)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def _env(out: Path) -> dict[str, str]:
    """Offline Hugging Face, caches inside the output folder, the venv's scripts first on PATH."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("HF_HOME", str(out / "hf_home"))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    # One compute thread per training process, the data loader in a second process: on a small shared CPU
    # two spinning OpenMP threads cost several times their work; a fixed count also keeps runs repeatable.
    env.setdefault("OMP_NUM_THREADS", "1")
    env["DISABLE_VERSION_CHECK"] = env.get("DISABLE_VERSION_CHECK", "0")
    return env


def _fmt(value: Any) -> str:
    """A key=value override value as llamafactory-cli reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if value is None:
        return "null"
    text = str(value)
    if text.lower() in {"no", "yes", "on", "off", "true", "false", "null", "y", "n", "~"}:
        return f'"{text}"'  # the override is read as YAML: keep words like `no` strings
    return text


class Runner:
    """Runs steps, logs each command's output to a file, times everything."""

    def __init__(self, out: Path, quiet: bool) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = _env(out)
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[demo] {text}", flush=True)

    def command(self, step: str, cmd: list[str]) -> None:
        """Run one external command; on failure raise with the log's tail."""
        log = self.logs / f"{step}.log"
        self.say(f"{step}: {' '.join(cmd[:4])} ... (log: {log.relative_to(self.out)})")
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        self.timings[step] = round(time.perf_counter() - start, 2)
        if proc.returncode != 0:
            tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
            raise DemoError(f"step {step} failed (exit {proc.returncode}); log {log}:\n{tail}")

    def timed(self, step: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        self.say(step)
        start = time.perf_counter()
        result = func(*args, **kwargs)
        self.timings[step] = round(time.perf_counter() - start, 2)
        return result


def family_recipe(recipe: str, arch: str) -> str:
    """The family's copy of a recipe: ``recipes/phase1.yaml`` -> ``recipes/<family>/phase1.yaml`` (its
    ``recipes_dir``; the Qwen2 families' is ``recipes/`` itself)."""
    fam = tiny_arch(arch)[0]
    return f"{fam.recipes_dir}/{Path(recipe).name}"


def data_config(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """The converters' configuration for the generated data (what a user writes in configs/data.yaml)."""
    label_map = {}
    for canonical, spellings in LABEL_SPELLINGS.items():
        target = {"crack": "裂缝", "seepage": "渗漏", "spalling": "掉块"}[canonical]
        for s in spellings:
            label_map[s.strip()] = target
    side = cfg.synth.size
    return {
        "abnormal_dir": str(out / "data" / "abnormal"),
        "normal_dir": str(out / "data" / "normal"),
        "out_dir": str(out / "prepared"),
        "dataset_info_dir": str(out / "dataset_info"),
        "seed": cfg.split_seed,
        "train_ratio": 0.7,
        "val_ratio": 0.1,
        "test_ratio": 0.2,
        "split_by_parent": True,
        "max_boxes_per_image": 6,
        "abnormal_neg_per_pos": 1,
        "normal_decoys_per_image": 4,
        "label_map": label_map,
        "model_family": tiny_arch(cfg.arch)[0].name,
        "image_max_pixels": side * side,
    }


def vocab_texts(meta: dict[str, Any]) -> list[str]:
    """Prompt and answer texts whose words should be single tokens of the tiny model."""
    words = [meta["normal_word"], meta["abnormal_word"], *meta["labels"]]
    texts = [meta["system_prompt"], meta["region_instruction"], meta["image_instruction"], meta["coord_desc"]]
    texts += [f"{meta['image_key']}: {w}" for w in words]
    texts += [f"{meta['region_id_prefix']}{i}: {w}" for i in range(1, 10) for w in words]
    return texts


def _train_overrides(cfg: DemoConfig, phase: PhaseSpec, model: Path, out_dir: Path, out: Path) -> list[str]:
    """key=value overrides that turn a GPU recipe into a tiny CPU run of the demo."""
    values: dict[str, Any] = {
        "model_name_or_path": model,
        "output_dir": out_dir,
        "overwrite_output_dir": True,
        "dataset_dir": out / "dataset_info",
        "dataset": phase.datasets,
        "tokenized_path": out / "tokenized" / phase.tokenized,
        "eval_dataset": None,
        "eval_strategy": "no",
        "load_best_model_at_end": False,
        "save_strategy": "no",
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "max_steps": phase.max_steps,
        "learning_rate": phase.learning_rate,
        "warmup_ratio": 0.05,
        "max_grad_norm": 1.0,
        "logging_steps": max(1, min(10, phase.max_steps // 5)),
        "image_max_pixels": cfg.synth.size * cfg.synth.size,
        "cutoff_len": 1024,
        "preprocessing_num_workers": 2,
        "dataloader_num_workers": 1,
        "lora_rank": cfg.lora_rank,
        "lora_alpha": 2 * cfg.lora_rank,
        "lora_dropout": 0.0,
        "additional_target": "lm_head",
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": "none",
        "plot_loss": True,
        **_checkpoint_overrides(cfg, phase),
        **phase.overrides,
    }
    return [f"{k}={_fmt(v)}" for k, v in values.items()]


def _checkpoint_overrides(cfg: DemoConfig, phase: PhaseSpec) -> dict[str, Any]:
    """With ``cfg.checkpoints``: the recipes' own evaluation and best-checkpoint keys, on roi_val, at the
    demo's scale (every kept checkpoint stays, so each can be scored afterwards)."""
    if not cfg.checkpoints:
        return {}
    steps = max(1, phase.max_steps // cfg.checkpoints)
    return {
        "eval_dataset": "roi_val",
        "eval_strategy": "steps",
        "eval_steps": steps,
        "save_strategy": "steps",
        "save_steps": steps,
        "save_total_limit": None,
        "per_device_eval_batch_size": cfg.batch_size,
        "roi_eval_verdicts": True,
        "load_best_model_at_end": True,
        "metric_for_best_model": cfg.best_metric,
        "greater_is_better": not cfg.best_metric.endswith("loss"),
    }


def run_demo(out: str | Path, cfg: DemoConfig | None = None, *, quiet: bool = False) -> dict[str, Any]:
    """Run every step into ``out``; returns the report dict (also written as report.json / report.md)."""
    return DemoRun(Path(out), cfg or DemoConfig(), quiet).run()


class DemoRun:
    """The demo, step by step: `run` reads top to bottom; each step is one method."""

    def __init__(self, out: Path, cfg: DemoConfig, quiet: bool) -> None:
        out = out.resolve()
        try:  # only a new or empty folder, or an earlier demo's: `demo --out .` must not delete ./data
            claim(out, "demo", legacy=DEMO_LEGACY, whole=False)  # it starts over in its own subfolders
        except OutputError as exc:
            raise DemoError(str(exc)) from None
        out.mkdir(parents=True, exist_ok=True)
        mark(out, "demo")
        self.out, self.cfg = out, cfg
        self.runner = Runner(out, quiet)
        self.prepared = out / "prepared"
        self.preview = out / "preview"
        from qwenvl_roi.cli import main

        self.main = main

    def run(self) -> dict[str, Any]:
        import torch

        from qwenvl_roi.tiny_model import build_tiny_model

        from .report import write_report

        out, cfg, run = self.out, self.cfg, self.runner
        # predict runs in this process: one thread, like the training subprocesses (OMP_NUM_THREADS=1); on
        # a small shared CPU two spinning threads made each scoring pass up to 10x slower
        torch.set_num_threads(1)
        wall = time.perf_counter()
        for stale in DEMO_STEP_FOLDERS:  # the demo's own folders: it starts over in them
            shutil.rmtree(out / stale, ignore_errors=True)

        manifest, conv, meta = self.data()
        base = out / "models" / "base"
        run.timed(
            "tiny-model", build_tiny_model, base, cfg.arch,
            size=cfg.model_size, seed=cfg.seed, vocab_texts=vocab_texts(meta),
        )  # fmt: skip
        untrained = self.predict_and_eval("untrained", base)
        model, phases, checks = self.train(base)
        trained = self.predict_and_eval("trained", model, store_in_model=True)
        run.timings["total"] = round(time.perf_counter() - wall, 2)
        report = {
            "out": str(out),
            "config": cfg.model_dump(mode="json"),
            "data": {
                **_data_summary(manifest, conv, out / "scan_labels.json"),
                "preview": str(self.preview / "index.html") if cfg.preview_limit else None,
            },
            "phases": phases,
            "stage_check": checks,
            "metrics": {"untrained": untrained, "trained": trained},
            "timings_s": run.timings,
        }
        write_report(out, report)
        run.say(f"report: {out / 'report.md'}")
        return report

    def cli(self, step: str, argv: list[str]) -> None:
        """A timed qwenvl-roi subcommand, run in this process."""
        self.runner.timed(step, _cli, self.main, argv)

    def data(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Generate the data, scan its labels, convert it, preview it: (manifest, convert result, meta)."""
        from qwenvl_roi.converters.convert import convert

        out, cfg, run = self.out, self.cfg, self.runner
        manifest = run.timed("synth", generate, out / "data", cfg.synth, progress=not run.quiet)
        scan = ["scan-labels", "--abnormal-dir", str(out / "data" / "abnormal")]
        self.cli("scan-labels", [*scan, "--out", str(out / "scan_labels.json")])
        data_cfg = data_config(out, cfg)
        _write_yaml(out / "data.yaml", data_cfg)
        conv = run.timed("convert", convert, data_cfg, progress=not run.quiet)
        if cfg.preview_limit:
            self.cli(
                "preview",
                ["preview", "--config", str(out / "data.yaml"), "--out", str(self.preview),
                 "--limit", str(cfg.preview_limit)],
            )  # fmt: skip
        meta = json.loads((self.prepared / "dataset_meta.json").read_text(encoding="utf-8"))
        return manifest, conv, meta

    def train(self, base: Path) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
        """Every phase through the real llamafactory-cli train and export: (final model, phases, check)."""
        from .report import collect_phase

        out, cfg, run = self.out, self.cfg, self.runner
        phases: list[dict[str, Any]] = []
        model = base
        checks: dict[str, Any] = {}
        for phase in cfg.phases:
            train_dir = out / "train" / phase.name
            merged = out / "models" / f"{phase.name}-merged"
            run.command(
                f"train-{phase.name}",
                [_bin("llamafactory-cli"), "train", family_recipe(phase.recipe, cfg.arch),
                 *_train_overrides(cfg, phase, model, train_dir, out)],
            )  # fmt: skip
            run.command(
                f"export-{phase.name}",
                [_bin("llamafactory-cli"), "export", family_recipe(phase.export_recipe, cfg.arch),
                 f"model_name_or_path={model}", f"adapter_name_or_path={train_dir}", f"export_dir={merged}",
                 "export_device=cpu", "export_size=5", "trust_remote_code=false"],
            )  # fmt: skip
            phases.append(collect_phase(phase, train_dir, merged, run.timings))
            model = merged
            if phase.name == "phase2":
                checks = self.stage_check(model)
        return model, phases, checks

    def predict(self, step: str, model: Path, split: str, preds: Path) -> None:
        """Score one split's regions with `qwenvl-roi predict` on the CPU."""
        self.cli(
            step,
            ["predict", "--model", str(model), "--regions", str(self.prepared / f"regions_{split}.jsonl"),
             "--out", str(preds), "--batch-size", str(self.cfg.predict_batch_size), "--device", "cpu",
             "--no-progress"],
        )  # fmt: skip

    def predict_and_eval(self, tag: str, model: Path, store_in_model: bool = False) -> dict[str, Any]:
        """Val and test predictions, then eval with the threshold chosen on val."""
        from .report import read_metrics

        preds = self.out / "predictions" / tag
        for split in ("val", "test"):
            self.predict(f"predict-{tag}-{split}", model, split, preds / f"{split}.jsonl")
        eval_dir = self.out / "eval" / tag
        self.cli(
            f"eval-{tag}",
            [
                "eval",
                "--predictions", str(preds / "test.jsonl"),
                "--gold", str(self.prepared / "regions_test.jsonl"),
                "--val-predictions", str(preds / "val.jsonl"),
                "--val-gold", str(self.prepared / "regions_val.jsonl"),
                "--out", str(eval_dir),
                # the final model keeps its val threshold and prompt settings (README: use it elsewhere)
                *(["--model-dir", str(model)] if store_in_model else []),
            ],
        )  # fmt: skip
        return read_metrics(eval_dir)

    def stage_check(self, model: Path) -> dict[str, Any]:
        """After the image-level stage: image AUROC on VAL only (the blind test split is not looked at)."""
        from .report import read_metrics

        cfg = self.cfg
        preds = self.out / "predictions" / "after-phase2" / "val.jsonl"
        self.predict("predict-after-phase2-val", model, "val", preds)
        eval_dir = self.out / "eval" / "after-phase2-val"
        self.cli(
            "eval-after-phase2-val",
            ["eval", "--predictions", str(preds), "--gold", str(self.prepared / "regions_val.jsonl"),
             "--threshold", "0.5", "--out", str(eval_dir)],
        )  # fmt: skip
        metrics = read_metrics(eval_dir)
        auroc = metrics["image"]["auroc"]
        ok = auroc is not None and auroc >= cfg.stage_check_auroc
        if not ok:
            self.runner.say(
                f"WARNING: val image AUROC after phase 2 is {auroc}, below {cfg.stage_check_auroc}"
            )
        return {"val_image_auroc": auroc, "threshold": cfg.stage_check_auroc, "passed": ok}


def _cli(main: Any, argv: list[str]) -> None:
    """Run a qwenvl-roi subcommand in this process; a non-zero exit is an error."""
    code = main(argv)
    if code:
        raise DemoError(f"`qwenvl-roi {' '.join(argv)}` exited with {code}")


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    write_text(path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


def _data_summary(manifest: dict[str, Any], conv: dict[str, Any], scan_json: Path) -> dict[str, Any]:
    """Counts a reader wants: images, defects per kind, splits, the bad lines and whether all were flagged."""
    from qwenvl_roi.schemas.prepare_report import PrepareReport

    rep = PrepareReport.model_validate(conv["prepare"])  # prepare_report.json's contract (qwenvl_roi/schemas)
    flagged = {(Path(p.file).as_posix(), p.line) for p in rep.problems}
    planted = [(b["file"], b["line"]) for b in manifest["bad_lines"]]
    found = sum(any(f.endswith(file) and ln == line for f, ln in flagged) for file, line in planted)
    return {
        "images": manifest["n_images"],
        "defects_per_kind": manifest["defects_per_kind"],
        "boxes": rep.boxes.model_dump(mode="json"),
        "splits": {
            name: {k: getattr(split, k) for k in ("images", "abnormal_images", "normal_images", "samples")}
            for name, split in rep.splits
        },
        "sft_records": conv["build_sft"]["records"],
        "bad_lines_planted": len(planted),
        "bad_lines_flagged": found,
        "problem_counts": dict(rep.problem_counts),
        "scan_labels": str(scan_json),
        "label_chart": str(scan_json.with_suffix(".png")),
    }
