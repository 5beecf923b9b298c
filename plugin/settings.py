"""The plugin's ``roi_`` recipe keys: taken out of the arguments, validated in one place, kept per process.

LLaMA-Factory rejects unknown keys, so the ``roi_`` keys are removed before it parses the rest; its own
unknown-key check stays on for every other key. A recipe without ``roi_`` keys leaves no settings active
and every hook falls through to stock behaviour.
"""

from __future__ import annotations

import difflib
import sys
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, ValidationError

PREFIX = "roi_"


class RoiSettingsError(ValueError):
    """A bad ``roi_`` key or value; the message names the key, the recipe and the allowed keys."""


def _not_a_bool(value: Any) -> Any:
    """YAML's true/false are not learning rates (pydantic's float would take true as 1.0)."""
    if isinstance(value, bool):
        raise ValueError("a learning rate is a number, not true/false")
    return value


#: a learning rate: a finite number above 0, as a number or the text YAML leaves "1e-4" as
LearningRate = Annotated[float, BeforeValidator(_not_a_bool), Field(gt=0, allow_inf_nan=False)]


class RoiSettings(BaseModel):
    """What the hooks do; learning rates left unset default to the recipe's ``learning_rate``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roi_train_projector: StrictBool = False
    roi_vision_lora_top_blocks: StrictInt = Field(default=0, ge=0)
    roi_vision_unfreeze_top_blocks: StrictInt = Field(default=0, ge=0)
    roi_lr_language: LearningRate | None = None
    roi_lr_projector: LearningRate | None = None
    roi_lr_vision_lora: LearningRate | None = None
    roi_lr_vision_unfrozen: LearningRate | None = None
    roi_label_logits_only: StrictBool = True
    roi_eval_verdicts: StrictBool = False
    roi_eval_max_samples: StrictInt = Field(default=512, ge=1)

    @property
    def selects_parameters(self) -> bool:
        """True when the settings change which parameters train (not only their learning rates)."""
        return (
            self.roi_train_projector
            or self.roi_vision_lora_top_blocks > 0
            or self.roi_vision_unfreeze_top_blocks > 0
        )

    def lr(self, group: str, default: float) -> float:
        """Learning rate of a parameter group (language, projector, vision_lora, vision_unfrozen)."""
        value = getattr(self, f"roi_lr_{group}")
        return float(default if value is None else value)


ALLOWED_KEYS: tuple[str, ...] = tuple(RoiSettings.model_fields)

_active: RoiSettings | None = None


def get_active() -> RoiSettings | None:
    """Settings of the run this process is parsing/training (None = no roi_ key = stock)."""
    return _active


def set_active(settings: RoiSettings | None) -> None:
    """Remember the settings of the arguments just parsed."""
    global _active
    _active = settings


def _recipe_name() -> str:
    """The recipe file given to llamafactory-cli, for error messages."""
    if len(sys.argv) > 1 and sys.argv[1].endswith((".yaml", ".yml", ".json")):
        return sys.argv[1]
    return "the training arguments"


def validate(raw: dict[str, Any], source: str | None = None) -> RoiSettings:
    """Validate ``roi_`` keys; raises RoiSettingsError naming the key, the recipe and the allowed keys."""
    source = source or _recipe_name()
    allowed = ", ".join(ALLOWED_KEYS)
    for key in raw:
        if key not in ALLOWED_KEYS:
            close = difflib.get_close_matches(key, ALLOWED_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RoiSettingsError(
                f"{source}: unknown qwenvl-roi key {key!r}{hint}; allowed roi_ keys: {allowed}"
            )
    try:
        settings = RoiSettings(**raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])} = {e.get('input')!r}: {e['msg']}" for e in err.errors()
        )
        raise RoiSettingsError(
            f"{source}: bad qwenvl-roi setting: {problems}; allowed roi_ keys: {allowed}"
        ) from None
    if "roi_eval_max_samples" in raw and not settings.roi_eval_verdicts:
        raise RoiSettingsError(
            f"{source}: roi_eval_max_samples is set but nothing uses it: it bounds the samples scored by "
            "roi_eval_verdicts: true"
        )
    return settings


def extract(args: dict[str, Any] | list[str]) -> tuple[dict[str, Any] | list[str], RoiSettings | None]:
    """Split ``roi_`` keys from LLaMA-Factory's arguments (a dict from a YAML, or a ``--key value`` list).

    Returns the arguments without them (same type) and the validated settings, or None if there were none.
    """
    if isinstance(args, dict):
        raw = {k: v for k, v in args.items() if isinstance(k, str) and k.startswith(PREFIX)}
        rest: dict[str, Any] | list[str] = {k: v for k, v in args.items() if k not in raw}
    else:
        raw, rest_list, i = {}, [], 0
        while i < len(args):
            item = args[i]
            if item.startswith("--" + PREFIX):
                key, sep, value = item[2:].partition("=")
                if not sep:
                    if i + 1 >= len(args) or args[i + 1].startswith("--"):
                        raise RoiSettingsError(f"command line: {item} needs a value")
                    value, i = args[i + 1], i + 1
                raw[key] = _from_text(value)
            else:
                rest_list.append(item)
            i += 1
        rest = rest_list
    if not raw:
        return args, None
    return rest, validate(raw)


def _from_text(value: str) -> Any:
    """Command-line values are text: read them as YAML scalars (true, 3, 1e-4) like a recipe would."""
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed
