"""A frozen vision tower is not run backwards, and the trained parameters' gradients stay the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROBE = Path(__file__).with_name("frozen_vision_probe.py")


def _run(lf, model: Path, data: Path, tmp: Path, **overrides: object) -> dict:
    case = yaml.safe_load((lf.RECIPES / "phase1.yaml").read_text())
    case.update(
        {
            "model_name_or_path": str(model),
            "dataset_dir": str(data),
            "output_dir": str(tmp / "out"),
            "use_cpu": True,
            "bf16": False,
            "report_to": "none",
            "lora_dropout": 0.0,
            "deepspeed": None,
            **overrides,
        }
    )
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "case.json").write_text(json.dumps({k: v for k, v in case.items() if v is not None}))
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(tmp / "case.json"), str(tmp / "out.json")],
        env=lf.env(tmp),
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.slow
def test_phase1_skips_vision_backward_with_identical_gradients(
    tiny_qwen2_5_vl: Path, lf, roi_dataset: Path, tmp_path: Path
) -> None:
    result = _run(lf, tiny_qwen2_5_vl, roi_dataset, tmp_path)
    # Before the plugin's hook, transformers' input-grad hook made the frozen tower's output require grad.
    assert result["hooks_before"] > 0 and result["vision_output_grad_before"] is True
    assert result["hooks_after"] == 0 and result["vision_output_grad_after"] is False
    assert result["trainable_tensors"] > 0
    assert result["max_grad_diff"] <= 1e-6


@pytest.mark.slow
def test_phase2_keeps_vision_backward(tiny_qwen2_5_vl: Path, lf, roi_dataset: Path, tmp_path: Path) -> None:
    result = _run(lf, tiny_qwen2_5_vl, roi_dataset, tmp_path, roi_vision_lora_top_blocks=2)
    assert result["hooks_after"] == result["hooks_before"] > 0
    assert result["vision_output_grad_after"] is True
    assert result["max_grad_diff"] <= 1e-6
