"""`bench/gpu_phases.py --quick`: the whole GPU benchmark path (model build, converters' prompts, the real
recipes through LLaMA-Factory with the measuring callback, report) on CPU with the tiny shape.

Why: device time is scarce; the script must be known to work end to end before a GPU is asked for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = ["stock_p1_lora", "p1_lora", "p1_qlora", "p2", "p3"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-quick")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_phases.py"),
            "--quick",
            "--out",
            str(out),
            "--runs",
            ",".join(RUNS),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_every_run_trains_and_is_measured(quick):
    _, res, _ = quick
    runs = {r["run"]: r for r in res["runs"]}
    assert list(runs) == RUNS
    st = res["settings"]
    view_w, view_h = res["inputs"]["model_view_size"]
    vision_per_image = (view_w // 28) * (view_h // 28)
    for name, r in runs.items():
        assert r["status"] == "ok", (name, r.get("log_tail"))
        assert r["measured_steps"] == st["steps"]
        assert r["samples"] == st["batch"] * st["accum"] * st["steps"]
        assert r["vision_tokens"] == vision_per_image * r["samples"]
        assert r["patches"] == 4 * r["vision_tokens"]
        assert r["text_tokens"] > 100 * r["samples"]  # system + instruction + 8 regions + answer
        assert r["model_flops"] > r["model_flops_forward"] > 0
        assert r["samples_per_s"] > 0 and r["mfu"] is None  # no MFU on CPU
        assert len(r["step_seconds"]) == st["warmup"] + st["steps"]
        assert min(r["step_seconds"][st["warmup"] :]) <= r["median_step_seconds"] <= max(r["step_seconds"])
        assert isinstance(r["vision_backprop"], bool)  # the hook on the first vision block fired


def test_plugin_switch_and_trainable_sets_follow_the_recipes(quick):
    _, res, _ = quick
    runs = {r["run"]: r for r in res["runs"]}
    assert runs["stock_p1_lora"]["plugin_active"] is False
    assert all(runs[n]["plugin_active"] for n in RUNS[1:])
    t = {n: runs[n]["params_trainable"] for n in RUNS}
    # stock trains the same set in stock terms; phase 2 adds vision LoRA, phase 3 two whole vision blocks
    assert t["stock_p1_lora"] == t["p1_lora"] < t["p2"] < t["p3"]
    # LLaMA-Factory's count unpacks 4-bit weights: QLoRA holds the same model
    assert runs["p1_qlora"]["params_total"] == runs["p1_lora"]["params_total"]
    assert runs["p1_lora"]["cost_ratio_vs_stock"] > 0


def test_report_files(quick):
    out, res, md = quick
    for name in RUNS:
        assert f"| {name} | ok |" in md
        cfg = (out / "runs" / name / "config.yaml").read_text()
        assert ("roi_" in cfg) is (name != "stock_p1_lora")
    assert res["machine"]["nproc"] >= 1 and res["inputs"]["n_regions"] == 8


QWEN3_RUNS = ["stock_p1_lora", "p1_qlora", "p3"]


@pytest.fixture(scope="module")
def quick_qwen3_vl(tmp_path_factory):
    """The Qwen3-VL path (the Qwen3-VL-8B shape's family) at the tiny CPU shape: one timed step per run."""
    out = tmp_path_factory.mktemp("bench-quick-qwen3")
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_phases.py"), "--quick", "--shape", "qwen3_vl_quick"]
    cmd += ["--out", str(out), "--runs", ",".join(QWEN3_RUNS), "--steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_qwen3_vl_shape_runs_its_family_recipes_on_the_32_grid(quick_qwen3_vl):
    out, res, md = quick_qwen3_vl
    assert res["inputs"]["model"]["family"] == "qwen3_vl" and "Qwen3-VL qwen3_vl_quick shape" in md
    runs = {r["run"]: r for r in res["runs"]}
    view_w, view_h = res["inputs"]["model_view_size"]
    assert view_w % 32 == 0 and view_h % 32 == 0
    for name in QWEN3_RUNS:
        r = runs[name]
        assert r["status"] == "ok", (name, r.get("log_tail"))
        recipe = {"stock_p1_lora": "phase1", "p1_qlora": "phase1_qlora", "p3": "phase3"}[name]
        assert r["recipe"] == f"recipes/qwen3_vl/{recipe}.yaml"
        assert r["vision_tokens"] == (view_w // 32) * (view_h // 32) * r["samples"]
        assert r["patches"] == 4 * r["vision_tokens"]
    # the stock baseline trains the same set as phase 1: merger and the 3 deepstack mergers as modules_to_save
    stock_cfg = (out / "runs" / "stock_p1_lora" / "config.yaml").read_text()
    assert "model.visual.deepstack_merger_list.2" in stock_cfg
    assert runs["stock_p1_lora"]["params_trainable"] == runs["p1_qlora"]["params_trainable"]
    assert runs["p3"]["params_trainable"] > runs["p1_qlora"]["params_trainable"]
