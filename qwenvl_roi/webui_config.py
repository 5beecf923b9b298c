"""`qwenvl-roi webui-config`: a recipe as a saved configuration of LLaMA-Factory's web UI (LLaMA Board).

Why: the web UI's Train tab is its recipe form. Its "Config path" + "Load arguments" fill the form from a
YAML in ``llamaboard_config/`` keyed by the form's element ids (``train.learning_rate``, ...). This command
writes such a file from a training recipe, so the recipe, the ``roi_`` keys and the verdict-metric keys
included, appears in the form and **Start** launches what `llamafactory-cli train RECIPE` would run:

- a key with a field goes into it; every other key into "Extra arguments" (JSON), which the web UI merges
  into its arguments. Keys the web UI's runner sets from a field *after* that merge (LoRA, freeze,
  quantization, multimodal pixel limits) must fit their field or the command stops; the others go to Extra
  arguments when the field cannot hold them (a list, ``save_steps: 0.25``, a value off a slider's grid, null);
- a field the recipe leaves out takes llamafactory-cli's default (its argument classes), not the form's:
  batch size 8, not 2; ``lora_alpha`` 2 x ``lora_rank``, not 16;
- the run's folder is the web UI's own (``saves/<model name>/<method>/<last part of output_dir>``).

What the web UI cannot carry is said, not dropped silently: a ``false`` in "Extra arguments" is removed from
the launched YAML (LLaMA-Factory's ``_clean_cmd``), which is harmless where false is the default and named
where the default is true; ``double_quantization: false`` (the runner always sets true) is named too.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from qwenvl_roi.errors import InputError
from qwenvl_roi.fileio import atomic_open

#: LLaMA-Factory's folder of saved web UI configurations (llamafactory.webui.common.DEFAULT_CONFIG_DIR),
#: relative to the folder the web UI is started in
CONFIG_DIR = "llamaboard_config"
#: the first line of a file this command wrote (a YAML comment: the web UI reads past it)
MARKER = "# written by qwenvl-roi webui-config"


@dataclass(frozen=True)
class Field:
    """A field of the form: its element id, the value it holds, and when the web UI's runner reads it.

    ``after``: the runner (runner._parse_train_args) sets the argument from this field after merging
    "Extra arguments", so the recipe's value must be in the field; otherwise Extra arguments win and a value
    the field cannot hold goes there. ``low``/``high``/``step``: a slider's range and grid."""

    elem_id: str
    kind: str  # "text" (a textbox or dropdown), "int" / "float" (a slider), "bool", "list" (multiselect)
    after: bool = False
    low: float | None = None
    high: float | None = None
    step: float | None = None  # a slider's step, counted from ``low``
    #: an after-field's empty value, for a null (the runner turns it into None, or into the default)
    empty: Any = None


