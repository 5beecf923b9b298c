"""`qwenvl-roi webui-config`: a recipe as a saved configuration of LLaMA-Factory's web UI (LLaMA Board).

Why: the web UI's Train tab is its recipe form. Its "Config path" + "Load arguments" fill the form from a
YAML in ``llamaboard_config/`` keyed by the form's element ids (``train.learning_rate``, ...). This command
writes such a file from one of our recipes, so the recipe, the ``roi_`` keys and the verdict-metric keys
included, appears in the form: the keys the form has a field for go into that field, every other key into
"Extra arguments" (JSON), which the web UI merges into the arguments it launches `llamafactory-cli train`
with. Keys the web UI sets from a field after merging the extra arguments (LoRA, multimodal, pixel limits)
must be in their fields, so they are; the web UI's own output folder (``saves/<model name>/<method>/<name>``)
takes the last part of the recipe's ``output_dir``.

What the web UI cannot carry is said, not dropped silently: a ``false`` in "Extra arguments" is removed from
the launched YAML (LLaMA-Factory's ``_clean_cmd``), which is harmless where false is the default and named
where the default is true (the run would get true).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from qwenvl_roi.errors import InputError
from qwenvl_roi.fileio import atomic_open

#: LLaMA-Factory's folder of saved web UI configurations (llamafactory.webui.common.DEFAULT_CONFIG_DIR),
#: relative to the folder the web UI is started in
CONFIG_DIR = "llamaboard_config"
#: the first line of a file this command wrote (a YAML comment: the web UI reads past it)
MARKER = "# written by qwenvl-roi webui-config"


def _text(value: Any) -> str:
    return str(value)


def _compute_type(recipe: dict[str, Any]) -> str:
    for key in ("pure_bf16", "bf16", "fp16"):
        if recipe.get(key) is True:
            return key
    return "fp32"


#: recipe key -> (form element id, how the field holds the value); the form's fields as LLaMA-Factory 0.9.5
#: builds them (webui/components/top.py and train.py; the runner reads them in runner._parse_train_args)
FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "model_name_or_path": ("top.model_path", _text),
    "finetuning_type": ("top.finetuning_type", _text),
    "template": ("top.template", _text),
    "quantization_bit": ("top.quantization_bit", _text),
    "quantization_method": ("top.quantization_method", _text),
    "dataset_dir": ("train.dataset_dir", _text),
    "dataset": ("train.dataset", lambda v: [d.strip() for d in str(v).split(",") if d.strip()]),
    "learning_rate": ("train.learning_rate", _text),
    "num_train_epochs": ("train.num_train_epochs", _text),
    "max_grad_norm": ("train.max_grad_norm", _text),
    "max_samples": ("train.max_samples", _text),
    "cutoff_len": ("train.cutoff_len", int),
    "per_device_train_batch_size": ("train.batch_size", int),
    "gradient_accumulation_steps": ("train.gradient_accumulation_steps", int),
    "lr_scheduler_type": ("train.lr_scheduler_type", _text),
    "logging_steps": ("train.logging_steps", int),
    "save_steps": ("train.save_steps", int),
    "warmup_steps": ("train.warmup_steps", int),
    "report_to": ("train.report_to", _text),
    "lora_rank": ("train.lora_rank", int),
    "lora_alpha": ("train.lora_alpha", int),
    "lora_dropout": ("train.lora_dropout", float),
    "lora_target": ("train.lora_target", _text),
    "freeze_vision_tower": ("train.freeze_vision_tower", bool),
    "freeze_multi_modal_projector": ("train.freeze_multi_modal_projector", bool),
    "freeze_language_model": ("train.freeze_language_model", bool),
    "enable_thinking": ("train.enable_thinking", bool),
    "image_max_pixels": ("train.image_max_pixels", _text),
    "image_min_pixels": ("train.image_min_pixels", _text),
}
#: keys the web UI sets itself (the stage from its Stage field; bf16/fp16 from "Compute type")
FROM_FORM = {"stage", "do_train", "bf16", "fp16", "pure_bf16", "output_dir"}


def true_by_default() -> set[str]:
    """Training arguments whose default is true (LLaMA-Factory's argument classes, the plugin's settings):
    the web UI removes a false from the launched arguments, so for these the run gets true instead."""
    from dataclasses import fields

    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    from qwenvl_roi.plugin.settings import RoiSettings

    classes = (ModelArguments, DataArguments, TrainingArguments, FinetuningArguments, GeneratingArguments)
    names = {f.name for cls in classes for f in fields(cls) if f.default is True}
    return names | {k for k, f in RoiSettings.model_fields.items() if f.default is True}


def webui_config(recipe: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """The saved web UI configuration of a recipe (element id -> value) and notes for the user."""
    if recipe.get("stage", "sft") != "sft":
        raise InputError(
            f"{source}: stage {recipe.get('stage')!r}: the recipes are supervised fine-tuning (sft)"
        )
    config: dict[str, Any] = {"train.training_stage": "Supervised Fine-Tuning"}
    extra: dict[str, Any] = {}
    notes: list[str] = []
    from llamafactory.webui.common import _clean_cmd  # what "Start" does to the arguments

    true_keys = true_by_default()
    for key, value in recipe.items():
        if value is None or key in FROM_FORM:
            continue
        if key in FIELDS:
            elem_id, convert = FIELDS[key]
            config[elem_id] = convert(value)
            continue
        extra[key] = value
        if value is False and key in true_keys and key not in _clean_cmd({key: False}):
            notes.append(
                f"{key}: false is dropped by the web UI and the run gets its default, true; run the recipe "
                "with llamafactory-cli train to keep it false"
            )
    config["train.compute_type"] = _compute_type(recipe)
    if recipe.get("output_dir"):
        name = Path(str(recipe["output_dir"])).name
        config["train.output_dir"] = name
        notes.append(
            f"output: the web UI writes to saves/<Model name>/{recipe.get('finetuning_type', 'lora')}/{name} "
            f"(the recipe says {recipe['output_dir']})"
        )
    config["train.extra_args"] = json.dumps(extra, ensure_ascii=False)
    return config, notes


def load_recipe(path: Path) -> dict[str, Any]:
    """A recipe YAML as a dict, its roi_ keys checked as the plugin checks them."""
    from qwenvl_roi.plugin.settings import RoiSettingsError, validate

    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not YAML ({exc})") from None
    if not isinstance(recipe, dict):
        raise InputError(f"{path}: a recipe is a mapping of training arguments")
    try:
        validate({k: v for k, v in recipe.items() if str(k).startswith("roi_")}, str(path))
    except RoiSettingsError as exc:
        raise InputError(str(exc)) from None
    return recipe


def _ours(path: Path) -> bool:
    """Whether a saved configuration is one this command wrote (its first line), so it may be replaced."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith(MARKER)
    except OSError:
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="a training recipe, e.g. recipes/phase2.yaml")
    parser.add_argument(
        "--name", default=None, help="the saved configuration's file name (default: roi_<recipe name>.yaml)"
    )
    parser.add_argument(
        "--dir",
        default=CONFIG_DIR,
        help=f"where the web UI looks for saved configurations (default: {CONFIG_DIR}/ of the folder you "
        "start llamafactory-cli webui in)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    recipe_path = Path(args.recipe)
    try:
        recipe = load_recipe(recipe_path)
        config, notes = webui_config(recipe, str(recipe_path))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.name or f"roi_{recipe_path.stem}.yaml"
    if not name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name:
        print(
            f"error: --name {name!r}: a file name ending in .yaml (the web UI lists only those)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.dir) / name
    if out.exists() and not _ours(out):
        print(
            f"error: {out} exists and was not written by qwenvl-roi webui-config (a configuration saved from "
            "the web UI?); left as it is: choose another --name",
            file=sys.stderr,
        )
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as fh:
        fh.write(f"{MARKER} from {recipe_path.as_posix()}\n")
        yaml.safe_dump(config, fh, allow_unicode=True, sort_keys=False)
    print(
        f"wrote {out}: in the web UI's Train tab choose the Model name, then type {name} in Config path "
        "and press Load arguments"
    )
    for note in notes:
        print(f"note: {note}")
    return 0
