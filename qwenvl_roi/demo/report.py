"""The demo's short report: data summary, trainable groups per phase, losses, metrics before and after.

Why: the demo exists to show, honestly and at a glance, that the pipeline works and the model learns;
everything here is read back from files the real tools wrote (prepare report, trainable_params.json,
trainer_log.jsonl, metrics.json), nothing is recomputed or typed in; the project's own files are read through
their contracts (qwenvl_roi/schemas), so a renamed or missing figure fails here instead of printing "None".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qwenvl_roi.errors import ContractError
from qwenvl_roi.evaluation.report import fmt
from qwenvl_roi.fileio import load_json_model, write_text
from qwenvl_roi.schemas.metrics import Metrics
from qwenvl_roi.schemas.prepare_report import Boxes

EVAL_DIR = "eval_dir"  # the key read_metrics adds to the file's own


def read_metrics(eval_dir: Path) -> dict[str, Any]:
    """The metrics.json `qwenvl-roi eval` wrote, checked against its contract (qwenvl_roi/schemas), as the
    file holds it (plus where its pictures are): report.json keeps it whole."""
    path = Path(eval_dir) / "metrics.json"
    metrics = load_json_model(path, Metrics, ContractError, "metrics.json", f"{path}: not found")
    return {**metrics.model_dump(mode="json", exclude_unset=True), EVAL_DIR: str(eval_dir)}


def _metrics(entry: dict[str, Any]) -> Metrics:
    """One report.json metrics entry (read_metrics) as its model: every figure read by name, checked."""
    return Metrics.model_validate({k: v for k, v in entry.items() if k != EVAL_DIR})


def _losses(train_dir: Path) -> list[dict[str, float]]:
    """(step, loss) pairs from LLaMA-Factory's trainer_log.jsonl."""
    path = train_dir / "trainer_log.jsonl"
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "loss" in rec and rec["loss"] is not None:
                out.append({"step": int(rec["current_steps"]), "loss": float(rec["loss"])})
    return out


def collect_phase(phase: Any, train_dir: Path, merged: Path, timings: dict[str, float]) -> dict[str, Any]:
    """What one phase trained (the plugin's table), its loss curve, and its export."""
    table_path = train_dir / "trainable_params.json"
    table = json.loads(table_path.read_text(encoding="utf-8")) if table_path.is_file() else None
    losses = _losses(train_dir)
    return {
        "name": phase.name,
        "recipe": phase.recipe,
        "datasets": phase.datasets,
        "max_steps": phase.max_steps,
        "learning_rate": phase.learning_rate,
        "roi_overrides": {k: v for k, v in phase.overrides.items() if k.startswith("roi_")},
        "trainable": table,
        "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None,
        "losses": losses,
        "loss_plot": str(train_dir / "training_loss.png")
        if (train_dir / "training_loss.png").is_file()
        else None,
        "train_dir": str(train_dir),
        "merged_model": str(merged),
        "train_s": timings.get(f"train-{phase.name}"),
        "export_s": timings.get(f"export-{phase.name}"),
        **_evaluations(train_dir),
    }


def _evaluations(train_dir: Path) -> dict[str, Any]:
    """With checkpoints (DemoConfig.checkpoints): each evaluation's logged figures and the checkpoint kept."""
    state_path = train_dir / "trainer_state.json"
    if not state_path.is_file():
        return {}
    state = json.loads(state_path.read_text(encoding="utf-8"))
    evaluations = [e for e in state.get("log_history", []) if "eval_loss" in e]
    if not evaluations:
        return {}
    return {"evaluations": evaluations, "best_model_checkpoint": state.get("best_model_checkpoint")}


def _groups_text(table: Any) -> str:
    """One line per optimizer group from the plugin's trainable_params.json."""
    if not table:
        return "(no trainable_params.json)"
    rows = table.get("groups", table) if isinstance(table, dict) else table
    parts = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        name = row.get("group", row.get("name", "?"))
        params = row.get("params", row.get("num_params", row.get("parameters", "?")))
        lr = row.get("lr", row.get("learning_rate", "?"))
        parts.append(f"{name}: {params} params @ lr {lr}")
    return "; ".join(parts) if parts else json.dumps(table)[:300]


def _fmt(x: Any) -> str:
    """Demo tables round to 3 decimals (losses, seconds, metrics side by side); eval's own report to 4."""
    return fmt(x, digits=3)


