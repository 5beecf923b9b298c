"""File names as the file system gives them, and as reports, datasets and the cache can carry them.

On Linux a file name is bytes. A zip made on Windows keeps GBK names (``缺陷1.jpg`` as ``c8b1 cfdd 31 ...``),
which are not UTF-8; Python hands them over as ``str`` with surrogate escapes, which open() accepts but no
UTF-8 writer does (JSON reports and datasets would fail halfway). And one name is at most 255 bytes, so a
cached copy named ``<name>.png`` can be too long where its source was not. So: files are opened by their
real names; JSON gets ``shown(name)`` (the bytes as UTF-8, undecodable bytes as ``\\xNN``); the image cache
gets ``safe_component`` names (readable, at most 255 bytes, with a hash of the real bytes when changed).
"""

from __future__ import annotations

import hashlib
import os

NAME_MAX = 255  # bytes in one file name on Linux file systems
HASH_CHARS = 12  # hex digits of the name's SHA-256 kept in a changed cache name


def is_utf8(name: str) -> bool:
    """Whether ``name`` is real text (no surrogate escapes of undecodable bytes), so UTF-8 can carry it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def name_bytes(name: str) -> bytes:
    """The bytes a name stands for (os.fsencode); a surrogate no file system gives (a JSON ``\\ud800``)
    is kept as its UTF-8 encoding rather than raising."""
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:
        return name.encode("utf-8", errors="surrogatepass")


def shown(name: str) -> str:
    """``name`` as JSON and terminals can carry it: itself when it is text, else its bytes decoded as UTF-8
    with each undecodable byte written ``\\xNN`` (so the report records the real bytes)."""
    if is_utf8(name):
        return name
    return name_bytes(name).decode("utf-8", errors="backslashreplace")


def gbk_reading(name: str) -> str | None:
    """What a non-UTF-8 name reads as in GBK/GB18030 (Chinese Windows), or None when it is not GBK."""
    try:
        return name_bytes(name).decode("gb18030")
    except UnicodeDecodeError:
        return None


def not_utf8_reason(name: str) -> str:
    """The report's words for a name that is not UTF-8: its bytes, and its GBK reading when it has one."""
    raw = name_bytes(name)
    reading = gbk_reading(name)
    guess = f", which read as GBK is {reading!r}" if reading is not None else ""
    return f"name is not UTF-8 (bytes {raw.hex()}{guess}; shown here as {shown(name)})"


def _fit(text: str, limit: int) -> str:
    """``text`` cut at a character boundary to at most ``limit`` UTF-8 bytes."""
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", errors="ignore")


def safe_component(name: str, suffix: str = "") -> str:
    """One cache file or folder name for ``name`` + ``suffix``: unchanged when that is UTF-8 and fits in
    255 bytes; else a readable UTF-8 form (the GBK reading, or the bytes with undecodable ones as ``_``),
    shortened, plus ``~`` and a hash of the real bytes, so it is deterministic and distinct per name."""
    raw = name_bytes(name)
    if is_utf8(name) and len(raw) + len(suffix.encode("utf-8")) <= NAME_MAX:
        return name + suffix
    readable = name if is_utf8(name) else gbk_reading(name)
    if readable is None:
        readable = raw.decode("utf-8", errors="replace").replace("\ufffd", "_")
    tail = f"~{hashlib.sha256(raw).hexdigest()[:HASH_CHARS]}{suffix}"
    return _fit(readable, NAME_MAX - len(tail.encode("utf-8"))) + tail


def safe_rel(rel: str, suffix: str = "") -> str:
    """A POSIX relative path with every component made safe (``suffix`` added to the last one)."""
    parts = rel.split("/")
    last = len(parts) - 1
    return "/".join(safe_component(p, suffix if i == last else "") for i, p in enumerate(parts))
