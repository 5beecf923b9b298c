"""The header survey's own JPEG/PNG reader answers exactly as Pillow's ``Image.open`` does, or not at all.

Reference: Pillow itself, on every mode and option it writes, on hand-made chunks it reads, and on a few
thousand mutated and truncated headers. The reader may decline any file (Pillow then reads it); it must never
answer for a file Pillow refuses, warns about, finds EXIF in, or sizes differently.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms, ImageFile, PngImagePlugin
from qwenvl_roi.converters import images
from qwenvl_roi.converters.image_header import parse_plain

EXIF_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def pillow(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, mode) as Image.open reads the header, or None when it raises, warns or finds EXIF."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(io.BytesIO(data)) as im:
                if any(k in im.info for k in EXIF_KEYS) or hasattr(im, "tag_v2"):
                    return None
                got = (im.size[0], im.size[1], im.mode)
        except Exception:
            return None
    return None if caught else got


def saved(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def chunk(cid: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + cid + body + struct.pack(">I", zlib.crc32(cid + body))


def with_chunks(png: bytes, *chunks: bytes) -> bytes:
    """A PNG with chunks inserted right after IHDR (8 + 25 bytes)."""
    return png[:33] + b"".join(chunks) + png[33:]


def rgb(w: int = 37, h: int = 23) -> Image.Image:
    return Image.linear_gradient("L").resize((w, h)).convert("RGB")


def plain_files() -> dict[str, bytes]:
    """Files the reader must answer for (and answer as Pillow does)."""
    grey = Image.linear_gradient("L").resize((31, 17))
    png = saved(rgb(), "PNG")
    files = {
        "jpeg baseline": saved(rgb(), "JPEG", quality=90),
        "jpeg progressive": saved(rgb(), "JPEG", progressive=True),
        "jpeg optimized 4:4:4": saved(rgb(), "JPEG", optimize=True, subsampling=0),
        "jpeg grey": saved(grey, "JPEG"),
        "jpeg 1x1": saved(rgb(1, 1), "JPEG"),
        "jpeg wide": saved(rgb(4000, 3), "JPEG"),
        "jpeg dpi + comment": saved(rgb(), "JPEG", dpi=(300, 300), comment=b"line 3 camera"),
        "jpeg restart markers": saved(rgb(), "JPEG", restart_marker_blocks=2),
        "png rgb": png,
        "png rgba": saved(rgb().convert("RGBA"), "PNG"),
        "png grey": saved(grey, "PNG"),
        "png 1-bit": saved(grey.convert("1"), "PNG"),
        "png grey+alpha": saved(grey.convert("LA"), "PNG"),
        "png palette": saved(rgb().convert("P"), "PNG"),
        "png palette 4-bit": saved(rgb().convert("P", colors=16), "PNG", bits=4),
        "png palette + tRNS": saved(rgb().convert("P"), "PNG", transparency=0),
        "png rgb + tRNS": saved(rgb(), "PNG", transparency=(0, 0, 0)),
        "png grey + tRNS": saved(grey, "PNG", transparency=0),
        "png 16-bit": saved(grey.convert("I;16"), "PNG"),
        "png dpi": saved(rgb(), "PNG", dpi=(96, 96)),
        "png gAMA sRGB cHRM": with_chunks(
            png, chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"sRGB", b"\x00"), chunk(b"cHRM", bytes(32))
        ),
    }
    interlaced = bytearray(png)
    interlaced[28] = 1  # IHDR interlace method
    interlaced[29:33] = struct.pack(">I", zlib.crc32(bytes(interlaced[12:29])))
    files["png interlaced flag"] = bytes(interlaced)
    return files


def declined_files() -> dict[str, bytes]:
    """Files the reader must leave to Pillow: EXIF, ICC, Adobe, text, animation, other formats."""
    exif = Image.Exif()
    exif[0x0112] = 6
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("camera", "line 3")
    png = saved(rgb(), "PNG")
    return {
        "jpeg exif": saved(rgb(), "JPEG", exif=exif),
        "jpeg icc": saved(rgb(), "JPEG", icc_profile=icc),
        "jpeg cmyk (Adobe marker)": saved(rgb().convert("CMYK"), "JPEG"),
        "png exif": saved(rgb(), "PNG", exif=exif),
        "png icc": saved(rgb(), "PNG", icc_profile=icc),
        "png text": saved(rgb(), "PNG", pnginfo=info),
        "apng": saved(rgb(), "PNG", save_all=True, append_images=[rgb().rotate(90)]),
        "png tRNS too short for RGB": with_chunks(png, chunk(b"tRNS", b"\x00\x01")),
        "png unknown chunk": with_chunks(png, chunk(b"abCd", b"x")),
        "bmp": saved(rgb(), "BMP"),
        "gif": saved(rgb(), "GIF"),
        "tiff": saved(rgb(), "TIFF"),
        "webp": saved(rgb(), "WEBP"),
        "empty": b"",
        "jpeg cut in the header": saved(rgb(), "JPEG")[:100],
    }


def test_png_mode_table_is_pillows() -> None:
    """The reader's PNG mode table is Pillow's own (PngImagePlugin._MODES, a private name): a Pillow that maps
    a pair another way, e.g. 16-bit grey+alpha to LA once it can, fails here rather than answering
    differently for a pair Pillow cannot write for the tests above."""
    from qwenvl_roi.converters.image_header import _PNG_MODES

    assert {pair: mode for pair, (mode, _) in PngImagePlugin._MODES.items()} == _PNG_MODES


@pytest.mark.parametrize("name", sorted(plain_files()))
def test_plain_files_answered_as_pillow(name: str) -> None:
    data = plain_files()[name]
    assert pillow(data) is not None, "the fixture is a plain file Pillow reads without a warning"
    assert parse_plain(data) == pillow(data)


@pytest.mark.parametrize("name", sorted(declined_files()))
def test_other_files_left_to_pillow(name: str) -> None:
    assert parse_plain(declined_files()[name]) is None


def segments(jpeg: bytes) -> list[bytes]:
    """A JPEG's segments (marker and body) up to and including SOS, then the rest as one piece."""
    out, pos = [jpeg[:2]], 2
    while jpeg[pos + 1] != 0xDA:
        end = pos + 2 + struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
        out.append(jpeg[pos:end])
        pos = end
    return [*out, jpeg[pos:]]