#: recipe key -> form field, as LLaMA-Factory 0.9.5 builds the form (webui/components/top.py and train.py)
#: and its runner reads it (webui/runner.py _parse_train_args)
FIELDS: dict[str, Field] = {
    "model_name_or_path": Field("top.model_path", "text"),
    "finetuning_type": Field("top.finetuning_type", "text"),
    "template": Field("top.template", "text"),
    "quantization_bit": Field("top.quantization_bit", "text", after=True, empty="none"),
    "quantization_method": Field("top.quantization_method", "text", after=True),
    "dataset_dir": Field("train.dataset_dir", "text"),
    "dataset": Field("train.dataset", "list"),
    "learning_rate": Field("train.learning_rate", "text"),
    "num_train_epochs": Field("train.num_train_epochs", "text"),
    "max_grad_norm": Field("train.max_grad_norm", "text"),
    "max_samples": Field("train.max_samples", "text"),
    "cutoff_len": Field("train.cutoff_len", "int", low=4, high=131072, step=1),
    "per_device_train_batch_size": Field("train.batch_size", "int", low=1, high=1024, step=1),
    "gradient_accumulation_steps": Field(
        "train.gradient_accumulation_steps", "int", low=1, high=1024, step=1
    ),
    "lr_scheduler_type": Field("train.lr_scheduler_type", "text"),
    "logging_steps": Field("train.logging_steps", "int", low=1, high=1000, step=5),
    "save_steps": Field("train.save_steps", "int", low=10, high=5000, step=10),
    "warmup_steps": Field("train.warmup_steps", "int", low=0, high=5000, step=1),
    "report_to": Field("train.report_to", "text"),
    "enable_thinking": Field("train.enable_thinking", "bool"),
    "lora_rank": Field("train.lora_rank", "int", after=True, low=1, high=1024, step=1),
    "lora_alpha": Field("train.lora_alpha", "int", after=True, low=1, high=2048, step=1),
    "lora_dropout": Field("train.lora_dropout", "float", after=True, low=0, high=1),
    "loraplus_lr_ratio": Field("train.loraplus_lr_ratio", "float", after=True, low=0, high=64, empty=0),
    "create_new_adapter": Field("train.create_new_adapter", "bool", after=True),
    "use_rslora": Field("train.use_rslora", "bool", after=True),
    "use_dora": Field("train.use_dora", "bool", after=True),
    "pissa_init": Field("train.use_pissa", "bool", after=True),
    "lora_target": Field("train.lora_target", "text", after=True, empty=""),
    "additional_target": Field("train.additional_target", "text", after=True, empty=""),
    "freeze_trainable_layers": Field(
        "train.freeze_trainable_layers", "int", after=True, low=-128, high=128, step=1
    ),
    "freeze_trainable_modules": Field("train.freeze_trainable_modules", "text", after=True),
    "freeze_extra_modules": Field("train.freeze_extra_modules", "text", after=True, empty=""),
    "freeze_vision_tower": Field("train.freeze_vision_tower", "bool", after=True),
    "freeze_multi_modal_projector": Field("train.freeze_multi_modal_projector", "bool", after=True),
    "freeze_language_model": Field("train.freeze_language_model", "bool", after=True),
    "image_max_pixels": Field("train.image_max_pixels", "text", after=True),
    "image_min_pixels": Field("train.image_min_pixels", "text", after=True),
    "video_max_pixels": Field("train.video_max_pixels", "text", after=True),
    "video_min_pixels": Field("train.video_min_pixels", "text", after=True),
}
#: keys the web UI sets itself: the stage from its Stage field, bf16/fp16 from "Compute type", the output
FROM_FORM = {"stage", "do_train", "bf16", "fp16", "pure_bf16", "output_dir"}
#: keys LLaMA-Factory reads as comma-separated text (split_arg), so a YAML list can be written as one
COMMA_LISTS = {
    "dataset",
    "lora_target",
    "additional_target",
    "freeze_trainable_modules",
    "freeze_extra_modules",
}
#: a field the recipe leaves out takes llamafactory-cli's default, not the form's (lora_alpha: 2 x lora_rank)
NOT_DEFAULTED = {"model_name_or_path", "template", "dataset", "dataset_dir", "finetuning_type"}


@functools.cache
def cli_defaults() -> Mapping[str, Any]:
    """llamafactory-cli train's default of every training argument (its argument classes); read once."""
    from dataclasses import MISSING, fields

    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    out: dict[str, Any] = {}
    for cls in (ModelArguments, DataArguments, TrainingArguments, FinetuningArguments, GeneratingArguments):
        for f in fields(cls):
            if f.default is not MISSING:
                value = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                continue
            out[f.name] = getattr(value, "value", value)  # enums (lr_scheduler_type, ...) as their text
    return MappingProxyType(out)


def true_by_default() -> set[str]:
    """Training arguments whose default is true (LLaMA-Factory's argument classes, the plugin's settings):
    the web UI removes a false from the launched arguments, so for these the run gets true instead."""
    from qwenvl_roi.plugin.settings import RoiSettings

    names = {k for k, v in cli_defaults().items() if v is True}
    return names | {k for k, f in RoiSettings.model_fields.items() if f.default is True}


def _compute_type(recipe: dict[str, Any]) -> str:
    for key in ("pure_bf16", "bf16", "fp16"):
        if recipe.get(key) is True:
            return key
    return "fp32"


