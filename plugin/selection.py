"""Which modules train: vision-tower layout, LoRA targets of the top N blocks, modules_to_save.

LLaMA-Factory's ``lora_target`` matches plain substrings and the vision MLP names (gate_proj/up_proj/
down_proj) collide with the language model's, so the plugin hands peft an explicit list of full module
names instead. Block indices come from the model's own vision depth, so "top 2" means the last two blocks
of whichever size of the loaded family is loaded. The vision tower, its blocks and the projector modules of
a supported family come from the family table (qwenvl_roi/families.py): for Qwen3-VL the projector is the
merger plus every deepstack merger (``visual.deepstack_merger_list.{i}``, which LLaMA-Factory files under the
vision tower). Other composite models LLaMA-Factory knows fall back to its COMPOSITE_MODELS keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from qwenvl_roi.families import Family, find_family

from . import compat

# Names peft and LLaMA-Factory put into parameter names of wrapped modules; removed to get the model's path.
_WRAPPER_SEGMENT = re.compile(
    r"\.(?:modules_to_save|original_module)\.[^.]+(?=\.)"
    r"|\.(?:modules_to_save|original_module)(?=\.)"
    r"|\.(?:lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.[^.]+(?=\.|$)"
)
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class VisionLayout:
    """Full module names of a composite model's vision blocks and projector."""

    model_type: str
    blocks: str  # e.g. "model.visual.blocks"
    depth: int
    projectors: tuple[str, ...]  # e.g. ("model.visual.merger", "model.visual.deepstack_merger_list.0", ...)

    @property
    def tower(self) -> str:
        """Full module name of the vision tower that holds the blocks (e.g. "model.visual")."""
        return self.blocks.rsplit(".", 1)[0]

    def block(self, index: int) -> str:
        return f"{self.blocks}.{index}"

    def top(self, count: int) -> list[int]:
        """Indices of the last ``count`` blocks, checked against the depth."""
        if count > self.depth:
            raise ValueError(
                f"asked for the top {count} vision blocks but {self.model_type}'s vision tower has "
                f"{self.depth} blocks (config vision depth); use a value between 0 and {self.depth}"
            )
        return list(range(self.depth - count, self.depth))


def _composite_info(model_type: str) -> Any:
    composite = compat.get("llamafactory.model.model_utils.visual", "COMPOSITE_MODELS")

    if model_type not in composite:
        raise ValueError(
            f"model_type {model_type!r} is not a vision-language model LLaMA-Factory knows "
            f"(COMPOSITE_MODELS); the roi_ vision/projector keys need one"
        )
    return composite[model_type]


def projector_keys(model_type: str) -> list[str]:
    """Projector module keys of a model type: the family's (merger and deepstack mergers) or, for another
    composite model, LLaMA-Factory's (e.g. ["visual.merger"]). Used to keep them out of quantization."""
    fam = find_family(model_type)
    if fam is not None:
        return list(fam.projector_patterns)
    return list(_composite_info(model_type).projector_keys)


def _on_boundary(name: str, key: str) -> bool:
    """Whether the full module name ``name`` is ``key`` or ends with ``.key``."""
    return name == key or name.endswith("." + key)


def _family_layout(model: Any, fam: Family, model_type: str) -> VisionLayout:
    """The layout from the family table's module names, checked against the loaded model."""
    import torch

    modules = dict(model.named_modules())
    blocks = [
        n
        for n, m in modules.items()
        if _on_boundary(n, fam.vision_blocks) and isinstance(m, torch.nn.ModuleList)
    ]
    if len(blocks) != 1:
        raise ValueError(
            f"{model_type}: expected one vision block list named *.{fam.vision_blocks} (family {fam.name}), "
            f"found {blocks or 'none'}"
        )
    projectors = [n for n in modules for key in fam.projectors if _on_boundary(n, key)]
    for key in fam.projector_lists:
        for name, module in modules.items():
            if _on_boundary(name, key):
                projectors.extend(f"{name}.{child}" for child, _ in module.named_children())
    length = len(modules[blocks[0]])
    depth = _config_depth(model.config, length)
    if depth != length:
        raise ValueError(f"{model_type}: vision config depth {depth} but {blocks[0]} has {length} blocks")
    return VisionLayout(
        model_type=model_type, blocks=blocks[0], depth=int(depth), projectors=tuple(projectors)
    )


def _config_depth(config: Any, default: int) -> int:
    vision_config = getattr(config, "vision_config", None)
    return int(
        getattr(vision_config, "depth", None) or getattr(vision_config, "num_hidden_layers", None) or default
    )


