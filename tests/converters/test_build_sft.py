"""build-sft: sharegpt records, prompt/answer round trip, dataset_info merging, and the real LLaMA-Factory
loader reading the result (image tokens counted against our coordinate frame)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from qwenvl_roi.converters.build_sft import build_sft, read_regions
from qwenvl_roi.converters.config import load_data_config
from qwenvl_roi.converters.convert import convert
from qwenvl_roi.converters.meta import load_dataset_meta
from qwenvl_roi.converters.prompt import build_record, parse_answer

from qwenvl_roi.errors import ConvertError


def regions(out: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (out / f"regions_{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_records_format_and_round_trip(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=10, n_normal=10, folders=5)
    cfg = make_config(train_ratio=0.5, val_ratio=0.25, test_ratio=0.25)
    convert(cfg, progress=False)
    out = tmp_path / "out"
    meta = load_dataset_meta(out)
    assert load_dataset_meta(out / "regions_val.jsonl") == meta
    assert (meta.model_family, meta.image_max_pixels, meta.image_min_pixels) == ("qwen2_5_vl", 1048576, 1024)
    assert (meta.normal_word, meta.abnormal_word, meta.image_key, meta.labels) == (
        "正常",
        "异常",
        "图像",
        ["crack", "spall"],
    )
    for sp in ("train", "val", "test"):
        samples = regions(out, sp)
        records = json.loads((out / f"sft_{sp}.json").read_text(encoding="utf-8"))
        assert len(records) == len(samples)
        for s, rec in zip(samples, records, strict=True):
            assert rec == build_record(s, meta)
            assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
            assert rec["images"] == [s["image"]]
            user = rec["messages"][1]["content"]
            assert user.count("<image>") == 1 and user.count("\n<regions>\n") == 1
            assert user.endswith("\n</regions>")
            for r in s["regions"]:
                assert f"{r['id']}: {meta.box_in_frame(r['box'], s['width'], s['height'])}" in user
            parsed = parse_answer(rec["messages"][2]["content"], meta)
            assert parsed.unparsed == []
            assert parsed.image == ("异常" if s["source"] == "abnormal" else "正常")
            assert parsed.regions == {r["id"]: r["label"] if r["positive"] else "正常" for r in s["regions"]}
    image_train = json.loads((out / "sft_image_train.json").read_text(encoding="utf-8"))
    assert len(image_train) == len({s["image"] for s in regions(out, "train")})
    assert all(rec["messages"][2]["content"] in ("图像: 正常", "图像: 异常") for rec in image_train)
    assert all(rec["messages"][1]["content"].count("<image>") == 1 for rec in image_train)
    assert not (out / "sft_image_test.json").exists()


def test_teacher_forced_record_and_parse_problems(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=2, n_normal=0, folders=1)
    convert(make_config(prompt_language="en", normal_dir=None), progress=False)
    out = tmp_path / "out"
    meta = load_dataset_meta(out)
    s = next(s for sp in ("train", "val", "test") for s in regions(out, sp))
    forced = build_record(s, meta, verdicts=["normal"] * len(s["regions"]))
    assert forced["messages"][:2] == build_record(s, meta)["messages"][:2]
    assert forced["messages"][2]["content"].splitlines() == ["image: normal"] + [
        f"R{i}: normal" for i in range(1, len(s["regions"]) + 1)
    ]
    p = parse_answer("image: abnormal\nR1: crack\nR2: rust\nR2: normal\nnonsense\nR1: normal\n", meta)
    assert (p.image, p.regions) == ("abnormal", {"R1": "crack", "R2": "normal"})
    assert p.unparsed == ["R2: rust", "nonsense", "R1: normal"]


def test_dataset_info_merge_keeps_other_entries(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    info = tmp_path / "dinfo" / "dataset_info.json"
    info.parent.mkdir()
    other = {"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}, "roi_train": {"file_name": "stale.json"}}
    info.write_text(json.dumps(other), encoding="utf-8")
    convert(make_config(), progress=False)
    convert(make_config(dataset_prefix="line2", out_dir=str(tmp_path / "out2")), progress=False)
    data = json.loads(info.read_text(encoding="utf-8"))
    assert data["alpaca_en_demo"] == other["alpaca_en_demo"]
    names = {
        f"{p}_{s}" for p in ("roi", "line2") for s in ("train", "val", "test", "image_train", "image_val")
    }
    assert names <= set(data)
    entry = data["roi_train"]
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {
        "messages": "messages",
        "images": "images",
    }
    assert entry["tags"]["system_tag"] == "system" and entry["tags"]["assistant_tag"] == "assistant"
    assert not os.path.isabs(entry["file_name"])
    assert (info.parent / entry["file_name"]).resolve() == (tmp_path / "out" / "sft_train.json").resolve()
    assert (info.parent / data["line2_image_val"]["file_name"]).resolve() == (
        tmp_path / "out2" / "sft_image_val.json"
    )
    meta_file = (info.parent / entry["roi_meta"]["meta_file"]).resolve()
    assert meta_file == (tmp_path / "out" / "dataset_meta.json").resolve()
    assert entry["roi_meta"] == {
        "image_max_pixels": 1048576,
        "image_min_pixels": 1024,
        "model_family": "qwen2_5_vl",
        "meta_file": entry["roi_meta"]["meta_file"],
    }
    info.write_text("{broken", encoding="utf-8")
    with pytest.raises(ConvertError, match="invalid JSON"):
        build_sft(load_data_config(make_config()), progress=False)
    assert info.read_text(encoding="utf-8") == "{broken"


def test_build_sft_without_prepare_is_a_clear_error(tmp_path: Path, make_config) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "build-sft", "--config", str(make_config())],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "run `qwenvl-roi prepare` first" in proc.stderr


def test_llamafactory_loads_the_datasets(tmp_path: Path, files, make_config, tiny_qwen2_5_vl: Path) -> None:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    files.simple(tmp_path, n_abnormal=4, n_normal=3, folders=1)
    max_px = 224 * 224
    cfg = make_config(image_max_pixels=max_px, train_ratio=1.0, val_ratio=0.0, test_ratio=0.0)
    summary = convert(cfg, progress=False)["build_sft"]
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(tiny_qwen2_5_vl),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "full",
            "dataset": "roi_train,roi_image_train",
            "dataset_dir": str(tmp_path / "dinfo"),
            "template": "qwen2_vl",
            "cutoff_len": 4096,
            "output_dir": str(tmp_path / "lf-out"),
            "overwrite_cache": True,
            "report_to": "none",
            "image_max_pixels": max_px,
            "image_min_pixels": 1024,
            "use_cpu": True,
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    train = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)[
        "train_dataset"
    ]
    assert len(train) == summary["records"]["roi_train"] + summary["records"]["roi_image_train"]
    meta = load_dataset_meta(tmp_path / "out")
    fw, fh = meta.frame_size(320, 240)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    samples = regions(tmp_path / "out", "train")
    for i, s in enumerate(samples):
        row = train[i]
        assert row["input_ids"].count(pad) == (fw // 28) * (fh // 28)
        answer = tokenizer.decode([t for t in row["labels"] if t != -100], skip_special_tokens=True)
        assert build_record(s, meta)["messages"][2]["content"] in answer


def test_scan_labels_block_pasted_into_config_then_convert_cli(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=6, n_normal=4, folders=2)
    files.txt(
        tmp_path / "abn" / "batch0" / "a000.txt",
        "a000.jpg;10;20;60;80;ＣＲＡＣＫ\na000.jpg;5;5;50;50;Spall \n",
    )
    scan = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "scan-labels", "--abnormal-dir", str(tmp_path / "abn")],
        capture_output=True,
        text=True,
        check=True,
    )
    block = scan.stderr[scan.stderr.index("label_map:") :]
    label_map = {k: v.upper() for k, v in yaml.safe_load(block)["label_map"].items()}
    cfg = make_config(label_map=label_map)
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi.cli", "convert", "--config", str(cfg), "--strict"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "roi_train:" in proc.stdout and "updated" in proc.stdout
    assert load_dataset_meta(tmp_path / "out").labels == ["CRACK", "SPALL"]
    names = ("regions_train.jsonl", "regions_val.jsonl", "regions_test.jsonl", "prepare_report.json")
    names += ("dataset_meta.json", "sft_train.json", "sft_val.json", "sft_test.json")
    assert all(
        (tmp_path / "out" / n).is_file() for n in names + ("sft_image_train.json", "sft_image_val.json")
    )


def test_prompt_overrides_are_checked(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=2, n_normal=2, folders=1)
    with pytest.raises(ConvertError, match="<image> must not appear"):
        convert(make_config(prompts={"system": "look at <image>"}), progress=False)
    with pytest.raises(ConvertError, match="bad placeholder"):
        convert(make_config(prompts={"image_instruction": "verdict {oops}"}), progress=False)
    with pytest.raises(ConvertError, match="equals the normal word"):
        convert(make_config(label_map={"crack": "正常"}), progress=False)
    convert(
        make_config(prompts={"normal_word": "OK", "abnormal_word": "NG", "image_key": "IMG"}), progress=False
    )
    rec = json.loads((tmp_path / "out" / "sft_image_train.json").read_text(encoding="utf-8"))
    assert {r["messages"][2]["content"] for r in rec} <= {"IMG: OK", "IMG: NG"}


def test_bad_regions_lines_name_the_file_and_line(tmp_path: Path) -> None:
    regions = tmp_path / "regions_train.jsonl"
    regions.write_text('{"image": "a.jpg"}\n\n[1, 2]\n', encoding="utf-8")
    lacks = r"regions_train\.jsonl:1: not a regions sample \(sample_id: Field required; width: Field required"
    with pytest.raises(ConvertError, match=lacks) as err:
        list(read_regions(regions))
    assert "regions: Field required" in str(err.value) and "source: Field required" in str(err.value)
    regions.write_text("\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(ConvertError, match=r"regions_train\.jsonl:2: expected a JSON object, got list"):
        list(read_regions(regions))
    regions.write_text('{"image": \n', encoding="utf-8")
    with pytest.raises(ConvertError, match=r"regions_train\.jsonl:1: invalid JSON \(.* at column \d+\)"):
        list(read_regions(regions))


def test_media_paths_are_the_normalised_joins(tmp_path: Path) -> None:
    """Each image path of a regions file, seen from the dataset_info folder, is exactly posixpath's
    normpath(join(folder, image)) (the stdlib as the reference), for paths with '.', '..', doubled slashes,
    spaces and CJK names, under relative and root prefixes; the per-folder shortcut changes nothing."""
    import itertools
    import posixpath

    from qwenvl_roi.converters.build_sft import MediaPaths

    parts = ["a", "..", ".", "", "b c", "数据", "x.jpg", "..."]
    images = ["/".join(p) for n in (1, 2, 3, 4) for p in itertools.product(parts, repeat=n)]
    images = [p for p in images if not p.startswith("/")]
    for prefix in (".", "..", "../out", "a/../b", "a/./b/", "/abs/x", "/", "//x"):
        media = MediaPaths(tmp_path / "regions_train.jsonl", tmp_path)
        media.prefix = prefix
        for image in images:
            assert media(image) == posixpath.normpath(posixpath.join(prefix, image)), (prefix, image)
