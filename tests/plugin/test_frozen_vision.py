"""A frozen vision tower is not run backwards, and the trained parameters' gradients stay the same."""

from __future__ import annotations

from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("frozen_vision_probe.py")


def _run(lf, model: Path, data: Path, tmp: Path, **overrides: object) -> dict:
    case = lf.recipe_case("phase1.yaml", model, data, tmp / "out", lora_dropout=0.0, **overrides)
    return lf.run_probe(PROBE, {k: v for k, v in case.items() if v is not None}, tmp)


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