def find_layout(model: Any) -> VisionLayout:
    """Locate the vision blocks (a ModuleList under a vision key) and the projector of an unwrapped model."""
    import torch

    config = model.config
    model_type = getattr(config, "model_type", "")
    fam = find_family(model_type)
    if fam is not None:
        return _family_layout(model, fam, model_type)
    info = _composite_info(model_type)
    modules = dict(model.named_modules())
    blocks_name: str | None = None
    for key in info.vision_model_keys:
        candidates = [
            name
            for name, module in modules.items()
            if isinstance(module, torch.nn.ModuleList)
            and (name == key or name.endswith("." + key) or key in name)
        ]
        if candidates:
            blocks_name = max(candidates, key=lambda n: (len(modules[n]), -len(n)))
            break
    if blocks_name is None:
        raise ValueError(f"no vision block list found under {info.vision_model_keys} in {model_type}")
    length = len(modules[blocks_name])
    depth = _config_depth(config, length)
    if depth != length:
        raise ValueError(f"{model_type}: vision config depth {depth} but {blocks_name} has {length} blocks")
    projectors = tuple(
        name for name in modules for key in info.projector_keys if name == key or name.endswith("." + key)
    )
    return VisionLayout(model_type=model_type, blocks=blocks_name, depth=int(depth), projectors=projectors)


def base_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def layout_or_none(model: Any) -> VisionLayout | None:
    """The vision layout of a (possibly peft-wrapped) composite model; None for a text-only model."""
    composite = compat.get("llamafactory.model.model_utils.visual", "COMPOSITE_MODELS")

    base = base_model(model)
    model_type = getattr(base.config, "model_type", None)
    if find_family(model_type) is None and model_type not in composite:
        return None
    return find_layout(base)


def _is_linear(module: Any) -> bool:
    name = module.__class__.__name__
    return "Linear" in name and "Embedding" not in name


def effective_lora_blocks(layout: VisionLayout, settings: Any) -> list[int]:
    """Top-N block indices that get LoRA: fully unfrozen blocks train whole instead."""
    unfrozen = set(layout.top(settings.roi_vision_unfreeze_top_blocks))
    return [i for i in layout.top(settings.roi_vision_lora_top_blocks) if i not in unfrozen]


def vision_lora_targets(model: Any, layout: VisionLayout, settings: Any) -> list[str]:
    """Full names of the linear layers in the top N blocks, minus blocks that are fully unfrozen."""
    prefixes = tuple(layout.block(i) + "." for i in effective_lora_blocks(layout, settings))
    return [
        name for name, module in model.named_modules() if name.startswith(prefixes) and _is_linear(module)
    ]


def modules_to_save(layout: VisionLayout, settings: Any) -> list[str]:
    """Projector and unfrozen blocks, saved whole in the adapter so export merges them."""
    names: list[str] = []
    if settings.roi_train_projector:
        if not layout.projectors:
            raise ValueError(f"{layout.model_type}: no projector module found for roi_train_projector")
        names.extend(layout.projectors)
    names.extend(layout.block(i) for i in layout.top(settings.roi_vision_unfreeze_top_blocks))
    return names


def select_lora_targets(model: Any, stock_targets: list[str], settings: Any) -> list[str]:
    """Stock targets with vision blocks replaced by exactly the top-N block layers (explicit full names)."""
    layout = find_layout(model)
    if settings.roi_vision_lora_top_blocks == 0 and settings.roi_vision_unfreeze_top_blocks == 0:
        return list(stock_targets)
    inside = (layout.blocks + ".",)
    unfrozen = tuple(layout.block(i) + "." for i in layout.top(settings.roi_vision_unfreeze_top_blocks))
    kept = [t for t in stock_targets if not t.startswith(inside)]
    if settings.roi_vision_lora_top_blocks == 0:
        # stock vision LoRA (freeze_vision_tower: false) stays, but never inside fully unfrozen blocks
        kept = [t for t in stock_targets if not t.startswith(unfrozen)]
    return kept + vision_lora_targets(model, layout, settings)


def module_path(param_name: str) -> str:
    """Model path of a (possibly peft-wrapped) parameter name: wrapper segments and prefix removed."""
    name = param_name[len(_PEFT_PREFIX) :] if param_name.startswith(_PEFT_PREFIX) else param_name
    return _WRAPPER_SEGMENT.sub("", name)


def classify(param_name: str, layout: VisionLayout | None) -> str:
    """Parameter group of a trainable parameter: language, projector, vision_lora or vision_unfrozen."""
    if layout is None:
        return "language"
    path = module_path(param_name)
    if any(path.startswith(p + ".") for p in layout.projectors):
        return "projector"
    if path.startswith(layout.blocks + "."):
        return "vision_lora" if "lora_" in param_name else "vision_unfrozen"
    if path.startswith(layout.tower + "."):
        # other vision-tower parts (patch embedding, ...) trained in full fine-tuning
        return "vision_unfrozen"
    return "language"
