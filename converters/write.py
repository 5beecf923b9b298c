"""Atomic writers: a run killed midway leaves the previous file or none, never a truncated one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[str]]:
    """Open a temporary file beside ``path``; on success fsync and os.replace it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
