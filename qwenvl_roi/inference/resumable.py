"""Predictions written batch by batch so a killed job resumes where it stopped, on one process or many.

The work is a fixed list of batches (input order, fixed size), so every batch is scored with the same
neighbours whatever the number of processes or restarts: the finished file is byte-identical to one
uninterrupted run's. While running, results live in ``<out>.partial/``: one part file per process and run,
a header line with the run's fingerprint (job.py: the model by the bytes of its weights, not only its path,
so a model retrained in place is never mixed with the old one's results), then one line per result tagged
with its batch, each batch written and flushed (fsync) at once. A rerun reads every part file, keeps the
batches that are complete (a torn last line or a half-written batch is redone), and scores the rest. When
all batches are done, the first process writes ``<out>`` atomically, in input order, and removes the
partial folder. So ``<out>`` exists only when it is whole.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qwenvl_roi.errors import ResumeError
from qwenvl_roi.fileio import jsonl_bytes, write_jsonl

HEADER_KEY = "qwenvl_roi_predict_partial"
#: what a differing fingerprint key means, where its name alone does not say it
_WHY = {
    "model_files": "the model folder's files are not the ones these results were scored with (rebuilt, "
    "retrained or its processor/tokenizer files edited at the same path?)",
    "adapter_files": "the adapter folder's files are not the ones these results were scored with",
    "image_files": "input pictures were replaced or changed since these results were scored",
}


def partial_dir(out: Path) -> Path:
    """Where the partial results of ``out`` live."""
    return out.with_name(out.name + ".partial")


def _read_part(path: Path, fingerprint: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(batch, row) pairs of one part file; the torn tail of a killed writer is ignored."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # a line without its newline was cut by a kill
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, raw in enumerate(complete.splitlines()):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            break  # only a crashed write leaves this; what follows is not trusted
        if n == 0:
            if obj.get(HEADER_KEY) != fingerprint:
                theirs = obj.get(HEADER_KEY) or {}
                differ = sorted(k for k in {*theirs, *fingerprint} if theirs.get(k) != fingerprint.get(k))
                why = "".join(f"; {_WHY[k]}" for k in differ if k in _WHY)
                raise ResumeError(
                    f"{path} holds results of a run with other settings (differs in: {', '.join(differ)}"
                    f"{why}); rerun with the same settings, or delete {path.parent} to start over"
                )
            continue
        rows.append((int(obj["batch"]), obj["row"]))
    return rows


def completed_batches(
    out: Path, fingerprint: dict[str, Any], sizes: Sequence[int]
) -> dict[int, list[dict[str, Any]]]:
    """{batch index: its rows} for every batch some earlier run finished; `sizes` = rows per batch."""
    found: dict[int, list[dict[str, Any]]] = {}
    folder = partial_dir(out)
    if not folder.is_dir():
        return {}
    for part in sorted(folder.glob("part-*.jsonl")):
        per_batch: dict[int, list[dict[str, Any]]] = {}
        for batch, row in _read_part(part, fingerprint):
            per_batch.setdefault(batch, []).append(row)
        for batch, rows in per_batch.items():
            if batch not in found and 0 <= batch < len(sizes) and len(rows) == sizes[batch]:
                found[batch] = rows
    return found


@contextmanager
def exclusive(out: Path, rank: int) -> Iterator[None]:
    """Hold this rank's lock on ``out``'s partial results for the whole job; a second job writing the same
    ``out`` (same rank) is refused at once (a flock: released by the kernel when a job dies)."""
    folder = partial_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f".lock-rank{rank}", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ResumeError(
            f"{out}: another predict job is writing it right now (its partial results: {folder}); wait for "
            "it to finish, or choose another --out"
        ) from None
    try:
        yield
    finally:
        os.close(fd)


class PartWriter:
    """Appends finished batches to this process's own part file, flushed to disk batch by batch."""

    def __init__(self, out: Path, fingerprint: dict[str, Any], rank: int) -> None:
        folder = partial_dir(out)
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        while (folder / f"part-{n:04d}-rank{rank}.jsonl").exists():
            n += 1
        self.path = folder / f"part-{n:04d}-rank{rank}.jsonl"
        self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the whole run
        self._write([{HEADER_KEY: fingerprint}])

    def _write(self, objects: Iterable[dict[str, Any]]) -> None:
        data = jsonl_bytes(objects)
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def add(self, batch: int, rows: Sequence[dict[str, Any]]) -> None:
        """Write one finished batch."""
        self._write({"batch": batch, "row": row} for row in rows)

    def close(self) -> None:
        self._fh.close()


def finish(out: Path, batches: dict[int, list[dict[str, Any]]], n_batches: int) -> None:
    """Write ``out`` from every batch, in order, atomically; then remove the partial results."""
    missing = [b for b in range(n_batches) if b not in batches]
    if missing:
        raise RuntimeError(f"{out}: batches {missing[:5]} are missing from the partial results")
    write_jsonl(out, (row for b in range(n_batches) for row in batches[b]))
    shutil.rmtree(partial_dir(out), ignore_errors=True)
