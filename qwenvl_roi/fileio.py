"""Files in and out, one module: atomic writes, JSON and JSONL reading and writing.

Writes: a temporary file beside the target, flushed and fsynced, then moved into place with os.replace
(atomic on POSIX within one folder), so a run killed midway leaves the previous file or none, never a
truncated one; folders likewise (``atomic_dir``: swapped with renameat2 RENAME_EXCHANGE where the system
has it). Modes follow the umask; a symlinked target is written where it points. Whole sets of files:
qwenvl_roi.outputs.

JSON is written one way: UTF-8 characters kept readable, keys in the order the writer built them (a file
whose keys are sorted, metrics.json and the inference config, sorts them itself: ``sorted_keys``), two
spaces of indentation for documents, compact rows (no spaces, orjson) for JSONL and for the records of a
JSON array. Reading splits lines on "\n" only and names the file and line of anything wrong.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from qwenvl_roi.errors import InputError

M = TypeVar("M", bound=BaseModel)

NAME_MAX = 255  # bytes in one file name on Linux file systems
_TEMP_ROOM = 40  # what a temp name adds around the target's name: ".", ".", mkstemp's 8 characters, ".tmp"


def short_name(name: str, room: int = _TEMP_ROOM) -> str:
    """``name`` cut (at a byte boundary) so that ``room`` more bytes still fit in a file name."""
    raw = os.fsencode(name)
    return name if len(raw) + room <= NAME_MAX else os.fsdecode(raw[: NAME_MAX - room])


@functools.cache
def current_umask() -> int:
    """The process umask (read once: os.umask can only read it by changing it; /proc where it can)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` ("w": UTF-8 text, \\n newlines; "wb": bytes); replace on success."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    if os.path.islink(path):  # written where the link points, as open() would; the link stays
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{short_name(path.name)}.", suffix=".tmp", dir=path.parent)
    text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    try:
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; as open() would, umask applies
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write bytes."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    with atomic_open(path) as fh:
        fh.write(text)


def write_figure_png(fig: Any, path: str | Path, dpi: int = 100, source: str | None = None) -> None:
    """Atomically save a matplotlib figure as PNG without Software/date metadata (byte-identical reruns);
    ``source`` goes into a PNG text chunk, so a later run can tell its own picture from a user's."""
    import io

    buf = io.BytesIO()
    meta = {"Software": None, **({"Source": source} if source else {})}
    fig.savefig(buf, format="png", dpi=dpi, metadata=meta)
    write_bytes(path, buf.getvalue())


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on success it replaces ``path`` whole (model folders,
    generated datasets): readers see the old folder or the complete new one, never a half-written one."""
    import shutil

    path = Path(path)
    if os.path.islink(path):  # the folder the link points to is replaced; the link stays
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{short_name(path.name)}.tmp-", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the folder is ordinary output
        if not path.exists():
            os.rename(tmp, path)
        elif exchange(tmp, path):  # readers see the old folder or the new one, never none
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(path)
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Deterministic JSON text (UTF-8 characters kept readable)."""
    return json.dumps(obj, ensure_ascii=False, indent=indent)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write pretty JSON with a final newline."""
    with atomic_open(path) as fh:
        fh.write(dumps(obj))
        fh.write("\n")


def json_refusal(exc: BaseException) -> str:
    """Why json.loads refused a text beyond the JSON grammar, for a one-line message: ValueError for an
    integer of more than 4,300 digits, RecursionError for nesting too deep (catch JSONDecodeError, a
    ValueError with a line, first)."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def compact_row(obj: Any) -> bytes:
    """One compact JSON row, UTF-8 (orjson: about 4x json's speed on the converters' 20,000-sample sets).

    What orjson refuses (an integer beyond 64 bits, a key that is not a string) is written by json with the
    same separators. Not-a-number and infinities are not JSON: orjson writes them as null, json refuses
    them; the writers of numbers (regions, predictions) check their contract, finite numbers only, first."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def jsonl_bytes(rows: Iterable[Any]) -> bytes:
    """JSONL text: one compact row a line, each ended by a newline."""
    return b"".join(compact_row(row) + b"\n" for row in rows)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Atomically write one compact JSON object per line; returns the row count."""
    listed = list(rows)
    write_bytes(path, jsonl_bytes(listed))
    return len(listed)


def write_json_array(path: str | Path, rows: Iterable[Any]) -> int:
    """Atomically write a JSON array with one compact record per line (LLaMA-Factory reads it as json)."""
    lines = [compact_row(row) for row in rows]
    write_bytes(path, b"[\n" + b",\n".join(lines) + b"\n]\n" if lines else b"[]\n")
    return len(lines)


def sorted_keys(obj: Any) -> Any:
    """``obj`` with every object's keys sorted (for the files whose keys were always written sorted)."""
    return json.loads(json.dumps(obj, sort_keys=True, ensure_ascii=False))


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
    path: str | Path, error: type[Exception] = InputError, not_found: str | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line; bad JSON or a non-object is ``error``
    (the caller's command reports it as it reports every other bad input: ConvertError, InputError).

    ``not_found`` is the whole message raised when ``path`` is not a file (it says what to run first).
    """
    path = Path(path)
    if not path.is_file():
        raise error(not_found or f"{path}: file not found")
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
