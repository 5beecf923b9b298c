"""Run the vision tower backwards only as far down as something trains.

transformers 5.x's ``enable_input_require_grads()`` (peft calls it when it wraps a model that is not
quantized and has gradient checkpointing on) hooks the input embeddings of every sub-model, the vision
tower's patch embedding included. The patch embeddings then require grad, so autograd records every vision
block and runs it backwards, even the frozen ones below the lowest trained block. LLaMA-Factory's gradient
checkpointing skips blocks without trainable parameters, so those blocks also keep all their activations.
At Qwen2.5-VL-7B shape with four 1024-pixel images that was 34.3 GiB of saved activations and ~13% extra
FLOPs in phase 1 (bench/gpu/vision_activations.py, bench/results/gpu.md), the likely reason a 4-bit QLoRA
run (where peft adds no such hook) was faster and 40 GiB lighter than bf16 LoRA.

The plugin removes those hooks from the vision tower when nothing before its lowest trained block trains
and that block's gradients do not depend on them:
- nothing in the tower trains (phase 1; the projector may): no vision input gradient is needed at all;
- the lowest trained block is not checkpointed, or is checkpointed without re-entrancy, or by
  LLaMA-Factory's own checkpointing wrapper (which marks a trained block's input as requiring grad
  itself): weight gradients of blocks >= that one come out the same (tests/plugin/test_vision_backprop.py).
With transformers' re-entrant checkpointing and no LLaMA-Factory wrapper, the input must require grad for
the trained block's weights to get gradients, so the hooks stay.
"""

from __future__ import annotations

import functools
from typing import Any

from . import compat
from .selection import VisionLayout, base_model, layout_or_none, module_path

# Names of the forward hooks that transformers (make_inputs_require_grads) and peft
# (make_inputs_require_grad) register to make embedding outputs require grad.
_INPUT_GRAD_HOOKS = frozenset({"make_inputs_require_grads", "make_inputs_require_grad"})
# LLaMA-Factory's checkpointing wrapper (model_utils/checkpointing.py): checkpoints only blocks with
# trainable parameters and makes their hidden-state input require grad.
_LF_CHECKPOINT_WRAPPER = compat.CHECKPOINT_WRAPPER.name.rsplit(".", 1)[1]


def lowest_trained_block(model: Any, layout: VisionLayout) -> int | None:
    """Index of the lowest vision block with a parameter that trains; -1 when something below the blocks
    (the patch embedding) trains; None when nothing in the tower outside the projector trains."""
    tower = layout.tower + "."
    block_prefix = layout.blocks + "."
    projectors = tuple(p + "." for p in layout.projectors)
    lowest: int | None = None
    for name, param in model.named_parameters():
        path = module_path(name)
        if not param.requires_grad or not path.startswith(tower) or path.startswith(projectors):
            continue
        if not path.startswith(block_prefix):
            return -1
        index = int(path[len(block_prefix) :].split(".", 1)[0])
        lowest = index if lowest is None else min(lowest, index)
    return lowest


def input_grad_optional(block: Any) -> bool:
    """Whether a trained block's weight gradients come out right when its input does not require grad.

    Looks inside the block, so a block that peft wrapped (modules_to_save) is judged by the layer it runs."""
    for layer in block.modules():
        if getattr(layer, "gradient_checkpointing", False) is not True:
            continue
        fn = getattr(layer, "_gradient_checkpointing_func", None)
        if getattr(fn, "__name__", "") == _LF_CHECKPOINT_WRAPPER:
            continue
        if not (isinstance(fn, functools.partial) and fn.keywords.get("use_reentrant") is False):
            return False
    return True


def trim_vision_backprop(model: Any) -> int:
    """Remove the vision tower's input-grad hooks where they only cost; returns how many were removed."""
    layout = layout_or_none(model)
    if layout is None:
        return 0
    lowest = lowest_trained_block(model, layout)
    if lowest == -1:
        return 0
    base = base_model(model)
    if lowest is not None and not input_grad_optional(base.get_submodule(layout.block(lowest))):
        return 0
    tower = base.get_submodule(layout.tower)
    removed = 0
    for module in tower.modules():
        for hook_id, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") in _INPUT_GRAD_HOOKS:
                del module._forward_hooks[hook_id]
                module._forward_hooks_with_kwargs.pop(hook_id, None)
                module._forward_hooks_always_called.pop(hook_id, None)
                removed += 1
    return removed
