"""Atomic writers: a run killed midway leaves the previous file or none, never a truncated one."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qwenvl_roi.atomic import atomic_open

__all__ = ["atomic_open", "dumps", "write_json", "write_json_array", "write_jsonl"]


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Deterministic JSON text (UTF-8 characters kept readable)."""
    return json.dumps(obj, ensure_ascii=False, indent=indent)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write pretty JSON with a final newline."""
    with atomic_open(path) as fh:
        fh.write(dumps(obj))
        fh.write("\n")


_COMPACT = json.JSONEncoder(ensure_ascii=False)  # one encoder for every row (json.dumps builds one per call)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Atomically write one compact JSON object per line; returns the row count."""
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(_COMPACT.encode(row))
            fh.write("\n")
            n += 1
    return n


def write_json_array(path: str | Path, rows: Iterable[Any]) -> int:
    """Atomically write a JSON array with one record per line (streamed; LLaMA-Factory reads it as json)."""
    n = 0
    with atomic_open(path) as fh:
        fh.write("[")
        for row in rows:
            fh.write(",\n" if n else "\n")
            fh.write(_COMPACT.encode(row))
            n += 1
        fh.write("\n]\n" if n else "]\n")
    return n
