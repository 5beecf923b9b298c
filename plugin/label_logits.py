"""Compute the language-model head only at the positions the loss scores.

An SFT sample here is scored on its answer only (a few dozen tokens of ~1,650 with a 1024-pixel image), but
transformers' Qwen-VL forwards (every family here) compute logits at every position over the whole vocabulary
(152k; Qwen3.5 248k), upcast them to fp32 for the loss and keep their gradient: at 7B shape 1 GB of fp32
logits per sample (plus their bf16 copy and the gradients) and ~9% of a phase-1 step's FLOPs. During training
the plugin passes the model ``logits_to_keep`` = the positions whose next token is a target, with the labels
laid out so that transformers' own shifted cross-entropy sees the same (logit, target) pairs: the loss and the
gradients are those of the full computation up to float rounding (tests/plugin/test_label_logits.py).
Evaluation and inference are untouched (the hook acts only in training mode), and so are runs whose loss needs
every logit (LLaMA-Factory's DFT/EAFT/ASFT losses) or whose forward is not transformers' own (Liger kernels).
``roi_label_logits_only: false`` turns it off.
"""

from __future__ import annotations

import inspect
from typing import Any

from .selection import base_model

IGNORE_INDEX = -100
_MARK = "__qwenvl_roi_label_logits__"
# LLaMA-Factory losses computed from the full logits (finetuning_args flags).
_FULL_LOGIT_LOSSES = ("use_dft_loss", "use_eaft_loss", "use_asft_loss")


def keep_target_positions(labels: Any) -> tuple[Any, Any] | None:
    """(logits_to_keep, labels) that score the same targets from fewer logits; None if nothing is scored.

    Position p's logit predicts token p + 1, so p is kept when any sample has a target at p + 1. transformers
    shifts the labels it gets by one and pads the end with the ignore index; the returned labels are
    [ignore, targets at kept p + 1 ...] and the last kept position is repeated once so that the padded end
    lines up with it (that row scores nothing).
    """
    import torch

    targets = labels[:, 1:]
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    if keep.numel() == 0:
        return None
    first = torch.full_like(labels[:, :1], IGNORE_INDEX)
    return torch.cat([keep, keep[-1:]]), torch.cat([first, targets[:, keep]], dim=1)


def _pre_forward(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    labels = kwargs.get("labels")
    if not module.training or labels is None or labels.dim() != 2 or kwargs.get("logits_to_keep"):
        return None
    kept = keep_target_positions(labels)
    if kept is None:
        return None
    logits_to_keep, labels = kept
    return args, {**kwargs, "logits_to_keep": logits_to_keep, "labels": labels}


def register(model: Any, finetuning_args: Any) -> bool:
    """Hook the model's forward so training computes only the scored logits; False where it must not."""
    if any(getattr(finetuning_args, flag, False) for flag in _FULL_LOGIT_LOSSES):
        return False
    forward = type(base_model(model)).forward
    if not getattr(forward, "__module__", "").startswith("transformers.models."):
        return False  # patched (e.g. Liger's fused linear cross-entropy)
    if "logits_to_keep" not in inspect.signature(forward).parameters:
        return False
    # peft's tuner calls the transformers model's .forward directly (no hooks), so hook the tuner.
    called = model.base_model if hasattr(model, "get_base_model") else model
    if not getattr(called, _MARK, False):
        called.register_forward_pre_hook(_pre_forward, with_kwargs=True)
        setattr(called, _MARK, True)
    return True
