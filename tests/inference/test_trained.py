"""On a tiny model fine-tuned by `llamafactory-cli train` (LoRA) and merged by `llamafactory-cli export`:
base+adapter and merged export give the same scores; scoring and greedy generation agree; the predict
command, eval, and the documented Python API work end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl_roi.cli import main
from qwenvl_roi.inference import RegionPredictor
from qwenvl_roi.inference.config import CONFIG_FILE_NAME


def _samples(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"regions_{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def merged_predictor(merged_model: Path, scored_dataset: Path) -> RegionPredictor:
    return RegionPredictor.load(merged_model, meta=scored_dataset)


def test_adapter_and_merged_give_same_scores(
    tiny_qwen2_5_vl: Path, lora_adapter: Path, merged_model: Path, scored_dataset: Path, tmp_path: Path
) -> None:
    regions = scored_dataset / "regions_test.jsonl"
    common = ["--regions", str(regions), "--batch-size", "3", "--no-progress"]
    a, m = tmp_path / "adapter.jsonl", tmp_path / "merged.jsonl"
    assert (
        main(
            [
                "predict",
                "--model",
                str(tiny_qwen2_5_vl),
                "--adapter",
                str(lora_adapter),
                "--out",
                str(a),
                *common,
            ]
        )
        == 0
    )
    assert main(["predict", "--model", str(merged_model), "--out", str(m), *common]) == 0
    again = tmp_path / "merged_again.jsonl"
    assert main(["predict", "--model", str(merged_model), "--out", str(again), *common]) == 0
    assert again.read_bytes() == m.read_bytes()  # deterministic, byte for byte
    base = tmp_path / "base.jsonl"
    assert main(["predict", "--model", str(tiny_qwen2_5_vl), "--out", str(base), *common]) == 0
    rows_a = [json.loads(x) for x in a.read_text().splitlines()]
    rows_m = [json.loads(x) for x in m.read_text().splitlines()]
    rows_b = [json.loads(x) for x in base.read_text().splitlines()]
    assert [r["sample_id"] for r in rows_a] == [s["sample_id"] for s in _samples(scored_dataset, "test")]
    diff_to_base = 0.0
    for ra, rm, rb in zip(rows_a, rows_m, rows_b, strict=True):
        assert ra["image"] == rm["image"]
        for x, y, z in zip(ra["regions"], rm["regions"], rb["regions"], strict=True):
            assert x["id"] == y["id"] and 0.0 <= x["score"] <= 1.0
            assert x["score"] == pytest.approx(y["score"], abs=1e-5)
            assert x["label"] == y["label"]
            diff_to_base = max(diff_to_base, abs(x["score"] - z["score"]))
    assert diff_to_base > 1e-3  # the adapter is really applied


def test_scoring_and_generation_agree(merged_predictor: RegionPredictor, scored_dataset: Path) -> None:
    """Wherever greedy generation writes a well-formed answer, scoring's greedy words are that answer."""
    meta = merged_predictor.meta
    samples = _samples(scored_dataset, "val") + _samples(scored_dataset, "test")
    generated = merged_predictor.generate_samples(samples, batch_size=4, progress=False)
    scored = merged_predictor.score_samples(samples, batch_size=4, progress=False)
    parsed = 0
    for g, s in zip(generated, scored, strict=True):
        if g["missing"] or g["unparsed"] or g["extra"] or g["image_verdict"] is None:
            continue
        parsed += 1
        assert s["image_verdict"] == g["image_verdict"], g["text"]
        assert [r["greedy"] for r in s["regions"]] == [r["label"] or meta.normal_word for r in g["regions"]]
    assert parsed >= len(samples) // 2, [g["text"] for g in generated]


