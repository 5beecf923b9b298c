"""Label canonicalisation, label_map, and the scan-labels command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from qwenvl_roi.converters.labels import LabelResolver, auto_canonical, label_key

from qwenvl_roi.errors import ConvertError


def test_variants_differing_by_width_case_whitespace_share_a_key() -> None:
    assert label_key("Crack") == label_key("ｃｒａｃｋ") == label_key(" CRACK ") == "crack"
    assert label_key("hair  line") == label_key("Hair\u3000Line") == "hair line"
    assert label_key("裂缝") != label_key("裂纹")


def test_auto_canonical_picks_most_frequent_spelling_then_sort_order() -> None:
    assert auto_canonical({"crack": 3, "Crack": 5, "ＣＲＡＣＫ": 1}) == {"crack": "Crack"}
    assert auto_canonical({"b": 2, "B": 2}) == {"b": "B"}


def test_label_map_wins_and_matches_variants() -> None:
    r = LabelResolver({"crack": "裂缝", "seepage": "渗漏"}, {"Crack": 2, "ｓｅｅｐａｇｅ": 1, "dent": 1})
    assert r.resolve("CRACK ") == ("裂缝", True)
    assert r.resolve("Seepage") == ("渗漏", True)
    assert r.resolve("裂缝") == ("裂缝", True)
    assert r.resolve("dent") == ("dent", False)


def test_conflicting_label_map_is_rejected() -> None:
    with pytest.raises(ConvertError, match="conflicts"):
        LabelResolver({"crack": "裂缝", "CRACK": "裂纹"}, {})


def test_scan_labels_cli(tmp_path: Path, files) -> None:
    root = tmp_path / "abn"
    files.txt(root / "b1" / "a.txt", "a.jpg;1;2;3;4;Crack\na.jpg;1;2;3;4  5;6;7;8;crack\n")
    files.txt(
        root / "b2" / "b.txt",
        "b.jpg；1；2；3；4；ＣＲＡＣＫ\r\nb.jpg;1;2;3;4;渗漏\r\n",
        encoding="gbk",
        bom=False,
    )
    files.txt(root / "b2" / "c.txt", "c.jpg;1;2;3;crack\n", bom=True)
    out = tmp_path / "labels.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwenvl_roi.cli",
            "scan-labels",
            "--abnormal-dir",
            str(root),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["txt_files"] == 3 and data["boxes"] == 5
    assert {r["label"]: (r["boxes"], r["images"]) for r in data["labels"]} == {
        "crack": (2, 1),
        "Crack": (1, 1),
        "ＣＲＡＣＫ": (1, 1),
        "渗漏": (1, 1),
    }
    assert data["merged"][0] == {
        "label": "crack",
        "variants": ["Crack", "crack", "ＣＲＡＣＫ"],
        "boxes": 4,
        "images": 2,
    }
    assert [(p["line"], p["kind"]) for p in data["problems"]] == [(1, "coord_count")]
    # the bar chart beside the JSON; a label no installed font can draw is named #k, with its legend
    chart = out.with_suffix(".png")
    assert data["chart"] == chart.name
    from PIL import Image

    with Image.open(chart) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 100
    from qwenvl_roi.converters.label_chart import _drawable_chars

    cjk_drawable = all(ord(ch) in _drawable_chars()[1] for ch in "渗漏")
    assert data["chart_legend"] == ({} if cjk_drawable else {"#2": "渗漏"})
    block = proc.stdout[proc.stdout.index("label_map:") :]
    assert yaml.safe_load(block) == {
        "label_map": {"Crack": "crack", "crack": "crack", "ＣＲＡＣＫ": "crack", "渗漏": "渗漏"}
    }
    # without --out, stdout is pure JSON
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "scan-labels", "--abnormal-dir", str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["merged"] == data["merged"]
    assert "label_map:" in proc.stderr


def test_scan_labels_missing_dir_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "scan-labels", "--abnormal-dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_scan_labels_counts_what_convert_reads_with_normal_dir_inside(tmp_path: Path, files) -> None:
    """normal_dir inside abnormal_dir: convert reads its images as normal and reports a stray txt there
    (txt_in_normal_dir), so scan-labels must not count that txt's labels either; both agree box for box."""
    from qwenvl_roi.converters.convert import convert
    from qwenvl_roi.converters.scan_labels import scan_labels

    root = tmp_path / "root"
    for i in range(6):
        files.image(root / "b1" / f"a{i}.jpg", (64, 64))
        files.txt(root / "b1" / f"a{i}.txt", f"a{i}.jpg;4,4,40,40;裂缝\n")
    for i in range(4):
        files.image(root / "ok" / f"n{i}.jpg", (64, 64))
    files.txt(root / "ok" / "n0.txt", "n0.jpg;4,4,40,40;划痕\n")  # stray: convert reads n0 as normal
    cfg = tmp_path / "data.yaml"
    keys = {"abnormal_dir": str(root), "normal_dir": str(root / "ok"), "out_dir": str(tmp_path / "out")}
    cfg.write_text(yaml.safe_dump({**keys, "dataset_info_dir": str(tmp_path / "di")}, allow_unicode=True))
    from qwenvl_roi.converters.config import load_data_config

    report = convert(load_data_config(cfg), progress=False)["prepare"]
    assert report["boxes"]["read"] == 6 and report["problem_counts"] == {"txt_in_normal_dir": 1}
    scanned = scan_labels(config=load_data_config(cfg), progress=False)
    assert scanned["boxes"] == 6 and [x["label"] for x in scanned["labels"]] == ["裂缝"]
