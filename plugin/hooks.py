"""Patch functions, one per LLaMA-Factory module, registered in activation.PATCHES.

Each wrapper calls LLaMA-Factory's own function first or instead only when ``roi_`` settings are active,
so a recipe without ``roi_`` keys runs exactly the stock code paths. LLaMA-Factory's functions are read and
replaced through compat.py, which lists them with the parameters these wrappers rely on.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from . import compat, dataset_match, label_logits, optim, selection, settings, verdicts, vision_backprop

#: the plugin's refusals of a run's arguments: each message names the recipe, the key and the fix
REFUSALS = (settings.RoiSettingsError, dataset_match.DatasetMismatchError)


def message_only(exc: BaseException) -> None:
    """Have the interpreter show this refusal, if nothing catches it, as one line without its traceback.

    Why: `llamafactory-cli` lets it reach the top, where ~25 lines of LLaMA-Factory's and transformers'
    frames come first and bury the line that says what to change. Only this exception object is shown so
    (any other error keeps its traceback); code that catches it sees the exception as before."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if value is exc:
            print(f"qwenvl-roi refused the run: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook


@contextmanager
def refusals_in_one_line() -> Iterator[None]:
    """Run argument checks whose refusals (REFUSALS) are shown as one line if nothing catches them."""
    try:
        yield
    except REFUSALS as exc:
        message_only(exc)
        raise


# LLaMA-Factory options that build their own optimizer; the plugin's groups cannot be combined with them.
_OWN_OPTIMIZERS = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")


def check_compatible(
    roi: settings.RoiSettings,
    model_args: Any,
    finetuning_args: Any,
    training_args: Any = None,
    config: Callable[[], Any] | None = None,
) -> None:
    """Cross-checks of roi_ keys against the parsed recipe and the model's config, before anything loads;
    RoiSettingsError names the keys. ``config``: gives the model's config as dataset_match.model_config does
    (the parse hook passes one that reads it once for all its checks)."""
    err = settings.RoiSettingsError
    source = settings._recipe_name()
    ftype = finetuning_args.finetuning_type
    if roi.selects_parameters and ftype != "lora":
        raise err(
            f"{source}: roi_train_projector / roi_vision_lora_top_blocks / roi_vision_unfreeze_top_blocks "
            f"need finetuning_type: lora (got {ftype!r}); with full or freeze tuning use only roi_lr_* keys"
        )
    lora, unfrozen = roi.roi_vision_lora_top_blocks, roi.roi_vision_unfreeze_top_blocks
    if 0 < lora <= unfrozen:
        raise err(
            f"{source}: roi_vision_lora_top_blocks {lora} puts LoRA on the top {lora} vision blocks, but "
            f"roi_vision_unfreeze_top_blocks {unfrozen} trains them whole: no block gets LoRA; set "
            f"roi_vision_lora_top_blocks above {unfrozen} (phase 3: LoRA on the blocks below the unfrozen)"
        )
    if roi.selects_parameters:
        model_config = config() if config else dataset_match.model_config(model_args)
        _check_adapter_resume(roi, model_args, finetuning_args, model_config, source)
        if model_config is not None:
            _check_model(roi, model_args, model_config, source)
    if training_args is not None:
        _check_resumed_run(roi, training_args, source)
    if finetuning_args.loraplus_lr_ratio is not None:
        raise err(f"{source}: roi_ keys set their own learning-rate groups; remove loraplus_lr_ratio")
    for flag in _OWN_OPTIMIZERS:
        if getattr(finetuning_args, flag, False):
            raise err(
                f"{source}: roi_ keys set their own optimizer groups; they cannot be combined with {flag}"
            )
    if roi.roi_vision_unfreeze_top_blocks and model_args.quantization_bit is not None:
        raise err(
            f"{source}: roi_vision_unfreeze_top_blocks cannot train blocks of a quantized model "
            f"(quantization_bit: {model_args.quantization_bit}); unfreeze blocks on a bf16/fp32 base"
        )
    if ftype == "lora":
        # LLaMA-Factory's own LoRA on the whole tower (freeze_vision_tower: false) is a vision_lora group too
        vision_lora = roi.roi_vision_lora_top_blocks > 0 or not finetuning_args.freeze_vision_tower
        unused = [
            (roi.roi_lr_projector, "roi_lr_projector", roi.roi_train_projector, "roi_train_projector: true"),
            (roi.roi_lr_vision_lora, "roi_lr_vision_lora", vision_lora,
             "roi_vision_lora_top_blocks > 0 (or freeze_vision_tower: false)"),
            (roi.roi_lr_vision_unfrozen, "roi_lr_vision_unfrozen", roi.roi_vision_unfreeze_top_blocks > 0,
             "roi_vision_unfreeze_top_blocks > 0"),
        ]  # fmt: skip
    else:
        unused = [(roi.roi_lr_vision_lora, "roi_lr_vision_lora", False, "finetuning_type: lora")]
    if ftype == "full":  # the projector and the tower train whole when LLaMA-Factory does not freeze them
        unused += [
            (roi.roi_lr_projector, "roi_lr_projector", not finetuning_args.freeze_multi_modal_projector,
             "freeze_multi_modal_projector: false"),
            (roi.roi_lr_vision_unfrozen, "roi_lr_vision_unfrozen", not finetuning_args.freeze_vision_tower,
             "freeze_vision_tower: false"),
        ]  # fmt: skip
    for value, key, used, needs in unused:
        if value is not None and not used:
            raise err(f"{source}: {key} is set but nothing uses it: it needs {needs}")


def _check_adapter_resume(
    roi: settings.RoiSettings, model_args: Any, finetuning_args: Any, config: Any, source: str
) -> None:
    """The plugin chooses the modules of a NEW adapter; one LLaMA-Factory resumes keeps the modules it was
    trained with (its adapter_config.json), so vision LoRA and unfrozen blocks would silently not train."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    adapters = model_args.adapter_name_or_path
    if not adapters:
        return
    # LLaMA-Factory resumes the last adapter unless create_new_adapter, and always where it cannot merge:
    # a quantized model (quantization_bit, or a checkpoint quantized already: AWQ, GPTQ, ...), ZeRO-3,
    # KTransformers, Unsloth (llamafactory/model/adapter.py _setup_lora_tuning, is_mergeable)
    quantized = model_args.quantization_bit is not None or getattr(config, "quantization_config", None)
    cannot_merge = (
        quantized
        or is_deepspeed_zero3_enabled()
        or getattr(model_args, "use_kt", False)
        or getattr(model_args, "use_unsloth", False)
    )
    if finetuning_args.create_new_adapter and not cannot_merge:
        return
    keys = [
        k
        for k in ("roi_train_projector", "roi_vision_lora_top_blocks", "roi_vision_unfreeze_top_blocks")
        if getattr(roi, k)
    ]
    why = "" if not finetuning_args.create_new_adapter else " (LLaMA-Factory cannot merge it into this model)"
    raise settings.RoiSettingsError(
        f"{source}: {', '.join(keys)} choose the modules of a new adapter, but adapter_name_or_path "
        f"{adapters[-1]} is resumed with the modules it was trained with{why}, so they would not apply; "
        "train on the previous phase's merged export (llamafactory-cli export recipes/export_*.yaml, then "
        "model_name_or_path: that folder, as the recipes chain), or set create_new_adapter: true on a "
        "bf16/fp32 base without ZeRO-3, Unsloth or KTransformers"
    )


def _check_model(roi: settings.RoiSettings, model_args: Any, config: Any, source: str) -> None:
    """From the model's config, before its weights load: a vision-language model, with as many vision blocks
    as the recipe asks for (the same checks run again on the loaded model)."""
    model_type = getattr(config, "model_type", "")
    try:
        selection.projector_keys(model_type)  # a family, or a model LLaMA-Factory knows as composite
    except ValueError as exc:
        raise settings.RoiSettingsError(f"{source}: {model_args.model_name_or_path}: {exc}") from None
    depth = selection._config_depth(config, 0)
    for key in ("roi_vision_lora_top_blocks", "roi_vision_unfreeze_top_blocks"):
        count = getattr(roi, key)
        if depth and count > depth:
            raise settings.RoiSettingsError(
                f"{source}: {key} {count}: asked for the top {count} vision blocks but {model_type}'s "
                f"vision tower has {depth} blocks (config vision depth); use a value between 0 and {depth}"
            )


def _check_resumed_run(roi: settings.RoiSettings, training_args: Any, source: str) -> None:
    """A run that resumes a checkpoint keeps its optimizer's groups and learning rates: roi_ keys other than
    the ones it was started with would be shown but not used (or make the optimizer state not fit)."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = getattr(training_args, "resume_from_checkpoint", None)
    output_dir = str(training_args.output_dir)
    if checkpoint is None and training_args.do_train and not training_args.overwrite_output_dir:
        # what get_train_args decides after this parse (llamafactory/hparams/parser.py): the last checkpoint
        checkpoint = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if not checkpoint or not isinstance(checkpoint, str):
        return
    table = Path(checkpoint).parent / optim.TABLE_FILE
    try:
        before = json.loads(table.read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(before, dict):
        return
    now = roi.model_dump()
    shaping = ("roi_train_", "roi_vision_", "roi_lr_")  # the keys that make the optimizer's groups
    changed = [k for k in now if k.startswith(shaping) and k in before and before[k] != now[k]]
    if changed:
        what = ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed)
        raise settings.RoiSettingsError(
            f"{source}: resuming {checkpoint}, whose run was started with other roi_ settings ({what}; "
            f"{table}); a resumed run keeps the optimizer's groups and learning rates, so they would not "
            "apply: set a new output_dir, or overwrite_output_dir: true to start over, or the earlier values"
        )


def patch_parser(module: ModuleType) -> None:
    """Take roi_ keys out before HfArgumentParser sees them; check them and the pixel limits after."""
    original_parse = compat.get(module, "_parse_args")
    original_train = compat.get(module, "_parse_train_args")
    read_args = compat.get(module, "read_args")

    @functools.wraps(original_parse)
    def _parse_args(parser: Any, args: Any = None, allow_extra_keys: bool = False) -> Any:
        args = read_args(args)
        with refusals_in_one_line():
            args, roi = settings.extract(args)
        settings.set_active(roi)
        return original_parse(parser, args, allow_extra_keys)

    @functools.wraps(original_train)
    def _parse_train_args(args: Any = None) -> Any:
        parsed = original_train(args)
        model_args, data_args, training_args, finetuning_args = parsed[:4]
        roi = settings.get_active()
        verdicts.set_plan(None)  # a failing check below leaves no earlier parse's plan behind
        # the model's config, read at most once for both checks (only when one needs it)
        config = functools.cache(functools.partial(dataset_match.model_config, model_args))
        with refusals_in_one_line():
            if roi is not None:
                check_compatible(roi, model_args, finetuning_args, training_args, config)
            dataset_match.check_from_args(model_args, data_args, settings._recipe_name(), config)
            verdicts.set_plan(verdicts.build_plan(roi, model_args, data_args, training_args, finetuning_args))
        return parsed

    compat.replace(module, "_parse_args", _parse_args)
    compat.replace(module, "_parse_train_args", _parse_train_args)


def patch_visual(module: ModuleType) -> None:
    """Exact vision LoRA targets and modules_to_save, after LLaMA-Factory's own target selection."""
    original = compat.get(module, "patch_target_modules")

    @functools.wraps(original)
    def patch_target_modules(model: Any, finetuning_args: Any, target_modules: list[str]) -> list[str]:
        result = original(model, finetuning_args, target_modules)
        roi = settings.get_active()
        if roi is None or not roi.selects_parameters:
            return result
        targets = selection.select_lora_targets(model, list(result), roi)
        extra = selection.modules_to_save(selection.find_layout(model), roi)
        if extra:
            existing = list(finetuning_args.additional_target or [])
            finetuning_args.additional_target = existing + [m for m in extra if m not in existing]
        return targets

    compat.replace(module, "patch_target_modules", patch_target_modules)


def patch_trainer_utils(module: ModuleType) -> None:
    """Per-group learning rates at LLaMA-Factory's custom-optimizer hook (all trainers import it by name);
    also runs the vision tower backwards only as far down as something trains (vision_backprop.py) and
    computes the language-model head only where the loss scores (label_logits.py)."""
    original = compat.get(module, "create_custom_optimizer")

    @functools.wraps(original)
    def create_custom_optimizer(model: Any, training_args: Any, finetuning_args: Any) -> Any:
        roi = settings.get_active()
        if roi is None:
            return original(model, training_args, finetuning_args)
        # The model is fully prepared (peft, gradient checkpointing) by the time its optimizer is built.
        vision_backprop.trim_vision_backprop(model)
        if roi.roi_label_logits_only:
            label_logits.register(model, finetuning_args)
        return optim.create_optimizer(model, training_args, roi)

    compat.replace(module, "create_custom_optimizer", create_custom_optimizer)


def patch_quantization(module: ModuleType) -> None:
    """QLoRA with roi_train_projector: keep the projector out of 4/8-bit so it can train in full.

    The projector keys are the family's (qwenvl_roi/families.py): the merger, and for Qwen3-VL also the
    deepstack mergers, which LLaMA-Factory's own projector keys leave out."""
    original = compat.get(module, "configure_quantization")

    @functools.wraps(original)
    def configure_quantization(
        config: Any, tokenizer: Any, model_args: Any, is_trainable: bool, init_kwargs: dict
    ):
        result = original(config, tokenizer, model_args, is_trainable, init_kwargs)
        roi = settings.get_active()
        quant = init_kwargs.get("quantization_config")
        if roi is None or not roi.roi_train_projector or not is_trainable or quant is None:
            return result
        if not hasattr(quant, "llm_int8_skip_modules"):  # not bitsandbytes
            raise settings.RoiSettingsError(
                f"{settings._recipe_name()}: roi_train_projector with quantization_method "
                f"{model_args.quantization_method!r}: only bitsandbytes can leave the projector unquantized"
            )
        keys = selection.projector_keys(getattr(config, "model_type", ""))
        patterns = [f"(?:.*\\.)?{re.escape(key)}" for key in keys]
        skip = list(quant.llm_int8_skip_modules or ["lm_head"])  # None meant transformers' default: lm_head
        quant.llm_int8_skip_modules = skip + [p for p in patterns if p not in skip]
        return result

    compat.replace(module, "configure_quantization", configure_quantization)
