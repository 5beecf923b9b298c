"""The synthetic dataset: the users' messy format, deterministic, and every planted bad line gets flagged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from qwenvl_roi.converters.convert import convert

from qwenvl_roi.demo.synth import MANIFEST, SynthConfig, draw_image, generate

SMALL = SynthConfig(n_abnormal=30, n_normal=10, size=128, images_per_batch=4, bad_line_every=5)


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, generate(root, SMALL, progress=False)


def test_byte_identical_and_rerun_safe(small: tuple[Path, dict], tmp_path: Path) -> None:
    root, manifest = small
    other = generate(tmp_path / "again", SMALL, progress=False)
    assert _digest_tree(root) == _digest_tree(tmp_path / "again")
    assert other["digest"] == manifest["digest"]
    before = (root / MANIFEST).stat().st_mtime_ns
    assert generate(root, SMALL, progress=False) == manifest  # same config: reused, not rewritten
    assert (root / MANIFEST).stat().st_mtime_ns == before
    changed = generate(tmp_path / "again", SMALL.model_copy(update={"seed": 1}), progress=False)
    assert changed["digest"] != manifest["digest"]
    assert _digest_tree(root) != _digest_tree(tmp_path / "again")


def test_layout_is_the_users_messy_format(small: tuple[Path, dict]) -> None:
    root, manifest = small
    abnormal = [e for e in manifest["images"] if e["source"] == "abnormal"]
    normal = [e for e in manifest["images"] if e["source"] == "normal"]
    assert len(abnormal) == 30 and len(normal) == 10
    for e in manifest["images"]:
        path = root / e["image"]
        assert len(Path(e["image"]).parts) == 4  # <kind>/<line>/<batch>/<file>: nested batch folders
        assert path.is_file() and Image.open(path).size == (128, 128)
        assert path.with_suffix(".txt").is_file() == (e["source"] == "abnormal")
    assert all(1 <= len(e["defects"]) <= SMALL.max_defects for e in abnormal)
    assert all(not e["defects"] for e in normal)
    assert {d["kind"] for e in abnormal for d in e["defects"]} == {"crack", "seepage", "spalling"}
    assert {e["txt_encoding"] for e in abnormal} >= {"utf-8", "gbk"}
    texts = [(root / e["image"]).with_suffix(".txt").read_bytes() for e in abnormal]
    decoded = [
        t.decode("gbk") if e["txt_encoding"] == "gbk" else t.decode("utf-8-sig")
        for t, e in zip(texts, abnormal, strict=True)
    ]
    assert any("；" in t for t in decoded)  # full-width separators
    assert any("，" in t for t in decoded)
    assert any(b"\r\n" in t for t in texts)  # CRLF files
    multi_box_lines = [ln for t in decoded for ln in t.splitlines() if ln.count("  ") and ln.strip()]
    assert multi_box_lines, "some lines must carry several boxes"


def test_defects_are_high_contrast() -> None:
    """Each kind changes the pixels in its box far beyond the surface texture (learnable on a tiny model)."""
    cfg = SynthConfig(size=224)
    shifts: dict[str, list[float]] = {"crack": [], "seepage": [], "spalling": []}
    for i in range(40):
        img, defects = draw_image(cfg, i, abnormal=True)
        arr = np.asarray(img.convert("L"), dtype=np.float32)
        for d in defects:
            x1, y1, x2, y2 = d.box
            patch = arr[y1:y2, x1:x2]
            shifts[d.kind].append(float(np.abs(patch - np.median(arr)).max()))
    for kind, values in shifts.items():
        assert values, kind
        assert min(values) > 50, (kind, min(values))
    normal, none = draw_image(cfg, 0, abnormal=False)
    arr = np.asarray(normal.convert("L"), dtype=np.float32)
    assert none == [] and float(np.abs(arr - np.median(arr)).max()) < 50


def test_converters_flag_every_planted_bad_line_and_keep_every_drawn_defect(
    small: tuple[Path, dict], tmp_path: Path
) -> None:
    root, manifest = small
    result = convert(
        {
            "abnormal_dir": str(root / "abnormal"),
            "normal_dir": str(root / "normal"),
            "out_dir": str(tmp_path / "prepared"),
            "dataset_info_dir": str(tmp_path / "dataset_info"),
            "label_map": {"Crack": "裂缝", "渗水": "渗漏", "剥落": "掉块"},
            "image_max_pixels": 128 * 128,
        },
        progress=False,
    )
    report = result["prepare"]
    flagged = {(Path(p["file"]).relative_to(root).as_posix(), p["line"]) for p in report["problems"]}
    planted = {(b["file"], b["line"]) for b in manifest["bad_lines"]}
    assert len(planted) == 30 // 5
    assert planted <= flagged
    assert flagged <= planted, f"unexpected problems: {sorted(flagged - planted)}"
    drawn = sum(len(e["defects"]) for e in manifest["images"])
    assert report["boxes"]["kept"] == drawn
    assert set(report["labels"]) == {"裂缝", "渗漏", "掉块"}
