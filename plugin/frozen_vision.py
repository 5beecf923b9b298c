"""Skip the backward pass through a frozen vision tower.

transformers 5.x's ``enable_input_require_grads()`` (called for gradient checkpointing and by peft) hooks the
input embeddings of every sub-model, the vision tower's patch embedding included. The patch embeddings then
require grad, and autograd runs the whole frozen vision tower backwards to produce gradients nobody uses:
about 13% extra FLOPs and all vision activations kept alive in phase 1 of Qwen2.5-VL-7B
(bench/results/gpu.md). When no vision-tower parameter trains (the projector may), that hook is removed.
The gradients of the trained parameters do not change (tests/plugin/test_frozen_vision.py).
"""

from __future__ import annotations

from typing import Any

from .selection import VisionLayout, base_model, layout_or_none, module_path

# Names of the forward hooks that transformers (make_inputs_require_grads) and peft
# (make_inputs_require_grad) register to make embedding outputs require grad.
_INPUT_GRAD_HOOKS = frozenset({"make_inputs_require_grads", "make_inputs_require_grad"})


def vision_tower_trains(model: Any, layout: VisionLayout) -> bool:
    """True when any parameter of the vision tower, outside the projector, requires grad."""
    tower = layout.blocks.rsplit(".", 1)[0] + "."
    projectors = tuple(p + "." for p in layout.projectors)
    for name, param in model.named_parameters():
        path = module_path(name)
        if param.requires_grad and path.startswith(tower) and not path.startswith(projectors):
            return True
    return False


def drop_frozen_vision_input_grads(model: Any) -> int:
    """Remove the input-grad hooks inside a frozen vision tower; returns how many were removed."""
    layout = layout_or_none(model)
    if layout is None or vision_tower_trains(model, layout):
        return 0
    tower = base_model(model).get_submodule(layout.blocks.rsplit(".", 1)[0])
    removed = 0
    for module in tower.modules():
        for hook_id, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") in _INPUT_GRAD_HOOKS:
                del module._forward_hooks[hook_id]
                module._forward_hooks_with_kwargs.pop(hook_id, None)
                module._forward_hooks_always_called.pop(hook_id, None)
                removed += 1
    return removed
