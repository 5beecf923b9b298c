"""Stop before the first step when a dataset was built for another recipe or another model than this run's.

The converters record, in each dataset_info.json entry, how the dataset was built (``roi_meta``:
docs/architecture.md). Three mismatches train the wrong thing without any error from LLaMA-Factory:

- pixel limits: Qwen2.5-VL prompts carry box coordinates in pixels of the image after LLaMA-Factory's
  resize, so a dataset converted for ``image_max_pixels`` A but trained with B teaches wrong coordinates;
- model family: each family reads coordinates in its own frame (qwenvl_roi/families.py: absolute pixels,
  0-1000 normalised, relative 0..1000); training one family on another's data teaches a frame the model was
  never pretrained on;
- thinking: a reasoning template with thinking on (LLaMA-Factory's default, the web UI's "Enable thinking")
  puts an empty think block at the start of every trained answer, which the verdict scoring does not expect.

Datasets without ``roi_meta`` (stock datasets) are never checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qwenvl_roi.families import FAMILIES, find_family

from . import compat

DATA_CONFIG = "dataset_info.json"


class DatasetMismatchError(ValueError):
    """Dataset built for other pixel limits or another model family than the run trains."""


def _names(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def roi_entries(dataset_dir: str, datasets: list[str]) -> tuple[Path, dict[str, dict[str, Any]]]:
    """(dataset_info.json path, {dataset name: roi_meta}) for the named datasets that carry roi_meta.

    Entries without roi_meta (stock datasets) and online dataset dirs are left out.
    """
    path = Path(dataset_dir) / DATA_CONFIG
    if not datasets or dataset_dir.startswith("REMOTE:") or not path.is_file():
        return path, {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetMismatchError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
    found = {}
    for name in datasets:
        entry = info.get(name)
        if not isinstance(entry, dict) or "roi_meta" not in entry:
            continue
        meta = entry["roi_meta"]
        if not isinstance(meta, dict):
            raise DatasetMismatchError(f"{path}: dataset {name!r}: roi_meta must be an object, got {meta!r}")
        found[name] = meta
    return path, found


def run_datasets(data_args: Any) -> tuple[Path, dict[str, dict[str, Any]]]:
    """roi_entries of the run's train and eval datasets."""
    names = _names(getattr(data_args, "dataset", None)) + _names(getattr(data_args, "eval_dataset", None))
    return roi_entries(str(getattr(data_args, "dataset_dir", "data")), names)


def check_pixel_limits(
    dataset_dir: str, datasets: list[str], image_max_pixels: int, image_min_pixels: int
) -> None:
    """Raise DatasetMismatchError naming the file, dataset and both values if any roi_meta disagrees."""
    path, entries = roi_entries(dataset_dir, datasets)
    problems: list[str] = []
    for name, meta in entries.items():
        for key, recipe_value in (
            ("image_max_pixels", image_max_pixels),
            ("image_min_pixels", image_min_pixels),
        ):
            if key not in meta:
                raise DatasetMismatchError(f"{path}: dataset {name!r}: roi_meta has no {key!r}")
            built = meta[key]
            if not isinstance(built, int) or isinstance(built, bool):
                raise DatasetMismatchError(
                    f"{path}: dataset {name!r}: roi_meta.{key} must be an integer, got {built!r}"
                )
            if built != recipe_value:
                problems.append(
                    f"dataset {name!r} was built with {key}={built} but the recipe trains with {recipe_value}"
                )
    if problems:
        raise DatasetMismatchError(
            f"{os.fspath(path)}: "
            + "; ".join(problems)
            + ". Box coordinates in the prompts depend on these limits: set image_max_pixels and "
            "image_min_pixels in the recipe to the dataset's values, or rebuild the dataset "
            "(qwenvl-roi convert) with the recipe's."
        )


def _frame(name: str) -> str:
    """The words for a family's coordinate frame in a mismatch error (the family table's frame entry)."""
    fam = FAMILIES.get(name)
    return fam.frame.words if fam else "an unknown frame"


