"""JSONL reading with file:line errors and atomic writes, shared by `predict` and `eval`.

Outputs are written to a temporary file in the target folder and moved into place with os.replace, so a
crash never leaves a half-written predictions or metrics file that a later step would trust.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qwenvl_roi import atomic, jsonio


class InputError(ValueError):
    """Bad user input: the message names the file, the 1-based line and what is wrong."""


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line; raise InputError on bad JSON."""
    return jsonio.iter_jsonl(path, InputError, f"{path}: file not found")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes atomically (qwenvl_roi.atomic)."""
    atomic.write_bytes(path, data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text (UTF-8) atomically."""
    atomic.write_text(path, text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write one JSON document, sorted keys and fixed indentation so reruns are byte-identical."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write one JSON object per line atomically (key order as given, so output order is stable)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
