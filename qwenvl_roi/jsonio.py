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


def split_lines(text: str) -> list[str]:
    """The lines of a text file, split on "\\n" only (the "\\r" of a CRLF removed).

    Not str.splitlines: it also splits on U+2028, U+2029, U+0085, \\x1c-\\x1e, \\x0b, \\x0c and a lone
    "\\r", which can sit inside a JSON string or a label, and would cut that line in two and shift the
    number of every later line.
    """
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()  # the final newline ends the last line; it does not start another
    return [p[:-1] if p.endswith("\r") else p for p in parts]


def iter_jsonl(
    path: str | Path, error: type[Exception], not_found: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line; bad JSON or a non-object is ``error``.

    ``not_found`` is the whole message raised when ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise error(not_found)
    with path.open("rb") as fh:  # binary lines end at "\n" only (text mode would also end one at a lone "\r")
        for lineno, data in enumerate(fh, start=1):
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
                raise error(f"{path}:{lineno}: invalid JSON ({type(exc).__name__}: {exc})") from None
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
    except (ValueError, RecursionError) as exc:  # not UTF-8; an integer of > 4300 digits; nesting too deep
        raise error(f"{path}: cannot read JSON ({type(exc).__name__}: {exc})") from None
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: invalid {what}: {exc}") from None