def crafted_files() -> dict[str, bytes]:
    """Odd files Pillow reads in its own way (or refuses): the reader must agree with it or decline."""
    jpeg = segments(saved(rgb(), "JPEG"))
    sof = next(s for s in jpeg if s[1] == 0xC0)
    other_sof = sof[:5] + struct.pack(">HH", 11, 13) + sof[9:]
    long_sof = sof[:2] + struct.pack(">H", len(sof) - 1) + sof[4:] + b"\x00"  # one byte past the table
    png = saved(rgb(), "PNG")
    ihdr = png[8:33]
    return {
        "jpeg two SOF": b"".join(jpeg[:-1]).replace(sof, sof + other_sof) + jpeg[-1],
        "jpeg short JFIF": b"".join(s if s[1] != 0xE0 else b"\xff\xe0\x00\x07JFIF\x00" for s in jpeg),
        "jpeg empty COM": b"".join(jpeg[:2]) + b"\xff\xfe\x00\x00" + b"".join(jpeg[2:]),
        "png tRNS before IHDR": png[:8] + chunk(b"tRNS", b"\x00") + png[8:],
        "png PLTE before IHDR": png[:8] + chunk(b"PLTE", bytes(6)) + png[8:],
        "png two IHDR": png[:33] + chunk(b"IHDR", struct.pack(">II", 5, 7) + ihdr[16:21]) + png[33:],
        # found by a review: Pillow refuses both (a component table not in steps of 3; cHRM not in 4s)
        "jpeg SOF table 1 byte long": b"".join(jpeg[:-1]).replace(sof, long_sof) + jpeg[-1],
        "png cHRM of 1 byte": with_chunks(png, chunk(b"cHRM", b"\x00")),
    }


@pytest.mark.parametrize("name", sorted(crafted_files()))
def test_odd_files_answered_as_pillow_or_left(name: str) -> None:
    data = crafted_files()[name]
    assert parse_plain(data) in (None, pillow(data))


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each chunk's body up to the first IDAT."""
    out, pos = [], 8
    while data[pos + 4 : pos + 8] != b"IDAT":
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        out.append((pos + 8, pos + 8 + length))
        pos += 12 + length
    return out


def mutants(data: bytes, header: int) -> list[bytes]:
    """Every byte of the first ``header`` bytes set to a few values, and every truncation; for a PNG also each
    chunk byte changed with the chunk's checksum made right again (else every change fails the CRC)."""
    header = min(header, len(data))
    out = [data[:n] for n in range(header)]
    for i in range(header):
        for v in {0x00, 0xFF, data[i] ^ 0x01, data[i] ^ 0x10, data[i] ^ 0x80}:
            out.append(data[:i] + bytes([v]) + data[i + 1 :])
    if data.startswith(b"\x89PNG"):
        for start, end in _png_chunks(data):
            for i in range(start - 8, end):  # the length field, the type and the body
                for v in (0x00, data[i] ^ 0x01, data[i] ^ 0x08, data[i] ^ 0xFF):
                    m = bytearray(data)
                    m[i] = v
                    m[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(m[start - 4 : end])))
                    out.append(bytes(m))
    return out


def test_mutated_headers_never_answered_otherwise_than_pillow() -> None:
    files = plain_files()
    bases = {
        "jpeg dpi + comment": 700,
        "jpeg progressive": 700,
        "png palette + tRNS": 1000,
        "png gAMA sRGB cHRM": 120,
        "png 16-bit": 60,
    }
    answered = wrong = 0
    for name, header in bases.items():
        for m in mutants(files[name], header):
            got = parse_plain(m)
            if got is None:
                continue
            answered += 1
            if got != pillow(m):
                wrong += 1
                assert got == pillow(m), f"{name}: {got} for a mutant Pillow reads as {pillow(m)}"
    assert wrong == 0
    assert answered > 2000, "the mutants exercise the reader's answers, not only its refusals"


def test_survey_inspections_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The survey's Inspection (size as displayed, mode, orientation, reasons, note) is the same with the
    reader as with Pillow alone, for every file above, including EXIF-rotated and unreadable ones."""
    paths = []
    for name, data in {**plain_files(), **declined_files()}.items():
        p = tmp_path / f"{len(paths):02d}.img"
        p.write_bytes(data)
        paths.append((name, p))
    fast = {name: images.inspect(p) for name, p in paths}
    monkeypatch.setattr(images, "plain_header", lambda path: None)
    slow = {name: images.inspect(p) for name, p in paths}
    assert fast == slow
    assert fast["jpeg exif"].orientation == 6 and fast["jpeg exif"].width == 23  # displayed size


def test_pillow_settings_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above MAX_IMAGE_PIXELS Pillow warns (or refuses), and LOAD_TRUNCATED_IMAGES relaxes its checks: the
    reader leaves both to Pillow."""
    data = plain_files()["jpeg baseline"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 37 * 23 - 1)
    assert pillow(data) is None and parse_plain(data) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 37 * 23)
    assert parse_plain(data) == pillow(data) == (37, 23, "RGB")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert parse_plain(data) is None
