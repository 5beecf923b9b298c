"""bench/gpu/flops.py against PyTorch's own FLOP counter on real (tiny) Qwen2.5-VL and Qwen3-VL forwards +
backwards.

Why: MFU is only as right as its FLOP count. The analytic count of the matmuls (linear layers, the patch
embedding, forward and the gradients that autograd actually computes) must equal what
torch.utils.flop_counter measures for the trainable layouts the recipes use.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

torch = pytest.importorskip("torch")

from gpu.flops import build_plan, microbatch_flops  # noqa: E402
from gpu.shapes import build_tokenizer, model_config  # noqa: E402

MATMUL_OPS = {"mm", "addmm", "convolution", "convolution_backward"}


# shape -> (config class, model class) of the benchmark's tiny CPU shapes
SHAPES = {
    "quick": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl_quick": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def tiny(request):
    import transformers

    config_class, model_class = (getattr(transformers, n) for n in SHAPES[request.param])
    tok = build_tokenizer(["R1: [10, 20, 30, 40] normal crack image abnormal"] * 4, vocab_size=300)
    cfg = config_class(**model_config(request.param, tok))
    torch.manual_seed(0)
    model = model_class(cfg).float()
    return model, cfg


def _batch(cfg, seq_text: int, grid: tuple[int, int, int]):
    t, h, w = grid
    n_img = t * h * w // 4
    ids = torch.randint(20, 200, (1, seq_text + n_img + 2))
    ids[0, 3] = cfg.vision_start_token_id
    ids[0, 4 : 4 + n_img] = cfg.image_token_id
    ids[0, 4 + n_img] = cfg.vision_end_token_id
    patch = cfg.vision_config.patch_size
    pixel_values = torch.randn(t * h * w, 3 * 2 * patch * patch)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == cfg.image_token_id).long(),  # Qwen3-VL needs them for its positions
        "pixel_values": pixel_values,
        "image_grid_thw": torch.tensor([grid]),
        "labels": ids.clone(),
    }


def _measured_matmul_flops(model, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        model(**batch).loss.backward()
    counts = fc.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if str(op).split(".")[1] in MATMUL_OPS)


def _analytic_matmul_flops(model, batch) -> float:
    plan = build_plan(model)
    plan.text_layers, plan.vis_x_grad = 0, []  # attention cores are not matmul ops; compare linears only
    seq = [int(batch["attention_mask"].sum())]
    grids = [tuple(int(v) for v in batch["image_grid_thw"][0])]
    return microbatch_flops(plan, seq, grids)["total"]


def _set_trainable(model, pred) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(pred(name))


@pytest.mark.parametrize(
    "layout",
    [
        "full",
        "phase1_projector_and_text",
        "phase3_top_vision_blocks",
        "text_only",
        "middle_block_frozen_projector",
    ],
)
def test_analytic_matmul_flops_equal_torch_counter(tiny, layout):
    model, cfg = tiny
    depth = cfg.vision_config.depth
    preds = {
        "full": lambda n: True,
        # "merger" also matches Qwen3-VL's deepstack mergers: they are projector here
        "phase1_projector_and_text": lambda n: (
            "merger" in n or "language_model.layers" in n or "lm_head" in n
        ),
        "phase3_top_vision_blocks": lambda n: (
            "merger" in n
            or any(f"visual.blocks.{i}." in n for i in (depth - 2, depth - 1))
            or "language_model.layers" in n
        ),
        "text_only": lambda n: "language_model.layers" in n,
        # a trained block between the deepstack taps (Qwen3-VL quick: 2, 5, 8) and frozen mergers: only the
        # mergers reading blocks at or above it need input gradients
        "middle_block_frozen_projector": lambda n: "visual.blocks.4." in n or "language_model.layers" in n,
    }
    _set_trainable(model, preds[layout])
    model.zero_grad(set_to_none=True)
    batch = _batch(cfg, seq_text=37, grid=(1, 8, 12))
    measured = _measured_matmul_flops(model, batch)
    analytic = _analytic_matmul_flops(model, batch)
    assert measured > 0
    assert analytic == pytest.approx(measured, rel=1e-9), layout


def test_frozen_model_counts_forward_only(tiny):
    model, cfg = tiny
    _set_trainable(model, lambda n: False)
    plan = build_plan(model)
    f = microbatch_flops(plan, [100], [(1, 8, 8)])
    assert f["backward"] == 0 and f["forward"] > 0
    _set_trainable(model, lambda n: "lm_head" in n)
    f2 = microbatch_flops(build_plan(model), [100], [(1, 8, 8)])
    assert f2["forward"] == f["forward"]
    lm = 2 * cfg.text_config.hidden_size * cfg.text_config.vocab_size * 100
    assert f2["backward"] == pytest.approx(lm)  # weight gradient of lm_head only


def test_head_counted_only_at_scored_positions(tiny):
    model, cfg = tiny
    _set_trainable(model, lambda n: "lm_head" in n)
    plan = build_plan(model)
    full = microbatch_flops(plan, [100], [(1, 8, 8)])
    scored = microbatch_flops(plan, [100], [(1, 8, 8)], scored_tokens=10)
    head_per_token = 2 * cfg.text_config.hidden_size * cfg.text_config.vocab_size
    assert full["forward"] - scored["forward"] == pytest.approx(90 * head_per_token)
    assert scored["backward"] == pytest.approx(10 * head_per_token)  # weight gradient at 10 positions
