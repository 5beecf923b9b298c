"""prepare end to end on messy inputs: exact box ledger, problems with file and line, labels, strict mode,
config errors, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from qwenvl_roi.converters.config import load_data_config
from qwenvl_roi.converters.prepare import StrictModeError, prepare

from qwenvl_roi.errors import ConvertError
from qwenvl_roi.fileio import atomic_open, write_json


def messy(tmp_path: Path, files) -> None:
    abn, nor = tmp_path / "abn", tmp_path / "nor"
    files.image(abn / "b1" / "a1.jpg", (640, 480))
    a1 = [
        "a1.jpg;10;10;100;100;crack",  # 1 kept
        "a1.jpg ； 200，200，300，300  600;400;700;500 ； Crack ",  # 2 kept + clipped
        "",  # 3
        "a1.jpg;1;2;3;crack",  # 4 three numbers
        "a1.jpg;50;50;60;60;crack",  # 5 too small
        "a1.jpg;700;10;800;100;crack",  # 6 outside
        "a1.jpg;300;300;250;250;ＣＲＡＣＫ",  # 7 reversed corners
    ]
    files.txt(abn / "b1" / "a1.txt", "\r\n".join(a1) + "\r\n", bom=True)
    files.image(abn / "b1" / "a2.png", (320, 240))
    files.txt(abn / "b1" / "a2.txt", "a2.png;10;10;60;60;渗漏\nother.png;1;1;50;50;渗漏\n", encoding="gbk")
    files.image(abn / "b2" / "a3.jpg", (320, 240))
    files.txt(abn / "b2" / "a3.txt", "a3.jpg;0;0;10;10;crack\n")
    files.image(abn / "b2" / "a4.jpg", (320, 240))
    files.txt(abn / "b2" / "orphan.txt", "orphan.jpg;1;1;50;50;crack\n")
    (abn / "b3").mkdir()
    (abn / "b3" / "a5.jpg").write_bytes(b"not an image")
    files.txt(abn / "b3" / "a5.txt", "a5.jpg;1;1;50;50;crack\n")
    files.image(abn / "b3" / "a6.JPG", (400, 300))
    files.txt(abn / "b3" / "a6.txt", "a6.JPG;10;10;60;60;spall\n")
    files.image(nor / "s1" / "n1.png", (300, 200), mode="L")
    files.image(nor / "s1" / "n2.bmp", (300, 200))
    files.image(nor / "s2" / "n3.tif", (300, 200))
    files.image(nor / "s2" / "n4.webp", (300, 200))
    (nor / "s2" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    files.txt(nor / "s1" / "notes.txt", "hello")


def test_messy_inputs_exact_outcome(tmp_path: Path, files, make_config) -> None:
    messy(tmp_path, files)
    result = prepare(load_data_config(make_config(train_ratio=1.0, val_ratio=0.0, test_ratio=0.0)))
    r = result.report
    assert r["boxes"] == {
        "read": 12,
        "kept": 4,
        "clipped": 2,
        "dropped": 6,
        "dropped_by_reason": {
            "box_outside": 1,
            "box_too_small": 2,
            "filename_mismatch": 1,
            "image_unreadable": 1,
            "txt_without_image": 1,
        },
    }
    # non-blank lines of matched txt files: a1 6, a2 2, a3 a5 a6 1 each; skipped: a1:4 and a2:2
    assert r["lines"] == {"read": 11, "skipped": 2}
    abn, nor = (tmp_path / "abn").as_posix(), (tmp_path / "nor").as_posix()
    got = sorted((p["file"], p["line"], p["kind"]) for p in r["problems"])
    assert got == sorted(
        [
            (f"{abn}/b1/a1.txt", 2, "box_fixed"),
            (f"{abn}/b1/a1.txt", 4, "coord_count"),
            (f"{abn}/b1/a1.txt", 5, "box_too_small"),
            (f"{abn}/b1/a1.txt", 6, "box_outside"),
            (f"{abn}/b1/a1.txt", 7, "box_fixed"),
            (f"{abn}/b1/a2.txt", 2, "filename_mismatch"),
            (f"{abn}/b2/a3.txt", 1, "box_too_small"),
            (f"{abn}/b2/a3.jpg", None, "no_usable_box"),
            (f"{abn}/b2/a4.jpg", None, "image_without_txt"),
            (f"{abn}/b2/orphan.txt", None, "txt_without_image"),
            (f"{abn}/b3/a5.jpg", None, "unreadable_image"),
            (f"{nor}/s1/notes.txt", None, "txt_in_normal_dir"),
            (f"{nor}/s2/broken.jpg", None, "unreadable_image"),
        ]
    )
    assert r["inputs"]["abnormal_images_used"] == 3 and r["inputs"]["normal_images_used"] == 4
    assert r["inputs"]["txt_encodings"] == {"gbk": 1, "utf-8": 3, "utf-8-sig": 1}
    assert r["labels"] == {
        "Crack": {"variants": ["Crack", "crack", "ＣＲＡＣＫ"]},
        "spall": {"variants": ["spall"]},
        "渗漏": {"variants": ["渗漏"]},
    }
    train = result.samples["train"]
    a1 = [s for s in train if s["sample_id"].startswith("abnormal/b1/a1.jpg#")]
    pos = sorted((tuple(rg["box"]), rg["label"]) for s in a1 for rg in s["regions"] if rg["positive"])
    assert pos == [
        ((10, 10, 100, 100), "Crack"),
        ((200, 200, 300, 300), "Crack"),
        ((250, 250, 300, 300), "Crack"),
        ((600, 400, 640, 480), "Crack"),
    ]
    assert {s["source"] for s in train} == {"abnormal", "normal"}
    n1 = next(s for s in train if s["sample_id"] == "normal/s1/n1.png#0")
    assert (n1["width"], n1["height"], n1["group"], n1["positive_region_ids"]) == (300, 200, "s1", [])
    assert n1["image"] == "../nor/s1/n1.png" and (tmp_path / "out" / n1["image"]).is_file()
    assert r["splits"]["train"]["labels"]["Crack"] == {"boxes": 4, "images": 1}
    assert any("missing from val" in w for w in r["warnings"])
    on_disk = [json.loads(x) for x in (tmp_path / "out" / "regions_train.jsonl").read_text().splitlines()]
    assert on_disk == train


def test_label_map_and_unmapped_label_problem(tmp_path: Path, files, make_config) -> None:
    messy(tmp_path, files)
    cfg = load_data_config(make_config(label_map={"crack": "裂缝", "渗漏": "渗漏"}))
    r = prepare(cfg).report
    assert set(r["labels"]) == {"裂缝", "spall", "渗漏"}
    (p,) = [p for p in r["problems"] if p["kind"] == "label_not_in_map"]
    assert p["line"] == 1 and p["file"].endswith("b3/a6.txt") and "'spall'" in p["reason"]


def test_strict_mode_cli_exits_non_zero_and_writes_only_the_report(
    tmp_path: Path, files, make_config
) -> None:
    messy(tmp_path, files)
    cfg = make_config()
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "prepare", "--config", str(cfg), "--strict"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "a1.txt:4:" in proc.stderr and "13 problem(s)" in proc.stderr
    out = tmp_path / "out"
    # a strict failure keeps out_dir's set as it was (none here) and writes its report beside it
    assert sorted(p.name for p in out.iterdir()) == [".qwenvl-roi.json", "prepare_report.strict.json"]
    assert json.loads((out / "prepare_report.strict.json").read_text())["ok"] is False
    assert "prepare_report.strict.json" in proc.stderr
    with pytest.raises(StrictModeError):
        prepare(load_data_config(make_config(strict=True)))


def test_clean_input_passes_strict(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "prepare", "--config", str(make_config()), "--strict"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "boxes: read 24, kept 24" in proc.stdout


def test_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("seed: 1\ntrain_ratio: 0.5\nbogus_key: 3\nmin_box_size: -1\n", encoding="utf-8")
    with pytest.raises(ConvertError) as err:
        load_data_config(cfg)
    msg = str(err.value)
    assert f"{cfg}:3: bogus_key" in msg and f"{cfg}:4: min_box_size" in msg
    cfg.write_text("seed: 1\ntrain_ratio: 0.5\n", encoding="utf-8")
    with pytest.raises(ConvertError, match="must be 1.0"):
        load_data_config(cfg)
    cfg.write_text("seed: [1\n", encoding="utf-8")
    with pytest.raises(ConvertError, match="invalid YAML"):
        load_data_config(cfg)
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "prepare", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "invalid YAML" in proc.stderr


def test_shipped_config_template_loads() -> None:
    cfg = load_data_config(Path(__file__).parents[2] / "configs" / "data.yaml")
    assert (cfg.image_max_pixels, cfg.image_min_pixels, cfg.model_family, cfg.prompt_language) == (
        1048576,
        1024,
        "qwen2_5_vl",
        "zh",
    )
    assert (cfg.max_boxes_per_image, cfg.abnormal_neg_per_pos, cfg.normal_decoys_per_image) == (8, 1, 6)
    assert cfg.dataset_prefix == "roi" and cfg.dataset_info_dir == Path("dataset_info")


def test_atomic_write_keeps_previous_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write('{"v": 2, "partial"')
        raise RuntimeError("killed midway")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
