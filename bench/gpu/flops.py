"""Model FLOPs of one training micro-batch of a Qwen2.5-VL or Qwen3-VL model, from what is actually trainable.

Why: MFU must count the work the configuration needs, not the work the kernels happen to do. The count
walks the live model once (after LLaMA-Factory has applied LoRA / freezing / quantisation), so LoRA,
frozen towers and unfrozen vision blocks are all counted the same way:

- every linear layer: forward 2*in*out per token; backward adds 2*in*out for the weight gradient when the
  weight is trainable, and 2*in*out for the input gradient when anything trainable lies before it in the
  forward order (an earlier block, a trainable norm of its own block, or an earlier-registered module of
  its own block: exact for the recipes' layouts, at most one block's input gradients off otherwise);
- attention cores: causal 2*S^2*d per text layer; vision 4*P*W*d (window W patches, or all P in the
  full-attention blocks; Qwen3-VL has no windows: every block is full); backward twice the forward where an
  input gradient is needed;
- the Conv3d patch embedding as a linear map of 3*2*p*p inputs per patch (p = 14, Qwen3-VL 16);
- Qwen3-VL's deepstack mergers on the merged tokens; merger i reads the output of vision block
  deepstack_visual_indexes[i], so it needs its input gradient only when that block or one below trains;
- the language-model head only at the positions the loss scores, when their count is given (the plugin
  computes no other logits in training; the rest of a stock run's head is work nobody needs).
Recomputation by gradient checkpointing is NOT counted (MFU, not hardware FLOPs utilisation); norms,
activations, rotary embeddings and the loss are ignored (well under 1% at these shapes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_VIS_BLOCK = re.compile(r"(?:^|\.)visual\.blocks\.(\d+)\.")
_DEEPSTACK = re.compile(r"(?:^|\.)visual\.deepstack_merger_list\.(\d+)(?:\.|$)")
_TXT_LAYER = re.compile(r"(?:^|\.)language_model\.layers\.(\d+)\.")


@dataclass
class Linear:
    """One matmul of the model: its size, which tokens it sees and which gradients it needs."""

    name: str
    in_f: int
    out_f: int
    domain: str  # "patch" (vision blocks, patch embed), "merged" (merger), "text", "head" (lm_head)
    w_grad: bool
    x_grad: bool


@dataclass
class FlopPlan:
    """What the model computes per token, built once from the live model."""

    linears: list[Linear] = field(default_factory=list)
    text_layers: int = 0
    text_attn_dim: int = 0
    text_x_grad: list[bool] = field(default_factory=list)
    vis_attn_dim: int = 0
    vis_window_patches: int = 0
    vis_full_blocks: list[int] = field(default_factory=list)
    vis_x_grad: list[bool] = field(default_factory=list)
    spatial_merge: int = 2


def _stage(name: str, depth: int, layers: int) -> int:
    """Index of the block `name` belongs to, in forward order (vision, merger, embeddings, text, head)."""
    if "visual." in name or name.startswith("visual"):
        if "patch_embed" in name:
            return 0
        m = _VIS_BLOCK.search(name)
        if m:
            return 1 + int(m.group(1))
        return 1 + depth  # merger
    if "embed_tokens" in name:
        return 2 + depth
    m = _TXT_LAYER.search(name)
    if m:
        return 3 + depth + int(m.group(1))
    return 3 + depth + layers  # final norm, lm_head


def build_plan(model: Any) -> FlopPlan:
    """Walk `model` (plain, PEFT-wrapped or quantised) and record its matmuls and trainability."""
    import torch

    cfg = model.config
    vcfg = cfg.vision_config
    tcfg = getattr(cfg, "text_config", cfg)
    depth, layers = int(vcfg.depth), int(tcfg.num_hidden_layers)
    n_stages = 4 + depth + layers
    trainable_stage = [False] * n_stages
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable_stage[_stage(name, depth, layers)] = True

    heads = int(tcfg.num_attention_heads)
    head_dim = getattr(tcfg, "head_dim", None) or int(tcfg.hidden_size) // heads
    window = getattr(vcfg, "window_size", None)  # Qwen3-VL: none, every block attends to all patches
    plan = FlopPlan(
        text_layers=layers,
        text_attn_dim=heads * int(head_dim),
        vis_attn_dim=int(vcfg.hidden_size),
        vis_window_patches=(int(window) // int(vcfg.patch_size)) ** 2 if window else 0,
        vis_full_blocks=list(getattr(vcfg, "fullatt_block_indexes", []) or [])
        if window
        else list(range(depth)),
        spatial_merge=int(vcfg.spatial_merge_size),
    )
    deepstack = [int(i) for i in getattr(vcfg, "deepstack_visual_indexes", []) or []]
    # A trainable norm runs before the first matmul of its block (pre-norm blocks), so it makes every input
    # of that block need gradients.
    norm_stage = [False] * n_stages
    for name, p in model.named_parameters():
        if p.requires_grad and "norm" in name.rsplit(".", 2)[-2]:
            norm_stage[_stage(name, depth, layers)] = True
    current_stage: int | tuple[str, int] = -1
    seen_in_stage, before = False, False
    for name, mod in model.named_modules():
        if ".original_module." in name or name.endswith(".original_module"):
            continue  # PEFT keeps an inactive copy of modules_to_save
        stage = _stage(name, depth, layers)
        ds = _DEEPSTACK.search(name)
        key = ("deepstack", int(ds.group(1))) if ds else stage
        if key != current_stage:
            # anything trainable in an earlier stage needs this stage's input gradients; a deepstack merger's
            # input is the output of vision block deepstack_visual_indexes[i] (stage 1 + that index)
            if ds:
                before = any(trainable_stage[: 2 + deepstack[int(ds.group(1))]])
            else:
                before = any(trainable_stage[:stage]) or norm_stage[stage]
            current_stage, seen_in_stage = key, False
        w_grad = any(p.requires_grad for p in mod.parameters(recurse=False))
        if isinstance(mod, torch.nn.Linear):
            in_f, out_f = mod.in_features, mod.out_features
        elif isinstance(mod, torch.nn.Conv3d):
            in_f = mod.in_channels * int(torch.tensor(mod.kernel_size).prod())
            out_f = mod.out_channels
        else:
            seen_in_stage = seen_in_stage or w_grad
            continue
        domain = "head" if name.endswith("lm_head") else "text"
        if "visual" in name:
            domain = "merged" if "merger" in name else "patch"
        plan.linears.append(Linear(name, in_f, out_f, domain, w_grad, before or seen_in_stage))
        seen_in_stage = seen_in_stage or w_grad
    plan.text_x_grad = [any(trainable_stage[: 3 + depth + i + 1]) for i in range(layers)]
    plan.vis_x_grad = [any(trainable_stage[: 1 + i + 1]) for i in range(depth)]
    return plan


def microbatch_flops(
    plan: FlopPlan,
    seq_lens: list[int],
    grids: list[tuple[int, int, int]],
    scored_tokens: int | None = None,
) -> dict[str, float]:
    """Forward and backward model FLOPs of one micro-batch: sequences of `seq_lens` real tokens, images
    of `grids` (t, h, w) patches, `scored_tokens` positions scored by the loss (None: every position)."""
    n_text = float(sum(seq_lens))
    patches = [t * h * w for t, h, w in grids]
    n_patch = float(sum(patches))
    n_merged = n_patch / plan.spatial_merge**2
    n_head = n_text if scored_tokens is None else float(scored_tokens)
    tokens = {"text": n_text, "patch": n_patch, "merged": n_merged, "head": n_head}
    fwd = bwd = 0.0
    for lin in plan.linears:
        f = 2.0 * lin.in_f * lin.out_f * tokens[lin.domain]
        fwd += f
        bwd += f * (int(lin.w_grad) + int(lin.x_grad))
    text_attn = sum(2.0 * s * s * plan.text_attn_dim for s in seq_lens)
    for i in range(plan.text_layers):
        fwd += text_attn
        bwd += 2 * text_attn if plan.text_x_grad[i] else 0.0
    for i, x_grad in enumerate(plan.vis_x_grad):
        if i in plan.vis_full_blocks:
            a = sum(4.0 * p * p * plan.vis_attn_dim for p in patches)
        else:
            a = sum(4.0 * p * min(plan.vis_window_patches, p) * plan.vis_attn_dim for p in patches)
        fwd += a
        bwd += 2 * a if x_grad else 0.0
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}