def _rel(path: str | None, out: Path) -> str | None:
    return None if path is None else os.path.relpath(path, out)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: short, tables first, links to the pictures."""
    out = Path(report["out"])
    d = report["data"]
    boxes = Boxes.model_validate(d["boxes"])  # prepare_report.json's boxes section, as the summary kept it
    lines = ["# qwenvl-roi CPU demo", ""]
    lines += [
        "## Data (synthetic, generated in the users' messy format)",
        "",
        f"- {d['images']} images; defects drawn per kind: "
        + ", ".join(f"{k} {v}" for k, v in d["defects_per_kind"].items()),
        f"- boxes read {boxes.read}, kept {boxes.kept}, dropped {boxes.dropped}",
        f"- deliberately broken txt lines: {d['bad_lines_planted']}, flagged by the converters with file and"
        f" line: {d['bad_lines_flagged']} (see prepared/prepare_report.json);"
        f" problems by kind: {d['problem_counts']}",
        "- splits (by batch folder, seeded hash): "
        + "; ".join(
            f"{k}: {v['images']} images ({v['abnormal_images']} abnormal, {v['normal_images']} normal),"
            f" {v['samples']} region samples"
            for k, v in d["splits"].items()
        ),
        f"- SFT datasets: {d['sft_records']}",
        *(
            [
                f"- annotation preview (problems first, pictures as the model sees them): "
                f"[{_rel(d['preview'], out)}]({_rel(d['preview'], out)})"
            ]
            if d.get("preview")
            else []
        ),
        f"- label distribution: [{_rel(d['scan_labels'], out)}]({_rel(d['scan_labels'], out)})"
        + (
            f", chart [{_rel(d['label_chart'], out)}]({_rel(d['label_chart'], out)})"
            if d.get("label_chart")
            else ""
        ),
        "",
        "## Training (stock `llamafactory-cli` with the project's recipes and key=value overrides)",
        "",
        "| phase | datasets | steps | lr | roi_ settings | trainable groups | loss first -> last"
        " | time (train+export) | loss plot |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["phases"]:
        plot = _rel(p["loss_plot"], out)
        lines.append(
            f"| {p['name']} | {', '.join(p['datasets'])} | {p['max_steps']} | {p['learning_rate']:g} | "
            f"{p['roi_overrides']} | {_groups_text(p['trainable'])} | {_fmt(p['first_loss'])} -> "
            f"{_fmt(p['last_loss'])} | {_fmt(p['train_s'])} s + {_fmt(p['export_s'])} s | "
            + (f"[png]({plot})" if plot else "n/a")
            + " |"
        )
    check = report.get("stage_check") or {}
    if check:
        lines += [
            "",
            f"Check after the image-level stage (phase 2), on **val** only: image AUROC "
            f"{_fmt(check.get('val_image_auroc'))} (wanted >= {check.get('threshold')}): "
            + ("passed" if check.get("passed") else "NOT reached"),
        ]
    lines += [
        "",
        "## Blind test split (never trained on; threshold chosen on val)",
        "",
        "| model | image AUROC | image P / R / F1 | ROI P / R / F1 | ROI AUROC | ROI AUROC within abnormal "
        "images | threshold | pictures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tag, entry in report["metrics"].items():
        m = _metrics(entry)
        img, roi = m.image, m.roi
        ev = _rel(entry[EVAL_DIR], out)
        lines.append(
            f"| {tag} | {_fmt(img.auroc)} | {_fmt(img.precision)} / {_fmt(img.recall)} / "
            f"{_fmt(img.f1)} | {_fmt(roi.precision)} / {_fmt(roi.recall)} / {_fmt(roi.f1)} | "
            f"{_fmt(roi.auroc)} | {_fmt(m.roi_within_abnormal.auroc)} | {_fmt(m.threshold)} | "
            f"[ROC]({ev}/roc.png) [PR]({ev}/pr.png) [confusion]({ev}/confusion.png)"
            + (f" [gallery]({ev}/{m.gallery.index})" if m.gallery else "")
            + f" [report]({ev}/report.md) |"
        )
    t = report["timings_s"]
    lines += [
        "",
        "## What this shows, honestly",
        "",
        *_verdict_lines(report),
        "",
        f"Total wall time: {_fmt(t.get('total'))} s. Per step: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k != "total"),
        "",
    ]
    return "\n".join(lines)


def _verdict_lines(report: dict[str, Any]) -> list[str]:
    """Plain-language reading of the numbers, derived from them (never a fixed claim)."""
    untrained, trained = (_metrics(report["metrics"][tag]) for tag in ("untrained", "trained"))
    before, after = untrained.image.auroc, trained.image.auroc
    roi_after = trained.roi.auroc
    if before is None or after is None:
        return ["- The test split has a single class here, so AUROC is undefined (a scaled-down run)."]
    lines = [f"- Blind test image AUROC went from {before:.3f} (untrained random model) to {after:.3f}."]
    if after >= 0.9 and before < 0.7:
        lines.append(
            "- The image-level verdict is learnt from the pixels; no test image was ever trained on."
        )
    elif after > before + 0.1:
        lines.append(f"- The model learnt something, but stayed below the 0.9 goal (reached {after:.3f}).")
    else:
        lines.append("- The model did NOT learn the image-level verdict in this run; see the loss plots.")
    if roi_after is not None:
        lines.append(
            f"- Region-level AUROC after training: {roi_after:.3f}. A tiny random-weight model learns mostly"
            " *whether* an image is defective, not reliably *which* candidate region holds the defect;"
            " region verdicts largely follow the image verdict."
        )
    lines.append("- Verdicts come from thresholded verdict-token probabilities (one teacher-forced pass).")
    return lines


def write_report(out: Path, report: dict[str, Any]) -> None:
    """report.json (everything) and report.md (the short version), atomically."""
    write_text(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    write_text(out / "report.md", render_markdown(report))