def _in_field(key: str, value: Any, field: Field) -> Any:
    """``value`` as ``field`` holds it, or None when the field cannot hold it (wrong type, off the slider)."""
    if isinstance(value, list) and key in COMMA_LISTS and all(isinstance(v, str) for v in value):
        return value if field.kind == "list" else ",".join(value)
    if field.kind == "list":
        return [d.strip() for d in value.split(",") if d.strip()] if isinstance(value, str) else None
    if field.kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if field.kind == "text":
        return str(value)
    if isinstance(value, str) or (field.kind == "int" and not isinstance(value, int)):
        return None
    if (field.low is not None and value < field.low) or (field.high is not None and value > field.high):
        return None
    if field.step is not None and (value - (field.low or 0)) % field.step:
        return None  # the browser would move it to the slider's grid
    return value


def webui_config(recipe: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """The saved web UI configuration of a recipe (element id -> value) and notes for the user."""
    from llamafactory.webui.common import _clean_cmd  # what "Start" does to the arguments

    if recipe.get("stage", "sft") != "sft":
        raise InputError(
            f"{source}: stage {recipe.get('stage')!r}: the recipes are supervised fine-tuning (sft)"
        )
    if recipe.get("do_train") is not True:
        raise InputError(
            f"{source}: not a training recipe (do_train: {recipe.get('do_train')!r}); the web UI's Train tab "
            "always trains. Export recipes go to the Export tab or `llamafactory-cli export`"
        )
    defaults = cli_defaults()
    full = {k: defaults[k] for k in FIELDS if k not in recipe and k not in NOT_DEFAULTED and k in defaults}
    full.update(recipe)
    if full.get("lora_alpha") is None and "lora_rank" in full:  # FinetuningArguments: lora_rank * 2
        full["lora_alpha"] = int(full["lora_rank"]) * 2
    config: dict[str, Any] = {"train.training_stage": "Supervised Fine-Tuning"}
    extra: dict[str, Any] = {}
    notes: list[str] = []
    true_keys = true_by_default()
    for key, value in full.items():
        if key in FROM_FORM:
            continue
        field = FIELDS.get(key)
        if field is None:
            extra[key] = value
            if value is False and key in true_keys and key not in _clean_cmd({key: False}):
                notes.append(
                    f"{key}: false is dropped by the web UI and the run gets its default, true; run the "
                    "recipe with llamafactory-cli train to keep it false"
                )
            continue
        held = field.empty if value is None else _in_field(key, value, field)
        if held is not None:
            config[field.elem_id] = held
        elif not field.after:  # Extra arguments override this field's value
            extra[key] = value
            if value is not None:
                notes.append(f"{key}: {value!r} does not fit the form's field; it is in Extra arguments")
        else:
            raise InputError(
                f"{source}: {key}: {value!r} does not fit the web UI's field {field.elem_id} (read after "
                "Extra arguments); change it or run the recipe with llamafactory-cli train"
            )
    if recipe.get("quantization_bit") is not None and recipe.get("double_quantization") is False:
        notes.append("double_quantization: the web UI always launches quantized runs with true")
    config["train.compute_type"] = _compute_type(recipe)
    if recipe.get("output_dir"):
        name = Path(str(recipe["output_dir"])).name
        config["train.output_dir"] = name
        notes.append(
            f"output: the web UI writes to saves/<Model name>/{full.get('finetuning_type', 'lora')}/{name} "
            f"(the recipe says {recipe['output_dir']})"
        )
    try:
        config["train.extra_args"] = json.dumps(extra, ensure_ascii=False)
    except TypeError:
        bad = [k for k, v in extra.items() if not _json_ok(v)]
        raise InputError(
            f"{source}: {', '.join(bad)}: not a JSON value (a YAML date or timestamp?); quote it"
        ) from None
    return config, notes


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


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
    recipe_path = Path(args.recipe)
    try:
        recipe = load_recipe(recipe_path)
        config, notes = webui_config(recipe, str(recipe_path))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.name or f"roi_{recipe_path.stem}.yaml"
    if not name.endswith(".yaml") or "/" in name or "\\" in name:
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
