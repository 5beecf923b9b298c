"""Optimizer parameter groups with their own learning rates, and the trainable-parameter table.

Built where LLaMA-Factory builds its custom optimizer (``create_custom_optimizer``), with the optimizer
class and arguments the Trainer would use itself, so the LR scheduler (which scales every group's initial
lr), gradient accumulation, DeepSpeed ZeRO-2/3 and checkpoint resume (fixed group order) keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import compat
from .selection import base_model, classify, effective_lora_blocks, layout_or_none

GROUPS: tuple[str, ...] = ("language", "projector", "vision_lora", "vision_unfrozen")
TABLE_FILE = "trainable_params.json"


def _no_decay(name: str, param: Any) -> bool:
    """Biases, norms and other 1-D tensors take no weight decay."""
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith(".bias") or "norm" in lowered


def _numel(param: Any) -> int:
    """Parameter count, also under ZeRO-3 where the local tensor is an empty shard."""
    return int(getattr(param, "ds_numel", 0) or param.numel())


def param_groups(model: Any, training_args: Any, settings: Any) -> tuple[list[dict[str, Any]], list[dict]]:
    """Torch parameter groups (non-empty, fixed order) and the matching table rows."""
    layout = layout_or_none(model)
    buckets: dict[tuple[str, bool], list[tuple[str, Any]]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (classify(name, layout), _no_decay(name, param))
            buckets.setdefault(key, []).append((name, param))
    groups: list[dict[str, Any]] = []
    rows: list[dict] = []
    for group in GROUPS:
        lr = settings.lr(group, training_args.learning_rate)
        for no_decay in (False, True):
            members = buckets.get((group, no_decay), [])
            if not members:
                continue
            weight_decay = 0.0 if no_decay else float(training_args.weight_decay)
            label = f"{group}/no_decay" if no_decay else group
            groups.append(
                {"params": [p for _, p in members], "lr": lr, "weight_decay": weight_decay, "name": label}
            )
            rows.append(
                {
                    "group": label,
                    "lr": lr,
                    "weight_decay": weight_decay,
                    "tensors": len(members),
                    "params": sum(_numel(p) for _, p in members),
                    "names": [n for n, _ in members],
                }
            )
    return groups, rows


def create_optimizer(model: Any, training_args: Any, settings: Any) -> Any:
    """The Trainer's own optimizer class over the plugin's groups; logs and writes the table."""
    from transformers import Trainer

    groups, rows = param_groups(model, training_args, settings)
    optim_class, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    optim_kwargs = {k: v for k, v in optim_kwargs.items() if k not in {"lr", "weight_decay"}}
    optimizer = optim_class([{k: v for k, v in g.items() if k != "name"} for g in groups], **optim_kwargs)
    report(model, training_args, settings, rows)
    return optimizer


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table: group, tensors, parameters, learning rate, weight decay."""
    lines = [f"{'group':<26}{'tensors':>9}{'params':>14}{'lr':>12}{'wd':>8}"]
    for r in rows:
        lines.append(
            f"{r['group']:<26}{r['tensors']:>9}{r['params']:>14,}{r['lr']:>12.3g}{r['weight_decay']:>8.3g}"
        )
    lines.append(f"{'total':<26}{sum(r['tensors'] for r in rows):>9}{sum(r['params'] for r in rows):>14,}")
    return "\n".join(lines)


def report(model: Any, training_args: Any, settings: Any, rows: list[dict]) -> None:
    """Log the table on rank 0 and write output_dir/trainable_params.json atomically."""
    get_logger = compat.get("llamafactory.extras.logging", "get_logger")
    logger = get_logger("llamafactory.qwenvl_roi")  # under LLaMA-Factory's configured root logger
    logger.info_rank0("qwenvl-roi trainable parameters:\n" + format_table(rows))
    if not getattr(training_args, "should_save", True):
        return
    layout = layout_or_none(model)
    payload = {
        "settings": settings.model_dump(),
        "model_type": getattr(base_model(model).config, "model_type", None),
        "vision_depth": layout.depth if layout else None,
        "vision_lora_blocks": effective_lora_blocks(layout, settings) if layout else [],
        "vision_unfrozen_blocks": layout.top(settings.roi_vision_unfreeze_top_blocks) if layout else [],
        "groups": rows,
        "total_tensors": sum(r["tensors"] for r in rows),
        "total_params": sum(r["params"] for r in rows),
    }
    from qwenvl_roi.fileio import write_json

    write_json(Path(training_args.output_dir) / TABLE_FILE, payload)