def test_predict_generate_mode_and_eval(merged_model: Path, scored_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen.jsonl"
    rc = main(
        [
            "predict",
            "--model",
            str(merged_model),
            "--regions",
            str(scored_dataset / "regions_test.jsonl"),
            "--out",
            str(out),
            "--mode",
            "generate",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all("text" in r for r in rows)
    for r in rows:
        for reg in r["regions"]:
            assert reg["score"] in (0.0, 1.0, None)
    assert (
        main(
            [
                "eval",
                "--predictions",
                str(out),
                "--gold",
                str(scored_dataset / "regions_test.jsonl"),
                "--threshold",
                "0.5",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["counts"]["unparsed_regions"] == sum(reg["score"] is None for r in rows for reg in r["regions"])


def test_documented_api_snippet(merged_model: Path, scored_dataset: Path, tmp_path: Path) -> None:
    """The flow of docs/evaluation.md: predict val+test, eval with the val sweep storing config and meta
    beside the model, then the Python API with nothing but the model folder."""
    model = tmp_path / "model"
    model.mkdir()
    for f in merged_model.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    for split in ("val", "test"):
        assert (
            main(
                [
                    "predict",
                    "--model",
                    str(model),
                    "--regions",
                    str(scored_dataset / f"regions_{split}.jsonl"),
                    "--out",
                    str(tmp_path / f"pred_{split}.jsonl"),
                    "--no-progress",
                ]
            )
            == 0
        )
    assert (
        main(
            [
                "eval",
                "--predictions",
                str(tmp_path / "pred_test.jsonl"),
                "--gold",
                str(scored_dataset / "regions_test.jsonl"),
                "--val-predictions",
                str(tmp_path / "pred_val.jsonl"),
                "--val-gold",
                str(scored_dataset / "regions_val.jsonl"),
                "--model-dir",
                str(model),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    chosen = json.loads((tmp_path / "eval" / "metrics.json").read_text())["threshold"]
    assert (model / CONFIG_FILE_NAME).is_file() and (model / "dataset_meta.json").is_file()

    # --- the snippet -------------------------------------------------------------------------------------
    from qwenvl_roi.inference import RegionPredictor

    predictor = RegionPredictor.load(str(model))  # reads dataset_meta.json + threshold beside the model
    sample = _samples(scored_dataset, "test")[0]
    result = predictor.predict_image(sample["image"], [r["box"] for r in sample["regions"]])
    # -------------------------------------------------------------------------------------------------------
    assert predictor.config.threshold == chosen
    assert [r["id"] for r in result["regions"]] == [r["id"] for r in sample["regions"]]
    reference = json.loads((tmp_path / "pred_test.jsonl").read_text().splitlines()[0])
    for got, ref in zip(result["regions"], reference["regions"], strict=True):
        assert got["score"] == pytest.approx(ref["score"], abs=1e-5)
        assert got["abnormal"] == (got["score"] >= chosen)


def test_predict_errors_are_clear(
    tiny_qwen2_5_vl: Path, scored_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "regions_bad.jsonl"
    lines = (scored_dataset / "regions_test.jsonl").read_text().splitlines()
    bad.write_text(lines[0] + "\n" + '{"sample_id": "x", "image": "/nope.png"}\n')
    rc = main(
        ["predict", "--model", str(tiny_qwen2_5_vl), "--regions", str(bad), "--out", str(tmp_path / "p")]
    )
    assert rc == 2 and "regions_bad.jsonl:2: not a regions sample" in capsys.readouterr().err
    lonely = tmp_path / "lonely" / "regions_test.jsonl"
    lonely.parent.mkdir()
    lonely.write_text(lines[0] + "\n")
    rc = main(
        ["predict", "--model", str(tiny_qwen2_5_vl), "--regions", str(lonely), "--out", str(tmp_path / "p")]
    )
    assert rc == 2 and "dataset_meta.json not found" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_predict_help_lists_the_interface(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--adapter", "--regions", "--out", "--mode", "--batch-size"):
        assert flag in text


def test_predict_names_a_wrong_model_folder(
    scored_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    regions = str(scored_dataset / "regions_test.jsonl")
    rc = main(
        ["predict", "--model", str(tmp_path / "missing"), "--regions", regions, "--out", str(tmp_path / "p")]
    )
    assert rc == 2 and "missing: not a folder" in capsys.readouterr().err
    rc = main(["predict", "--model", str(scored_dataset), "--regions", regions, "--out", str(tmp_path / "p")])
    assert rc == 2 and "no config.json" in capsys.readouterr().err


def test_predict_refuses_a_model_of_another_family(
    tiny_qwen2_vl: Path, scored_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    regions = str(scored_dataset / "regions_test.jsonl")  # converted for Qwen2.5-VL (absolute pixels)
    rc = main(["predict", "--model", str(tiny_qwen2_vl), "--regions", regions, "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 2 and "model_family=qwen2_5_vl" in err and "'qwen2_vl'" in err
    assert not (tmp_path / "p").exists()
