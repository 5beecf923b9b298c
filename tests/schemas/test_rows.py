"""JSONL rows as qwenvl_roi/fileio.py writes them (orjson, compact) read back by the standard library's
json as the rows json itself would have written; what orjson refuses is written by json with the same
separators, and what is not JSON (NaN, infinities) is refused there rather than written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qwenvl_roi.fileio import compact_row, jsonl_bytes, write_jsonl


def test_rows_written_by_orjson_read_back_as_json_reads_them(tmp_path: Path) -> None:
    rows = [
        {"id": "R1", "box": [0, 1.5, 1e-05, 1e16], "label": "裂缝\u2028", "positive": True, "n": None},
        {"text": 'quote " backslash \\ tab \t nul \x00 emoji 😀', "big": 2**63 - 1},
        {"huge": 10**30, "neg": -(2**70)},  # beyond 64 bits: json writes it
        {1: "an int key"},  # not a string key: json writes it as "1"
    ]
    path = tmp_path / "rows.jsonl"
    assert write_jsonl(path, rows) == len(rows)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(rows) + 1
    for row, line in zip(rows, lines, strict=False):
        assert json.loads(line) == json.loads(json.dumps(row)), line
    assert lines[0].startswith(b'{"id":"R1","box":[0,1.5,')  # compact, UTF-8 kept readable
    assert "裂缝".encode() in lines[0]
    assert compact_row({"x": math.pi}) == b'{"x":3.141592653589793}'


def test_not_a_number_is_never_written_as_json_text() -> None:
    assert compact_row({"x": math.nan}) == b'{"x":null}'  # orjson's reading; contracts refuse NaN first
    with pytest.raises(ValueError):
        compact_row({"x": math.nan, "big": 10**30})  # the json fallback refuses it
    assert jsonl_bytes([{"a": 1}, {"b": 2}]) == b'{"a":1}\n{"b":2}\n'
