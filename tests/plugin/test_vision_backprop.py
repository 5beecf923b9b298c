"""The vision tower runs backwards only as far down as something trains; trained gradients do not change."""

from __future__ import annotations

from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("vision_backprop_probe.py")
ALL_BLOCKS = [0, 1, 2, 3]  # the tiny Qwen2.5-VL test model has 4 vision blocks


def _run(lf, model: Path, data: Path, tmp: Path, recipe: str, hf_reentrant_gc: bool = False, **overrides):
    case = lf.recipe_case(recipe, model, data, tmp / "out", lora_dropout=0.0, **overrides)
    args = {k: v for k, v in case.items() if v is not None}
    return lf.run_probe(PROBE, {"args": args, "hf_reentrant_gc": hf_reentrant_gc}, tmp)


def _assert_same_gradients(result: dict) -> None:
    assert result["trainable_tensors"] > 0
    assert result["max_grad_diff"] <= 1e-6


@pytest.mark.slow
def test_phase1_frozen_tower_is_not_run_backwards(
    tiny_qwen2_5_vl: Path, lf, roi_dataset: Path, tmp_path: Path
) -> None:
    result = _run(lf, tiny_qwen2_5_vl, roi_dataset, tmp_path, "phase1.yaml")
    # Before the plugin's hook, the input-grad hook peft adds made every frozen block record autograd.
    assert result["hooks_before"] > 0 and result["recorded_blocks_before"] == ALL_BLOCKS
    assert result["hooks_after"] == 0 and result["recorded_blocks_after"] == []
    _assert_same_gradients(result)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "overrides", "recorded_before"),
    [
        ("phase2.yaml", {"roi_vision_lora_top_blocks": 2}, ALL_BLOCKS),
        ("phase3.yaml", {"roi_vision_lora_top_blocks": 2, "roi_vision_unfreeze_top_blocks": 1}, ALL_BLOCKS),
        # Without gradient checkpointing peft adds no input-grad hook: already minimal, and stays so.
        ("phase2.yaml", {"roi_vision_lora_top_blocks": 2, "disable_gradient_checkpointing": True}, [2, 3]),
    ],
    ids=["phase2", "phase3", "phase2-no-checkpointing"],
)
def test_backward_stops_at_the_lowest_trained_block(
    tiny_qwen2_5_vl: Path,
    lf,
    roi_dataset: Path,
    tmp_path: Path,
    recipe: str,
    overrides: dict,
    recorded_before: list[int],
) -> None:
    result = _run(lf, tiny_qwen2_5_vl, roi_dataset, tmp_path, recipe, **overrides)
    assert result["recorded_blocks_before"] == recorded_before
    assert result["hooks_after"] == 0 and result["recorded_blocks_after"] == [2, 3]
    assert result["vision_trained_tensors"] > 0 and result["vision_grad_abs_sum"] > 0
    _assert_same_gradients(result)


@pytest.mark.slow
def test_reentrant_transformers_checkpointing_keeps_the_hooks(
    tiny_qwen2_5_vl: Path, lf, roi_dataset: Path, tmp_path: Path
) -> None:
    # transformers' own re-entrant checkpointing gives a trained block no weight gradients unless its input
    # requires grad, so the plugin must leave the input-grad hooks alone here.
    result = _run(
        lf,
        tiny_qwen2_5_vl,
        roi_dataset,
        tmp_path,
        "phase2.yaml",
        hf_reentrant_gc=True,
        roi_vision_lora_top_blocks=2,
        disable_gradient_checkpointing=True,
    )
    assert result["hooks_after"] == result["hooks_before"] > 0
    assert result["recorded_blocks_after"] == ALL_BLOCKS
    assert result["vision_grad_abs_sum"] > 0
    _assert_same_gradients(result)


@pytest.mark.slow
def test_qwen3_vl_deepstack_mergers_train_without_the_tower_backward(
    tiny_qwen3_vl: Path, lf, family_dataset, tmp_path: Path
) -> None:
    """Phase 1 of Qwen3-VL: the deepstack mergers read intermediate blocks, yet train (projector group) while
    no vision block is run backwards, and the plugin's hook changes none of their gradients.

    Unlike Qwen2.5-VL's, transformers 5.6's Qwen3-VL vision model names no input-embedding layer, so
    enable_input_require_grads() hooks nothing in its tower: its backward already stops at the lowest trained
    block without the plugin (this test notices if that changes)."""
    result = _run(lf, tiny_qwen3_vl, family_dataset("qwen3_vl"), tmp_path, "qwen3_vl/phase1.yaml")
    assert result["hooks_before"] == 0 and result["recorded_blocks_before"] == []
    assert result["hooks_after"] == 0 and result["recorded_blocks_after"] == []
    assert result["deepstack_trained_tensors"] > 0
    assert result["deepstack_grads_nonzero"] == result["deepstack_trained_tensors"]
    _assert_same_gradients(result)
