"""Value types the file contracts share: finite numbers, probabilities, counts, boxes, keys left out.

Why strict: every file is JSON this project writes. A score that arrives as the string "0.5", a width as
3.0, a box of three numbers or a NaN (Python's json reads ``NaN`` and ``Infinity``) means a writer or a hand
edit went wrong, and lax coercion would carry it into the metrics or the pictures. Numbers keep the JSON
type they were written with (an integer coordinate stays an integer), so a file read through a model and
dumped again is the same file.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StrictInt,
    WithJsonSchema,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import core_schema

T = TypeVar("T")


def _probability(number: int | float) -> int | float:
    """A finite number (checked first, _FINITE_NUMBER) in [0, 1]."""
    if not 0 <= number <= 1:
        raise ValueError("Input should be a probability in [0, 1]")
    return number


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("null is not allowed here: the writer leaves the key out instead")
    return value


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


# the smallest integer magnitude float() cannot convert (it rounds to infinity): 2**1024 - 2**970
_FLOAT_INT_LIMIT = 2**1024 - 2**970
# a finite number checked inside pydantic-core, with no Python call (a converter checks 20,000 samples of
# about seven boxes before writing them): an int float() can convert, kept an int (the int branch takes
# every such int first), or a finite float (an instance of float: a numpy int or float32, which JSON
# writers refuse, is refused here too); never a bool or a string, in lax mode too
_FINITE_NUMBER = core_schema.union_schema(
    [
        core_schema.int_schema(strict=True, gt=-_FLOAT_INT_LIMIT, lt=_FLOAT_INT_LIMIT),
        core_schema.json_or_python_schema(
            json_schema=core_schema.float_schema(strict=True, allow_inf_nan=False),
            python_schema=core_schema.chain_schema(
                [core_schema.is_instance_schema(float), core_schema.float_schema(allow_inf_nan=False)]
            ),
        ),
    ],
    mode="left_to_right",
    custom_error_type="finite_number",  # pydantic's own: "Input should be a finite number"
)

#: a finite JSON number (integer or not, kept as written)
Number = Annotated[
    int | float, GetPydanticSchema(lambda _t, _h: _FINITE_NUMBER), WithJsonSchema({"type": "number"})
]
#: a finite number in [0, 1]: a probability, a ratio (precision, recall, F1), an AUROC, a threshold
Probability = Annotated[
    int | float,
    GetPydanticSchema(lambda _t, _h: _FINITE_NUMBER),
    AfterValidator(_probability),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1}),
]
#: how many of something: an integer >= 0 (never a bool, never 3.0)
Count = Annotated[StrictInt, Field(ge=0)]
#: a size in pixels: an integer >= 1
Pixels = Annotated[StrictInt, Field(ge=1)]
#: [x1, y1, x2, y2]: exactly four finite numbers
Box = Annotated[list[Number], Field(min_length=4, max_length=4)]
#: a key the writer leaves out when it has nothing to say (never written as null); use with ``omitted()``
Omittable = Annotated[T | SkipJsonSchema[None], BeforeValidator(_not_null)]


def omitted(description: str) -> Any:
    """The Field of an ``Omittable`` key: absent by default, its JSON Schema the value's alone."""
    return Field(None, description=description, json_schema_extra=_no_default)


def digit_keys(schema: dict[str, Any]) -> None:
    """JSON Schema of a dict keyed by integers written as text: no other keys (pydantic's patternProperties
    alone would let any key through)."""
    schema["additionalProperties"] = False


#: a dict key that is a non-negative integer written as text ("4": four candidates)
DigitKey = Annotated[str, Field(pattern=r"^[0-9]+$")]


class Contract(BaseModel):
    """Base of every model of a file the project owns entirely: unknown keys are errors (a typo or a
    stale writer, never silently ignored)."""

    model_config = ConfigDict(extra="forbid")
