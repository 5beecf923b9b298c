"""Reading JSON and JSONL input with errors that name the file and line, for converters, eval and predict.

Each caller passes its own error class (ConvertError, InputError) so its command reports the error as it
reports every other bad input, and its own "not found" message, which says what to run first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def iter_jsonl(
    path: str | Path, error: type[Exception], not_found: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line; bad JSON or a non-object is ``error``.

    ``not_found`` is the whole message raised when ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise error(not_found)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def load_json_model(
    path: str | Path, model_cls: type[M], error: type[Exception], what: str, not_found: str
) -> M:
    """One JSON file validated as ``model_cls``; a missing file, bad JSON or a failed check is ``error``.

    ``what`` names the kind of file in the validation message; ``not_found`` is the whole message raised
    when the file is missing.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(not_found) from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: invalid {what}: {exc}") from None
