"""Which checkpoint does each criterion keep, and what does it give on the blind test? (issue #21)

    .venv/bin/python bench/best_checkpoint.py --out runs/best-ckpt --checkpoints 5 --best-metric eval_loss
    .venv/bin/python bench/best_checkpoint.py --out runs/best-ckpt-q --quick --best-metric eval_image_auroc

Runs the CPU demo (`qwenvl_roi.demo`, the real recipes through `llamafactory-cli`) with each phase
evaluated on roi_val ``--checkpoints`` times (eval_loss and the verdict metrics of ``roi_eval_verdicts``),
a checkpoint saved at each, and the one ``--best-metric`` picks loaded and handed on to the next phase. Then,
per phase, it reads every evaluation from trainer_state.json and names the checkpoint each criterion would
keep (eval_loss: lowest; eval_image_auroc / eval_roi_auroc: highest; the first of equals, as the Trainer),
and scores each kept checkpoint (base of that phase + the checkpoint's adapter) with `qwenvl-roi predict`
on val and test and `qwenvl-roi eval` (threshold chosen on val, applied to test): the blind-test figures
each choice leads to from the same starting point. The last checkpoint is scored too (what a run without
selection hands on). It also sums the evaluation time: the verdict scoring against eval_loss and training.
Writes ``<out>/best_checkpoint.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: shared helpers (host.py)

from host import cpu_model  # noqa: E402

CRITERIA = {"eval_loss": min, "eval_image_auroc": max, "eval_roi_auroc": max}
KEPT = ("step", "eval_loss", "eval_image_auroc", "eval_roi_auroc", "eval_roi_within_abnormal_auroc",
        "eval_image_f1_at_best_threshold", "eval_runtime", "eval_verdict_runtime")  # fmt: skip
KEPT = ("step", "eval_loss", "eval_image_auroc", "eval_roi_auroc", "eval_roi_within_abnormal_auroc",
        "eval_image_f1_at_best_threshold", "eval_runtime", "eval_verdict_runtime")  # fmt: skip


def pick(evaluations: list[dict[str, Any]], key: str) -> int:
    """The step the Trainer keeps for ``key`` (strictly better replaces: the first of equals stays)."""
    best = None
    better = (lambda a, b: a < b) if CRITERIA[key] is min else (lambda a, b: a > b)
    for e in evaluations:
        if best is None or better(e[key], best[key]):
            best = e
    assert best is not None
    return int(best["step"])


def blind_test(main: Any, base: Path, adapter: Path, prepared: Path, work: Path) -> dict[str, Any]:
    """predict val + test with base + adapter, eval test at the val threshold: the figures that matter."""
    for split in ("val", "test"):
        argv = ["predict", "--model", str(base), "--adapter", str(adapter), "--regions",
                str(prepared / f"regions_{split}.jsonl"), "--out", str(work / f"{split}.jsonl"),
                "--batch-size", "8", "--device", "cpu", "--no-progress"]  # fmt: skip
        assert main(argv) == 0, argv
    argv = ["eval", "--predictions", str(work / "test.jsonl"), "--gold", str(prepared / "regions_test.jsonl"),
            "--val-predictions", str(work / "val.jsonl"), "--val-gold", str(prepared / "regions_val.jsonl"),
            "--out", str(work / "eval"), "--gallery-limit", "0"]  # fmt: skip
    assert main(argv) == 0, argv
    m = json.loads((work / "eval" / "metrics.json").read_text(encoding="utf-8"))
    return {
        "threshold": m["threshold"],
        "image_auroc": m["image"]["auroc"],
        "image_f1": m["image"]["f1"],
        "roi_auroc": m["roi"]["auroc"],
        "roi_f1": m["roi"]["f1"],
        "roi_within_abnormal_auroc": m["roi_within_abnormal"]["auroc"],
    }


def analyse(report: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    from qwenvl_roi.cli import main

    prepared = out / "prepared"
    base = out / "models" / "base"
    phases = []
    for phase in report["phases"]:
        train_dir = Path(phase["train_dir"])
        evaluations = [e for e in phase["evaluations"] if "eval_image_auroc" in e]
        steps = [int(e["step"]) for e in evaluations]
        picks = {key: pick(evaluations, key) for key in CRITERIA}
        scored = {}
        for step in sorted({*picks.values(), max(steps)}):
            work = out / "best_checkpoint" / phase["name"] / f"step{step}"
            scored[step] = blind_test(main, base, train_dir / f"checkpoint-{step}", prepared, work)
        verdict_s = sum(e["eval_verdict_runtime"] for e in evaluations)
        eval_s = sum(e["eval_runtime"] for e in evaluations)
        phases.append(
            {
                "name": phase["name"],
                "base": str(base),
                "evaluations": [{k: e.get(k) for k in KEPT} for e in evaluations],
                "picks": picks,
                "kept": phase.get("best_model_checkpoint"),
                "blind_test": scored,
                "last_step": max(steps),
                "train_s": phase["train_s"],
                "eval_runtime_s": round(eval_s, 2),
                "verdict_runtime_s": round(verdict_s, 2),
            }
        )
        base = Path(phase["merged_model"])
    return phases


def markdown(result: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = [
        f"# Best checkpoint by loss or by verdicts ({result['when']}, {result['machine']})",
        "",
        f"demo: {result['demo']}, checkpoints per phase: {result['checkpoints']}, chain handed on by "
        f"`{result['best_metric']}`; total {result['total_s']:.0f} s",
        "",
        "| phase | step | eval_loss | val image AUROC | val ROI AUROC | val within AUROC | picked by |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result["phases"]:
        for e in p["evaluations"]:
            by = [k for k, s in p["picks"].items() if s == e["step"]]
            lines.append(
                f"| {p['name']} | {e['step']} | {f(e['eval_loss'])} | {f(e['eval_image_auroc'])} | "
                f"{f(e['eval_roi_auroc'])} | {f(e['eval_roi_within_abnormal_auroc'])} | {', '.join(by)} |"
            )
    lines += [
        "",
        "| phase | checkpoint | picked by | test image AUROC | image F1 | ROI AUROC | ROI F1 | within |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result["phases"]:
        for step, m in sorted(p["blind_test"].items(), key=lambda kv: int(kv[0])):
            by = [k for k, s in p["picks"].items() if s == int(step)]
            if int(step) == p["last_step"]:
                by.append("(last)")
            lines.append(
                f"| {p['name']} | {step} | {', '.join(by)} | {f(m['image_auroc'])} | {f(m['image_f1'])} | "
                f"{f(m['roi_auroc'])} | {f(m['roi_f1'])} | {f(m['roi_within_abnormal_auroc'])} |"
            )
    lines += ["", "| phase | train s | evaluations s (all) | of them verdict scoring s | share of train |",
              "|---|---|---|---|---|"]  # fmt: skip
    for p in result["phases"]:
        share = p["verdict_runtime_s"] / p["train_s"] if p["train_s"] else 0.0
        times = f"{p['train_s']} | {p['eval_runtime_s']} | {p['verdict_runtime_s']}"
        lines.append(f"| {p['name']} | {times} | {share:.1%} |")
    final = result["final"]
    lines += [
        "",
        f"chain's final model on the blind test: image AUROC {f(final['image_auroc'])}, "
        f"ROI AUROC {f(final['roi_auroc'])}, image F1 {f(final['image_f1'])}, ROI F1 {f(final['roi_f1'])}",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    from qwenvl_roi.demo.pipeline import DemoConfig, PhaseSpec, run_demo
    from qwenvl_roi.demo.presets import quick_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="the quick demo's data and model, more steps")
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--best-metric", default="eval_loss", choices=sorted(CRITERIA))
    args = parser.parse_args()
    cfg = DemoConfig()
    if args.quick:  # the quick demo trains 2 steps a phase: too few to choose among checkpoints
        cfg = quick_config()
        steps = {"phase1": 10, "phase2": 30, "phase3": 20}
        cfg = cfg.model_copy(
            update={
                "phases": [PhaseSpec(**{**p.model_dump(), "max_steps": steps[p.name]}) for p in cfg.phases]
            }
        )
    cfg = cfg.model_copy(update={"checkpoints": args.checkpoints, "best_metric": args.best_metric})
    out = Path(args.out).resolve()
    start = time.perf_counter()
    report = run_demo(out, cfg)
    phases = analyse(report, out)
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_model()}, CPU",
        "demo": "quick" if args.quick else "full",
        "checkpoints": args.checkpoints,
        "best_metric": args.best_metric,
        "total_s": time.perf_counter() - start,
        "demo_total_s": report["timings_s"]["total"],
        "final": {
            "image_auroc": report["metrics"]["trained"]["image"]["auroc"],
            "image_f1": report["metrics"]["trained"]["image"]["f1"],
            "roi_auroc": report["metrics"]["trained"]["roi"]["auroc"],
            "roi_f1": report["metrics"]["trained"]["roi"]["f1"],
        },
        "phases": phases,
    }
    (out / "best_checkpoint.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    text = markdown(result)
    (out / "best_checkpoint.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
