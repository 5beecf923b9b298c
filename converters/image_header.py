"""Size and mode of a plain JPEG or PNG, read from its first bytes exactly as Pillow would read them.

Why: the header survey reads every image of a dataset, and Pillow's ``Image.open`` spends about four fifths
of its time on Python-level parsing of markers and chunks that the survey does not need (quantisation
tables unpacked into lists, palettes, JFIF density). This module walks the same markers and chunks with the
same checks and answers only for the plainest files: a JPEG whose segments before the scan are APP0, COM,
DQT, DHT, DRI and one 8-bit SOF0/1/2; a PNG whose chunks before the first IDAT are IHDR, PLTE, tRNS, gAMA,
cHRM, sRGB and pHYs, each checksum right. Anything else (EXIF or ICC segments, Adobe markers, text chunks,
APNG, odd lengths, damage, a header longer than the bytes read) gets None, and the caller asks Pillow:
the answer for every file is Pillow's, and tests compare the two on every mode Pillow writes and on
mutated headers.
"""

from __future__ import annotations

import os
import zlib

from PIL import Image, ImageFile

HEAD_BYTES = 4096  # enough for a plain header; a longer one goes to Pillow

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PngImagePlugin._MODES: (bit depth, colour type) -> mode
_PNG_MODES = {
    (1, 0): "1",
    (2, 0): "L",
    (4, 0): "L",
    (8, 0): "L",
    (16, 0): "I;16",
    (8, 2): "RGB",
    (16, 2): "RGB",
    (1, 3): "P",
    (2, 3): "P",
    (4, 3): "P",
    (8, 3): "P",
    (8, 4): "LA",
    (16, 4): "RGBA",
    (8, 6): "RGBA",
    (16, 6): "RGBA",
}
#: ancillary chunks Pillow reads before the image data without raising, and the least length each needs
#: (tRNS: by mode, below)
_PNG_PLAIN = {b"PLTE": 0, b"gAMA": 4, b"cHRM": 0, b"sRGB": 1, b"pHYs": 9}
_TRNS_LEAST = {"P": 0, "1": 2, "L": 2, "I;16": 2, "RGB": 6, "LA": 0, "RGBA": 0}

_JPEG_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive
_JPEG_SKIPPED = {0xC4, 0xDD, 0xFE}  # DHT, DRI, COM: read past
_JPEG_LAYERS = {1: "L", 3: "RGB", 4: "CMYK"}


def plain_header(path: str | os.PathLike[str]) -> tuple[int, int, str] | None:
    """(width, height, mode) as ``Image.open`` gives them for a plain JPEG or PNG without EXIF; None when
    the file is anything else or cannot be opened (Pillow then answers, or raises its own error)."""
    try:
        with open(path, "rb", buffering=0) as fh:
            head = fh.read(HEAD_BYTES)
    except OSError:
        return None
    return parse_plain(head)


def parse_plain(head: bytes) -> tuple[int, int, str] | None:
    """plain_header's answer for a file that starts with ``head`` (None where the header runs past it)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # Pillow skips some checks then: let it decide
        return None
    if head[:3] == b"\xff\xd8\xff":
        found = _jpeg(head)
    elif head[:8] == _PNG_SIGNATURE:
        found = _png(head)
    else:
        return None
    if found is None:
        return None
    w, h, _ = found
    limit = Image.MAX_IMAGE_PIXELS
    if w <= 0 or h <= 0 or (limit is not None and w * h > limit):  # Pillow refuses or warns
        return None
    return found


def _jpeg(b: bytes) -> tuple[int, int, str] | None:
    """JpegImagePlugin's marker walk (SOI to SOS) over the plain markers only."""
    n, pos = len(b), 2
    size: tuple[int, int, str] | None = None
    while pos + 4 <= n:
        if b[pos] != 0xFF:
            return None  # junk between segments: Pillow skips it, we do not
        marker = b[pos + 1]
        length = (b[pos + 2] << 8) | b[pos + 3]
        start, end = pos + 4, pos + 2 + length
        if end > n:
            return None
        if marker == 0xDA:  # start of scan: Pillow stops here
            return size
        if marker in _JPEG_SOF:
            s = b[start:end]
            # Pillow reads the component table in steps of 3 bytes (a shorter last step raises)
            if size is not None or len(s) < 6 or (len(s) - 6) % 3 or s[0] != 8 or s[5] not in _JPEG_LAYERS:
                return None
            size = ((s[3] << 8) | s[4], (s[1] << 8) | s[2], _JPEG_LAYERS[s[5]])
        elif marker == 0xDB:  # DQT: Pillow refuses a table shorter than its precision says
            s = b[start:end]
            while s:
                table = 1 + (64 if s[0] < 16 else 128)
                if len(s) < table:
                    return None
                s = s[table:]
        elif marker == 0xE0:  # APP0: Pillow reads the JFIF version without a guard
            if b.startswith(b"JFIF", start, end) and length - 2 < 7:
                return None
        elif marker not in _JPEG_SKIPPED:
            return None
        pos = end
    return None


def _png(b: bytes) -> tuple[int, int, str] | None:
    """PngImagePlugin's chunk walk (signature to the first IDAT) over the plain chunks only, checksums
    verified as Pillow verifies them."""
    n, pos = len(b), 8
    mode: str | None = None
    size = (0, 0)
    while pos + 8 <= n:
        length = int.from_bytes(b[pos : pos + 4], "big")
        cid = b[pos + 4 : pos + 8]
        if cid == b"IDAT":
            return None if mode is None else (size[0], size[1], mode)
        start, end = pos + 8, pos + 8 + length
        if end + 4 > n or zlib.crc32(b[pos + 4 : end]) != int.from_bytes(b[end : end + 4], "big"):
            return None
        if cid == b"IHDR":
            s = b[start:end]
            if mode is not None or length < 13 or s[11] or (s[8], s[9]) not in _PNG_MODES:
                return None
            size = (int.from_bytes(s[0:4], "big"), int.from_bytes(s[4:8], "big"))
            mode = _PNG_MODES[(s[8], s[9])]
        elif mode is None:
            return None  # Pillow reads chunks before IHDR; we want IHDR first
        elif cid == b"tRNS":
            if length < _TRNS_LEAST[mode]:
                return None
        elif cid not in _PNG_PLAIN or length < _PNG_PLAIN[cid] or (cid == b"cHRM" and length % 4):
            return None  # cHRM: Pillow unpacks it as 4-byte integers (a length not a multiple of 4 raises)
        pos = end + 4
    return None
