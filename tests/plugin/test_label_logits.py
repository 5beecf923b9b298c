"""Training computes the language-model head only where the loss scores; loss and gradients do not change."""

from __future__ import annotations

from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("label_logits_probe.py")


def _run(lf, model: Path, data: Path, tmp: Path, recipe: str = "phase1.yaml", **overrides) -> dict:
    case = lf.recipe_case(recipe, model, data, tmp / "out", lora_dropout=0.0, **overrides)
    return lf.run_probe(PROBE, {k: v for k, v in case.items() if v is not None}, tmp)


def _assert_same_loss_and_gradients(r: dict) -> None:
    assert r["trainable_tensors"] > 0
    assert r["loss_after"] == pytest.approx(r["loss_before"], rel=1e-6)
    assert r["loss_nib_after"] == pytest.approx(r["loss_nib_before"], rel=1e-6)
    assert r["max_grad_diff"] <= 1e-6 * max(1.0, r["max_grad"])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["phase1.yaml", "phase2.yaml"])
def test_only_scored_logits_are_computed_with_the_same_loss(
    tiny_qwen2_5_vl: Path, lf, roi_dataset: Path, tmp_path: Path, recipe: str
) -> None:
    overrides = {"roi_vision_lora_top_blocks": 2} if recipe == "phase2.yaml" else {}
    r = _run(lf, tiny_qwen2_5_vl, roi_dataset, tmp_path, recipe, **overrides)
    assert r["rows_before"] == r["seq_len"]
    # The scored positions (the union over the batch) plus one row that lines up with the padded end.
    assert r["rows_after"] == r["scored_positions"] + 1 < r["seq_len"]
    assert r["eval_rows_after"] == r["seq_len"]  # evaluation and inference keep every logit
    _assert_same_loss_and_gradients(r)


@pytest.mark.slow
def test_switched_off_keeps_every_logit(tiny_qwen2_5_vl: Path, lf, roi_dataset: Path, tmp_path: Path) -> None:
    r = _run(lf, tiny_qwen2_5_vl, roi_dataset, tmp_path, roi_label_logits_only=False)
    assert r["rows_after"] == r["rows_before"] == r["seq_len"]
    _assert_same_loss_and_gradients(r)


@pytest.mark.slow
def test_losses_that_need_every_logit_keep_them(
    tiny_qwen2_5_vl: Path, lf, roi_dataset: Path, tmp_path: Path
) -> None:
    r = _run(lf, tiny_qwen2_5_vl, roi_dataset, tmp_path, use_dft_loss=True)
    assert r["rows_after"] == r["seq_len"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_scored_logits_in_the_qwen3_families(
    family: str, request: pytest.FixtureRequest, lf, family_dataset, tmp_path: Path
) -> None:
    """The hook engages on the Qwen3-VL and Qwen3.5 forwards too (deepstack mergers, linear-attention
    layers): fewer logit rows, the same loss and gradients."""
    model = request.getfixturevalue(f"tiny_{family}")
    r = _run(lf, model, family_dataset(family), tmp_path, f"{family}/phase1.yaml")
    assert r["rows_after"] == r["scored_positions"] + 1 < r["seq_len"] == r["rows_before"]
    _assert_same_loss_and_gradients(r)