def check_model_family(dataset_dir: str, datasets: list[str], model: str, model_type: str) -> None:
    """Raise DatasetMismatchError when a dataset's roi_meta.model_family is not the model's family."""
    path, entries = roi_entries(dataset_dir, datasets)
    fam = find_family(model_type)
    for name, meta in entries.items():
        built = meta.get("model_family")
        if built is None or (fam is not None and built == fam.name):
            continue
        if built not in FAMILIES:
            raise DatasetMismatchError(
                f"{path}: dataset {name!r}: roi_meta.model_family must be one of {', '.join(FAMILIES)}, "
                f"got {built!r}"
            )
        if fam is None:
            known = ", ".join(f"{f.name}: {'/'.join(f.model_types)}" for f in FAMILIES.values())
            raise DatasetMismatchError(
                f"{path}: dataset {name!r} was converted with model_family={built} but the model {model} "
                f"is of model_type {model_type!r}, which no qwenvl-roi family covers ({known})"
            )
        raise DatasetMismatchError(
            f"{path}: dataset {name!r} was converted with model_family={built} ({_frame(built)}) but the "
            f"model {model} is {fam.name} (model_type {model_type!r}, expects {_frame(fam.name)}). Set "
            f"model_family: {fam.name} in the converters' config (configs/data.yaml) and re-run "
            f"`qwenvl-roi convert`, or train a {built} model on this dataset (recipes: "
            f"{FAMILIES[built].recipes_dir}/)."
        )


def check_template(dataset_dir: str, datasets: list[str], data_args: Any, recipe: str) -> None:
    """Refuse a reasoning template with thinking on for ROI datasets (it trains a think block)."""
    templates = compat.get("llamafactory.data.template", "TEMPLATES")
    reasoning_template = compat.get("llamafactory.data.template", "ReasoningTemplate")

    entries = roi_entries(dataset_dir, datasets)[1]
    template = templates.get(getattr(data_args, "template", None) or "")
    if entries and isinstance(template, reasoning_template) and getattr(data_args, "enable_thinking", True):
        raise DatasetMismatchError(
            f"{recipe}: template {data_args.template!r} with enable_thinking: true puts an empty think block "
            f"into every trained answer of {', '.join(sorted(entries))}; set enable_thinking: false (web UI: "
            "untick 'Enable thinking'), which puts it into the prompt as the model's non-thinking chat does, "
            "or use the family's recipes (recipes/<family>/)"
        )


def model_config(model_args: Any) -> Any:
    """The model's config (no weights), or None when it cannot be read here (LLaMA-Factory will say why)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            trust_remote_code=bool(getattr(model_args, "trust_remote_code", False)),
            cache_dir=getattr(model_args, "cache_dir", None),
        )
    except (OSError, ValueError):
        return None


def check_from_args(
    model_args: Any,
    data_args: Any,
    recipe: str = "the training arguments",
    config: Callable[[], Any] | None = None,
) -> None:
    """Every check for LLaMA-Factory's parsed arguments (train and eval datasets). ``config``: gives the
    model's config as model_config does (the parse hook passes one that reads it once for all its checks)."""
    names = _names(getattr(data_args, "dataset", None)) + _names(getattr(data_args, "eval_dataset", None))
    dataset_dir = str(getattr(data_args, "dataset_dir", "data"))
    check_pixel_limits(dataset_dir, names, int(model_args.image_max_pixels), int(model_args.image_min_pixels))
    if roi_entries(dataset_dir, names)[1]:
        check_template(dataset_dir, names, data_args, recipe)
        model_type = getattr(config() if config else model_config(model_args), "model_type", None)
        if model_type is not None:
            check_model_family(dataset_dir, names, str(model_args.model_name_or_path), model_type)
            check_family_template(model_type, data_args, recipe)


def check_family_template(model_type: str, data_args: Any, recipe: str) -> None:
    """The template must be the family's (the family table's), the one predict and eval prompt with: one
    family's model under another family's recipes trains on prompts it never sees at inference (e.g. no
    empty think block before the answer)."""
    fam = find_family(model_type)
    template = getattr(data_args, "template", None)
    if fam is None or template == fam.template:
        return
    raise DatasetMismatchError(
        f"{recipe}: template {template!r} is not {fam.name}'s template {fam.template!r}, which `qwenvl-roi "
        f"predict` and the verdict metrics prompt with, so the model would train on prompts it never sees; "
        f"use the family's recipes ({fam.recipes_dir}/) or set template: {fam.template}"
    )
