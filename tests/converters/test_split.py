"""Split invariants: groups never span splits, holdout lands in test, determinism byte for byte, and adding
images never moves an existing one."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from qwenvl_roi.converters.config import load_data_config
from qwenvl_roi.converters.convert import convert
from qwenvl_roi.converters.prepare import prepare
from qwenvl_roi.converters.split import assign_split, group_key, hash_unit

from qwenvl_roi.errors import ConvertError


def image_splits(out: Path) -> dict[str, str]:
    result: dict[str, str] = {}
    for sp in ("train", "val", "test"):
        for line in (out / f"regions_{sp}.jsonl").read_text(encoding="utf-8").splitlines():
            s = json.loads(line)
            assert result.setdefault(s["image"], sp) == sp, "an image appears in two splits"
    return result


def test_group_key_and_hash() -> None:
    assert group_key("abnormal", "b1/x.jpg", True) == group_key("normal", "b1/y.png", True) == "b1"
    assert group_key("abnormal", "x.jpg", True) == "."
    assert group_key("abnormal", "b1/s2/x.jpg", True) == "b1/s2"
    assert group_key("abnormal", "b1/s2/x.jpg", True, 1) == "b1"
    assert group_key("normal", "b1/s9/y.png", True, 1) == "b1"
    assert group_key("abnormal", "x.jpg", True, 1) == "."
    assert group_key("normal", "b1/x.jpg", False) == "normal/b1/x.jpg"
    assert hash_unit(1, "k") == hash_unit(1, "k") != hash_unit(2, "k")
    splits = [assign_split(0, f"g{i}", 0.8, 0.1) for i in range(5000)]
    assert abs(splits.count("train") / 5000 - 0.8) < 0.03 and abs(splits.count("val") / 5000 - 0.1) < 0.02


def test_groups_holdout_and_determinism(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=60, n_normal=60, folders=20)
    cfg = make_config(
        holdout_list=["a005.jpg", "scene7/n007.png"], train_ratio=0.6, val_ratio=0.2, test_ratio=0.2
    )
    convert(cfg, progress=False)
    out = tmp_path / "out"
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    first_info = (tmp_path / "dinfo" / "dataset_info.json").read_bytes()
    splits = image_splits(out)
    by_group: dict[str, set[str]] = defaultdict(set)
    for line in "".join(
        (out / f"regions_{sp}.jsonl").read_text() for sp in ("train", "val", "test")
    ).splitlines():
        s = json.loads(line)
        by_group[s["group"]].add(s["split"])
    assert all(len(v) == 1 for v in by_group.values()), "a folder spans two splits"
    assert len(by_group) == 40
    assert {len(v) for v in by_group.values()} == {1}
    assert set().union(*by_group.values()) == {"train", "val", "test"}
    held = [img for img in splits if img.endswith(("/a005.jpg", "/scene7/n007.png"))]
    assert len(held) == 2 and all(splits[i] == "test" for i in held)
    # the whole folder of a holdout image goes to test with it
    assert all(splits[i] == "test" for i in splits if "/batch5/" in i)
    convert(cfg, progress=False)
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == first
    assert (tmp_path / "dinfo" / "dataset_info.json").read_bytes() == first_info


def test_adding_images_keeps_every_existing_image_in_its_split(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=40, n_normal=40, folders=10)
    for by_parent in (True, False):
        cfg = load_data_config(
            make_config(split_by_parent=by_parent, out_dir=str(tmp_path / f"o{by_parent}"))
        )
        prepare(cfg, progress=False)
        before = image_splits(cfg.out_dir)
        # new images in existing folders and in new folders
        for i in range(40, 70):
            files.image(tmp_path / "nor" / f"scene{i % 13}" / f"n{i:03d}.png", (320, 240))
            files.image(tmp_path / "abn" / f"batch{i % 13}" / f"a{i:03d}.jpg", (320, 240))
            files.txt(
                tmp_path / "abn" / f"batch{i % 13}" / f"a{i:03d}.txt", f"a{i:03d}.jpg;5;5;90;90;crack\n"
            )
        prepare(cfg, progress=False)
        after = image_splits(cfg.out_dir)
        assert len(after) == len(before) + 60
        assert {img: after[img] for img in before} == before
        for i in range(40, 70):  # clean up for the next round
            (tmp_path / "nor" / f"scene{i % 13}" / f"n{i:03d}.png").unlink()
            (tmp_path / "abn" / f"batch{i % 13}" / f"a{i:03d}.jpg").unlink()
            (tmp_path / "abn" / f"batch{i % 13}" / f"a{i:03d}.txt").unlink()


def test_flat_folder_with_split_by_parent_warns(tmp_path: Path, files, make_config) -> None:
    for i in range(4):
        files.image(tmp_path / "nor" / f"n{i}.png", (100, 100))
        files.image(tmp_path / "abn" / f"a{i}.png", (100, 100))
        files.txt(tmp_path / "abn" / f"a{i}.txt", f"a{i}.png;1;1;50;50;x\n")
    r = prepare(load_data_config(make_config()), progress=False).report
    assert sum("sit in one folder" in w for w in r["warnings"]) == 2
    r = prepare(load_data_config(make_config(split_by_parent=False)), progress=False).report
    assert not any("sit in one folder" in w for w in r["warnings"])


def test_batches_stay_whole_across_scenes_and_both_classes(tmp_path: Path, files, make_config) -> None:
    """README's layout abnormal_root/<batch>/<scene>/IMG with normal images of the same batches."""
    for b in range(12):
        for sc in range(3):
            d = f"batch{b:02d}/scene{sc}"
            files.image(tmp_path / "abn" / d / f"a{sc}.jpg", (160, 120))
            files.txt(tmp_path / "abn" / d / f"a{sc}.txt", f"a{sc}.jpg;10;10;60;60;crack\n")
            files.image(tmp_path / "nor" / d / f"n{sc}.png", (160, 120))
    ratios = {"train_ratio": 0.5, "val_ratio": 0.25, "test_ratio": 0.25}

    def splits_of(level: int) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for s in files.regions(tmp_path / "out"):
            out["/".join(s["sample_id"].split("#")[0].split("/")[1 : 1 + level])].add(s["split"])
        return out

    r = prepare(load_data_config(make_config(split_group_depth=1, **ratios)), progress=False).report
    batches = splits_of(1)
    assert len(batches) == 12 and all(len(v) == 1 for v in batches.values()), batches
    assert set().union(*batches.values()) == {"train", "val", "test"}
    keys = [k for sp in ("train", "val", "test") for k in r["splits"][sp]["group_keys"]]
    assert sorted(keys) == [f"batch{b:02d}" for b in range(12)]
    assert r["split_policy"] == {"split_by_parent": True, "split_group_depth": 1, "groups": 12}

    # default (null): the parent folder, shared by both classes: a scene never spans two splits, a batch may
    r = prepare(load_data_config(make_config(**ratios)), progress=False).report
    assert all(len(v) == 1 for v in splits_of(2).values())
    assert sum(r["splits"][sp]["groups"] for sp in ("train", "val", "test")) == 36
    assert any(len(v) > 1 for v in splits_of(1).values())

    with pytest.raises(ConvertError, match="split_group_depth needs split_by_parent: true"):
        load_data_config(make_config(split_group_depth=1, split_by_parent=False))
