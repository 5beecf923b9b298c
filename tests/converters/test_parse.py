"""txt parsing: encodings, delimiters, multi-box coords, every kind of bad line, box checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from qwenvl_roi.converters.parse import LineParser, RawBox, check_box, decode_text, parse_text, parse_txt


def parse(text: str, image: str | None = "img.jpg", **kw: object) -> object:
    return parse_text(text, "f.txt", image, LineParser(**kw), "utf-8")  # type: ignore[arg-type]


def test_fullwidth_and_multi_box_coords() -> None:
    out = parse("img.jpg；1190；206；1712；377  1813；555；1866；636；裂缝\n")
    assert [b.coords for b in out.boxes] == [(1190, 206, 1712, 377), (1813, 555, 1866, 636)]
    assert {b.label for b in out.boxes} == {"裂缝"}
    assert out.problems == []


def test_mixed_inner_delimiters_floats_and_fullwidth_digits() -> None:
    out = parse("img.jpg ; 1.5，2,3 ; 4.25 ６ ７ ８ ９ ; crack  \n")
    assert [b.coords for b in out.boxes] == [(1.5, 2, 3, 4.25), (6, 7, 8, 9)]
    assert out.boxes[0].label == "crack"


def test_configurable_column_delim_keeps_fullwidth_semicolon() -> None:
    out = parse("img.jpg|1,2,30,40|dent\nimg.jpg；5，6，70，80；dent\n", column_delim="|")
    assert [b.coords for b in out.boxes] == [(1, 2, 30, 40), (5, 6, 70, 80)]


def test_cxcywh_conversion() -> None:
    out = parse("img.jpg;50;60;20;10;x\n", xyxy=False)
    assert out.boxes[0].coords == (40, 55, 60, 65)


def test_bad_lines_are_reported_with_line_numbers_and_do_not_stop_the_file() -> None:
    text = "\n".join(
        [
            "img.jpg;1;2;30;40;ok",  # 1
            "",  # 2 blank: ignored silently
            "img.jpg;1;2;3;crack",  # 3 three numbers
            "img.jpg;1;two;3;4;crack",  # 4 non-numeric
            "just some words",  # 5 no columns
            "other.jpg;1;2;30;40;crack",  # 6 names another image
            "img.jpg;1;2;30;40; ",  # 7 empty label
            "IMG.JPG;5;6;70;80;ok",  # 8 case variant of the name: fine
            "img;5;6;70;80;ok",  # 9 stem only: fine
            "img.jpg;;ok",  # 10 no coordinates
            "img.jpg;1;2;nan;4;ok",  # 11 not finite
        ]
    )
    out = parse(text)
    assert [(p.line, p.kind) for p in out.problems] == [
        (3, "coord_count"),
        (4, "non_numeric"),
        (5, "columns"),
        (6, "filename_mismatch"),
        (7, "empty_label"),
        (10, "no_coords"),
        (11, "non_numeric"),
    ]
    assert [b.line for b in out.boxes] == [1, 8, 9]
    assert [(b.line, why) for b, why in out.rejected] == [
        (6, "filename column names another image"),
        (7, "empty defect_type"),
    ]
    assert "other.jpg" in out.problems[3].reason and "img.jpg" in out.problems[3].reason
    assert out.lines_with_content == 10
    assert out.lines_dropped == 7


def test_empty_filename_column_is_a_problem_but_keeps_boxes() -> None:
    out = parse(" ;1;2;30;40;crack")
    assert [p.kind for p in out.problems] == ["empty_filename"]
    assert len(out.boxes) == 1


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("a;1;2;3;4;裂缝\r\n".encode(), "utf-8"),
        (b"\xef\xbb\xbf" + "a;1;2;3;4;裂缝\r\n".encode(), "utf-8-sig"),
        ("a;1;2;3;4;裂缝\r\n".encode("gbk"), "gbk"),
        ("a;1;2;3;4;裂缝\r\n".encode("utf-16"), "utf-16"),
    ],
)
def test_decode_text(data: bytes, encoding: str) -> None:
    text, enc = decode_text(data)
    assert enc == encoding
    assert text is not None and text.splitlines() == ["a;1;2;3;4;裂缝"]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_read_as_utf16(tmp_path: Path, codec: str) -> None:
    """.NET's Encoding.Unicode without a preamble and some exporters write UTF-16 without a BOM; its zero
    bytes are valid UTF-8 (NUL), so it used to be read as UTF-8 and every number reported as bad. '一'
    (U+4E00) has a zero low byte too."""
    text = "p01.jpg；10，20，110，90；一号裂缝\r\np01.jpg；150，100，300，200；渗漏\r\n"
    assert decode_text(text.encode(codec)) == (text, codec)
    path = tmp_path / "p01.txt"
    path.write_bytes(text.encode(codec))
    out = parse_txt(path, "p01.txt", "p01.jpg", LineParser())
    assert out.problems == []
    assert [(b.coords, b.label) for b in out.boxes] == [
        ((10, 20, 110, 90), "一号裂缝"),
        ((150, 100, 300, 200), "渗漏"),
    ]


def test_undecodable_file_is_one_problem(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(b"\xff\xff\xff\x81\x30\xfe")
    out = parse_txt(p, "x.txt", "x.jpg", LineParser())
    assert [(pr.line, pr.kind) for pr in out.problems] == [(None, "encoding")]


def test_crlf_bom_gbk_file(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes("x.jpg；10，10，50，50；渗漏\r\n\r\nx.jpg;1;1;40;40;渗漏  \r\n".encode("gbk"))
    out = parse_txt(p, "x.txt", "x.jpg", LineParser())
    assert out.encoding == "gbk"
    assert [(b.line, b.coords, b.label) for b in out.boxes] == [
        (1, (10, 10, 50, 50), "渗漏"),
        (3, (1, 1, 40, 40), "渗漏"),
    ]


def raw(*coords: float) -> RawBox:
    return RawBox(1, tuple(coords), "l")  # type: ignore[arg-type]


def test_check_box_outcomes() -> None:
    assert check_box(raw(10, 10, 50, 50), 100, 80, 24).status == "kept"
    swapped = check_box(raw(50, 60, 10, 10), 100, 80, 24)
    assert (swapped.status, swapped.box, swapped.kind) == ("clipped", (10, 10, 50, 60), "box_fixed")
    clipped = check_box(raw(-5, 10, 150, 90), 100, 80, 24)
    assert (clipped.status, clipped.box) == ("clipped", (0, 10, 100, 80))
    assert "clipped" in clipped.reason
    assert check_box(raw(200, 10, 250, 50), 100, 80, 24).kind == "box_outside"
    assert check_box(raw(10, 10, 10, 50), 100, 80, 24).kind == "box_zero_area"
    tiny = check_box(raw(10, 10, 30, 50), 100, 80, 24)
    assert (tiny.status, tiny.kind) == ("dropped", "box_too_small")
    assert check_box(raw(10.5, 10, 40.25, 50), 100, 80, 24).box == (10.5, 10, 40.25, 50)
