"""Hostile real-world input that must neither crash the converters nor lose anything silently (issue #17):
GBK file names from a Windows zip, symlinked batch folders and loops, lines that str.splitlines would cut,
numbers too large for a float, and names so long that their cached copy would not fit in 255 bytes."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image
from qwenvl_roi.converters.convert import convert
from qwenvl_roi.converters.parse import LineParser, parse_txt
from qwenvl_roi.converters.prepare import prepare
from qwenvl_roi.converters.scan_labels import scan_labels

from qwenvl_roi.fileio import iter_jsonl


class BadInput(Exception):
    """The error class a reader is asked to raise (distinct from the ValueError json itself raises)."""


GBK_STEM = "缺陷1".encode("gbk")  # c8b1 cfdd 31: not UTF-8, as a Chinese Windows zip stores it


def gbk_file(folder: Path, name: bytes, data: bytes) -> Path:
    """Write a file whose name is raw (non-UTF-8) bytes; returns it as Python names it (surrogate escapes)."""
    os.makedirs(os.fsencode(folder), exist_ok=True)
    raw = os.fsencode(folder) + b"/" + name
    with open(raw, "wb") as fh:
        fh.write(data)
    return Path(os.fsdecode(raw))


def jpeg_bytes(size: tuple[int, int], orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.new("RGB", size, (120, 120, 120)).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def shown(raw: bytes) -> str:
    """How a report writes a non-UTF-8 name: undecodable bytes as \\xNN."""
    return raw.decode("utf-8", errors="backslashreplace")


def split_all_train(make_config, **kw: object) -> Path:
    """A config with every group in train, so no assertion depends on where the split hash puts one."""
    return make_config(train_ratio=1.0, val_ratio=0.0, test_ratio=0.0, **kw)


def test_gbk_named_image_and_txt_are_converted_under_a_utf8_name(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=1)
    abn = tmp_path / "abn" / "b1"
    gbk_file(abn, GBK_STEM + b".jpg", jpeg_bytes((320, 240)))
    gbk_file(abn, GBK_STEM + b".txt", "缺陷1.jpg;10;20;90;100;裂缝\n".encode("gbk"))
    batch = "批次".encode("gbk")  # a GBK-named normal folder too
    gbk_file(tmp_path / "nor" / os.fsdecode(batch), b"ok.jpg", jpeg_bytes((320, 240)))
    report = convert(split_all_train(make_config), progress=False)["prepare"]  # used to raise
    out = tmp_path / "out"
    samples = files.regions(out)  # written as UTF-8 JSON
    name = shown(GBK_STEM + b".jpg")
    (s,) = [s for s in samples if s["sample_id"] == f"abnormal/b1/{name}#0"]
    assert s["image"].startswith("image_cache/abnormal/b1/缺陷1.jpg~") and s["image"].endswith(".png")
    assert (out / s["image"]).is_file()
    (pos,) = [r for r in s["regions"] if r["positive"]]  # the GBK txt paired and its filename column matched
    assert pos["label"] == "裂缝" and pos["box"] == [10, 20, 90, 100]
    (n,) = [x for x in samples if x["source"] == "normal" and x["sample_id"].endswith("/ok.jpg#0")]
    assert n["group"] == shown(batch) and (out / n["image"]).is_file()
    flagged = {p["file"]: p for p in report["problems"] if p["kind"] == "file_name_not_utf8"}
    mine = flagged[f"{tmp_path.as_posix()}/abn/b1/{name}"]
    assert (b"b1/" + GBK_STEM + b".jpg").hex() in mine["reason"] and "'b1/缺陷1.jpg'" in mine["reason"]
    assert f"{tmp_path.as_posix()}/nor/{shown(batch)}/ok.jpg" in flagged
    assert report["images"]["converted_by_reason"] == {"file_name": 2}
    assert report["boxes"]["dropped"] == 0
    assert all(p["kind"] == "file_name_not_utf8" for p in report["problems"])
    sft = json.loads((out / "sft_train.json").read_text(encoding="utf-8"))
    assert any(rec["images"][0].endswith(s["image"]) for rec in sft)
    stats = scan_labels(tmp_path / "abn", progress=False)  # the label scan reads the GBK txt too
    assert {"label": "裂缝", "boxes": 1, "images": 1, "canonical": "裂缝"} in stats["labels"]
    assert not stats["problems"]
    json.dumps(stats, ensure_ascii=False).encode("utf-8")


def test_gbk_named_image_with_image_fixes_flag_is_reported_and_left_out(
    tmp_path: Path, files, make_config
) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=1)
    abn = tmp_path / "abn" / "b1"
    gbk_file(abn, GBK_STEM + b".jpg", jpeg_bytes((320, 240)))
    gbk_file(abn, GBK_STEM + b".txt", "缺陷1.jpg;10;20;90;100;裂缝\n".encode("gbk"))
    report = prepare(split_all_train(make_config, image_fixes="flag"), progress=False).report
    (p,) = report["problems"]
    assert p["kind"] == "image_needs_fix" and p["file"].endswith(shown(GBK_STEM + b".jpg"))
    assert "not UTF-8" in p["reason"]
    assert report["boxes"]["dropped_by_reason"] == {"image_needs_fix": 1}


def test_symlinked_batch_folders_are_followed_once_and_loops_reported(
    tmp_path: Path, files, make_config
) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=1)
    elsewhere = tmp_path / "elsewhere" / "batch9"  # a batch folder kept on another disk, linked in
    for i in range(2):
        files.image(elsewhere / f"e{i}.jpg", (320, 240))
        files.txt(elsewhere / f"e{i}.txt", f"e{i}.jpg;10;20;90;100;crack\n")
    abn = tmp_path / "abn"
    (abn / "batch9").symlink_to(elsewhere, target_is_directory=True)
    (abn / "zz_again").symlink_to(elsewhere, target_is_directory=True)  # the same folder linked twice
    (abn / "batch0" / "loop").symlink_to("..", target_is_directory=True)  # a loop: abn/batch0/loop -> abn
    report = prepare(split_all_train(make_config), progress=False).report
    ids = sorted(s["sample_id"] for s in files.regions(tmp_path / "out") if "/e" in s["sample_id"])
    assert ids == ["abnormal/batch9/e0.jpg#0", "abnormal/batch9/e1.jpg#0"]  # converted, and only once
    problems = {(p["file"], p["kind"]) for p in report["problems"]}
    assert problems == {
        (f"{abn.as_posix()}/batch0/loop", "folder_link_loop"),
        (f"{abn.as_posix()}/zz_again", "folder_link_duplicate"),
    }
    stats = scan_labels(abn, progress=False)  # the label scan walks the same way
    assert stats["txt_files"] == 6 and stats["boxes"] == sum(1 + i % 3 for i in range(4)) + 2
    assert {p["kind"] for p in stats["problems"]} == {"folder_link_loop", "folder_link_duplicate"}


def test_txt_lines_end_at_newline_only(tmp_path: Path, files, make_config) -> None:
    """U+2028, U+0085, U+2029, \\x1c-\\x1e, \\x0b, \\x0c in a label are not line ends: line 3 stays line 3."""
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=1)
    label = "裂\u2028缝\u0085x\u2029y\x1cz\x1d\x1e\x0bw\x0cv"
    lines = ["a9.jpg;10;20;90;100;crack", f"a9.jpg;30;30;120;120;{label}", "a9.jpg;1;2;3;crack", ""]
    files.image(tmp_path / "abn" / "b0" / "a9.jpg", (320, 240))
    txt = files.txt(tmp_path / "abn" / "b0" / "a9.txt", "\r\n".join(lines))
    report = prepare(split_all_train(make_config), progress=False).report
    (p,) = report["problems"]
    assert (p["file"], p["line"], p["kind"]) == (txt.as_posix(), 3, "coord_count")
    assert report["lines"] == {"read": 3 + sum(1 + i % 3 for i in range(4)), "skipped": 1}
    assert [label] in [v["variants"] for v in report["labels"].values()]


def test_numbers_too_large_for_a_float_are_line_problems(tmp_path: Path, files) -> None:
    huge = "1" * 400  # float('1' * 400) is inf
    txt = files.txt(
        tmp_path / "a.txt",
        f"a.jpg;10;20;90;100;crack\na.jpg;10;20;90;{huge};crack\na.jpg;1e308;1e308;1.7e308;1.7e308;crack\n"
        "a.jpg;1;2;inf;4;crack\n",
    )
    cxcywh = parse_txt(txt, "a.txt", "a.jpg", LineParser(xyxy=False))  # cx + w/2 overflows to inf
    assert [(p.line, p.kind) for p in cxcywh.problems] == [
        (2, "non_numeric"),
        (3, "coord_overflow"),
        (4, "non_numeric"),
    ]
    xyxy = parse_txt(txt, "a.txt", "a.jpg", LineParser())
    assert [(p.line, p.kind) for p in xyxy.problems] == [(2, "non_numeric"), (4, "non_numeric")]
    assert "(400 chars)" in xyxy.problems[0].reason  # the reason quotes the token short
    assert [b.line for b in cxcywh.boxes] == [1]


def test_jsonl_lines_end_at_newline_only(tmp_path: Path) -> None:
    """A lone \\r (text mode's universal newlines) or U+2028 must not cut a line; huge integers are errors."""
    path = tmp_path / "x.jsonl"
    first = json.dumps({"id": "a\u2028b\u0085c"}, ensure_ascii=False)
    path.write_bytes(first.encode() + b"\n" + b'{"id":\r "b"}\r\n' + b'{"id": ' + b"1" * 5000 + b"}\n")
    got = []
    with pytest.raises(BadInput, match=f"^{re.escape(str(path))}:3: invalid JSON"):
        for lineno, obj in iter_jsonl(path, BadInput, "missing"):
            got.append((lineno, obj))
    assert got == [(1, {"id": "a\u2028b\u0085c"}), (2, {"id": "b"})]


def test_names_too_long_for_a_cached_copy_get_a_short_hashed_name(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=1)
    abn = tmp_path / "abn" / "b1"
    stems = ["x" * 250, "缺" * 83]  # 254 and 253 bytes with ".jpg": "<name>.png" would be 258 and 257
    for stem in stems:
        (abn / f"{stem}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (abn / f"{stem}.jpg").write_bytes(jpeg_bytes((240, 320), orientation=6))  # needs an upright copy
        files.txt(abn / f"{stem}.txt", f"{stem}.jpg;10;20;90;100;crack\n")
    cfg = split_all_train(make_config)
    report = convert(cfg, progress=False)["prepare"]  # used to fail: File name too long
    out = tmp_path / "out"
    samples = {s["sample_id"]: s for s in files.regions(out)}
    copies = {c["image"]: c["copy"] for c in report["images"]["converted_images"]}
    for stem in stems:
        s = samples[f"abnormal/b1/{stem}.jpg#0"]
        assert copies[f"abnormal/b1/{stem}.jpg"] == s["image"]  # the report names the original
        name = s["image"].rsplit("/", 1)[1]
        assert len(name.encode()) <= 255 and name.startswith(stem[:40]) and name.endswith(".png")
        assert (out / s["image"]).is_file() and (s["width"], s["height"]) == (320, 240)
    again = prepare(cfg, progress=False).report  # deterministic: the same names, the copies reused
    assert {c["image"]: c["copy"] for c in again["images"]["converted_images"]} == copies
