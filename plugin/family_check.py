"""Stop before training when a ROI dataset and the recipe's template or model belong to different families.

Why: box coordinates in the prompts are written in one family's frame (qwenvl_roi/families.py: absolute
pixels for Qwen2.5-VL, normalised ints for Qwen2-VL, relative 0..1000 for Qwen3-VL / Qwen3.5). Training a
dataset converted for one family on a model of another teaches wrong coordinates without any error, and a
reasoning template with thinking on (LLaMA-Factory's default, and the web UI's "Enable thinking" box) puts an
empty think block at the start of every trained answer, which the verdict scoring does not expect. Both are
caught here from the ``roi_meta`` the converters write into each dataset_info.json entry:

- at argument parsing (:func:`check_template`): the recipe's template must not train a think block;
- when LLaMA-Factory loads the model config (:func:`check_model`, from the ``patch_config`` hook): the model's
  ``model_type`` must belong to the family every ROI dataset was built for.

Datasets without ``roi_meta`` (stock datasets) are never checked.
"""

from __future__ import annotations

from typing import Any

from qwenvl_roi.families import FAMILIES, find_family

from . import pixels

# {dataset name: family} of the ROI datasets of the run this process parsed (per process, like the settings),
# and that run's ModelArguments: only the model loaded with exactly those arguments is checked, so a later
# load in the same process with its own arguments (inference, a test) is left alone.
_expected: dict[str, str] = {}
_source: str = ""
_model_args: Any = None


class FamilyMismatchError(ValueError):
    """A ROI dataset built for another model family, or a template that trains a think block."""


def reset() -> None:
    """Forget the datasets of an earlier parse (each parse of a new run starts clean)."""
    global _model_args
    _expected.clear()
    _model_args = None


def check_template(model_args: Any, data_args: Any, recipe: str) -> None:
    """At parse time: remember the ROI datasets' families and refuse a template that trains a think block."""
    from llamafactory.data.template import TEMPLATES, ReasoningTemplate

    global _source, _model_args
    reset()
    path, metas = pixels.roi_metas(
        str(getattr(data_args, "dataset_dir", "data")), pixels.dataset_names(data_args)
    )
    _source, _model_args = str(path), model_args
    for name, meta in metas.items():
        fam = meta.get("model_family")
        if fam not in FAMILIES:
            raise FamilyMismatchError(
                f"{path}: dataset {name!r}: roi_meta.model_family must be one of "
                f"{', '.join(FAMILIES)}, got {fam!r}"
            )
        _expected[name] = fam
    template = TEMPLATES.get(getattr(data_args, "template", None) or "")
    if metas and isinstance(template, ReasoningTemplate) and getattr(data_args, "enable_thinking", True):
        raise FamilyMismatchError(
            f"{recipe}: template {data_args.template!r} with enable_thinking: true puts an empty think block "
            f"into every trained answer of {', '.join(sorted(metas))}; set enable_thinking: false (web UI: "
            "untick 'Enable thinking'), which puts it into the prompt as the model's non-thinking chat does, "
            "or use the family's recipes (recipes/<family>/)"
        )


def check_model(config: Any, model_args: Any) -> None:
    """At model load: the model's family must be the one every remembered ROI dataset was built for."""
    if not _expected or model_args is not _model_args:
        return
    model_type = getattr(config, "model_type", None)
    fam = find_family(model_type)
    wrong = {name: f for name, f in _expected.items() if fam is None or f != fam.name}
    if not wrong:
        return
    known = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    built = "; ".join(f"{name!r} for {f}" for name, f in sorted(wrong.items()))
    family_name = fam.name if fam else "none qwenvl-roi supports"
    raise FamilyMismatchError(
        f"{_source}: the model's model_type is {model_type!r} (family {family_name}) but dataset {built}: "
        "its box coordinates are written in that family's frame. Convert the data with model_family set to "
        "the model's family in configs/data.yaml (qwenvl-roi convert), or train a model of the dataset's "
        f"family. Families: {known}"
    )
