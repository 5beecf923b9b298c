"""The demo end to end, scaled down (`qwenvl-roi demo --quick`): every step runs, outputs exist and agree.

This checks the plumbing (real llamafactory-cli train/export with the real recipes, real predict/eval),
not learning: the full run's learning is measured in bench/results/demo.md.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from qwenvl_roi.cli import main as qwenvl_roi_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "runs" / "demo"
    assert qwenvl_roi_main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0
    return out


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_everything_lands_under_the_output_folder(demo_out: Path) -> None:
    for rel in (
        "data/synth_manifest.json",
        "data.yaml",
        "scan_labels.json",
        "scan_labels.png",
        "prepared/regions_test.jsonl",
        "prepared/prepare_report.json",
        "preview/index.html",
        "dataset_info/dataset_info.json",
        "models/base/config.json",
        "models/phase3-merged/config.json",
        "predictions/untrained/test.jsonl",
        "predictions/trained/val.jsonl",
        "eval/trained/metrics.json",
        "eval/trained/roc.png",
        "report.md",
        "report.json",
    ):
        assert (demo_out / rel).is_file(), rel
    # nothing the demo wrote escaped into the repository (LLaMA-Factory writes saves/ into the cwd by default)
    report = _report(demo_out)
    for phase in report["phases"]:
        assert Path(phase["train_dir"]).is_relative_to(demo_out)
        assert Path(phase["merged_model"]).is_relative_to(demo_out)


def test_data_summary_is_consistent(demo_out: Path) -> None:
    data = _report(demo_out)["data"]
    assert data["bad_lines_planted"] > 0
    assert data["bad_lines_flagged"] == data["bad_lines_planted"]
    assert sum(s["images"] for s in data["splits"].values()) == data["images"]
    assert data["boxes"]["kept"] == sum(data["defects_per_kind"].values())
    scan = json.loads((demo_out / "scan_labels.json").read_text(encoding="utf-8"))
    assert scan  # scan-labels ran on the generated abnormal folder


def test_each_phase_trained_what_its_recipe_says(demo_out: Path) -> None:
    phases = {p["name"]: p for p in _report(demo_out)["phases"]}
    assert list(phases) == ["phase1", "phase2", "phase3"]
    groups = {
        name: {g["group"].split("/")[0] for g in p["trainable"]["groups"]} for name, p in phases.items()
    }
    assert {"language", "projector"} <= groups["phase1"] and not any("vision" in g for g in groups["phase1"])
    assert "vision_lora" in groups["phase2"]
    assert "vision_unfrozen" in groups["phase3"]
    for p in phases.values():
        assert p["losses"] and all(math.isfinite(x["loss"]) for x in p["losses"])
        assert Path(p["merged_model"], "config.json").is_file()
        # the phases chain through merged exports
    assert phases["phase2"]["merged_model"] != phases["phase3"]["merged_model"]


def test_metrics_before_and_after_come_from_eval(demo_out: Path) -> None:
    report = _report(demo_out)
    for tag in ("untrained", "trained"):
        m = report["metrics"][tag]
        on_disk = json.loads((demo_out / "eval" / tag / "metrics.json").read_text(encoding="utf-8"))
        assert m["image"] == on_disk["image"] and m["threshold"] == on_disk["threshold"]
        assert m["threshold_source"] != "given"  # chosen on val, not typed in
        auroc = m["image"]["auroc"]
        assert auroc is None or 0.0 <= auroc <= 1.0
    test_ids = {
        json.loads(x)["sample_id"]
        for x in (demo_out / "prepared/regions_test.jsonl").read_text().splitlines()
    }
    predicted = {
        json.loads(x)["sample_id"]
        for x in (demo_out / "predictions/trained/test.jsonl").read_text().splitlines()
    }
    assert predicted == test_ids
    assert report["stage_check"]["val_image_auroc"] is not None


def test_report_links_resolve(demo_out: Path) -> None:
    text = (demo_out / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links
    for link in links:
        assert (demo_out / link).exists(), link
    assert "untrained" in text and "trained" in text
    assert "(preview/index.html)" in text  # the annotation preview of the demo's data


def _readme_python_blocks() -> list[str]:
    root = Path(__file__).resolve().parents[2]
    blocks = []
    for name in ("README.md", "README.zh-CN.md"):
        text = (root / name).read_text(encoding="utf-8")
        blocks += re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return blocks


def test_readme_python_snippet_runs_on_the_demo_model(demo_out: Path, capsys: pytest.CaptureFixture) -> None:
    """The README's "use the model elsewhere" code, pointed at the demo's final merged model."""
    blocks = _readme_python_blocks()
    assert blocks, "the READMEs show Python usage"
    first_line = (demo_out / "prepared/regions_test.jsonl").read_text(encoding="utf-8").splitlines()[0]
    sample = json.loads(first_line)
    for code in blocks:
        code = code.replace("saves/qwen2_5_vl-7b/roi/phase3-merged", str(demo_out / "models/phase3-merged"))
        # a relative image in a regions file is relative to that file's folder (docs/architecture.md)
        code = code.replace("part_0001.jpg", str(demo_out / "prepared" / sample["image"]))
        # the README's boxes are for a 7B user's picture; the demo pictures are smaller (a box outside the
        # picture gets no score and a note: tests/inference/test_detections.py)
        demo_boxes = str([r["box"] for r in sample["regions"][:2]])
        code = code.replace("[[1190, 206, 1712, 377], [30, 42, 120, 160]]", demo_boxes)
        exec(compile(code, "README snippet", "exec"), {})  # noqa: S102 - our own documentation
        printed = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in printed] == ["R1", "R2"]
        assert all(0.0 <= float(line.split()[1]) <= 1.0 for line in printed)


def test_every_file_of_the_demo_validates_against_the_published_schemas(demo_out: Path) -> None:
    """The demo's real outputs against docs/schemas/*.schema.json with an independent validator
    (jsonschema, draft 2020-12): what a user's downstream tool would check."""
    from jsonschema import Draft202012Validator

    schemas = Path(__file__).resolve().parents[2] / "docs" / "schemas"

    def validator(name: str) -> Draft202012Validator:
        return Draft202012Validator(json.loads((schemas / f"{name}.schema.json").read_text(encoding="utf-8")))

    def lines(path: Path) -> list[dict]:
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]

    prepared = demo_out / "prepared"
    checked = 0
    for path in sorted(prepared.glob("regions_*.jsonl")):
        for row in lines(path):
            validator("regions").validate(row)
            checked += 1
    for name, path in (("prepare_report", prepared / "prepare_report.json"),
                       ("dataset_meta", prepared / "dataset_meta.json")):  # fmt: skip
        validator(name).validate(json.loads(path.read_text(encoding="utf-8")))
    predictions = sorted((demo_out / "predictions").rglob("*.jsonl"))
    assert predictions
    for path in predictions:
        for row in lines(path):
            validator("predictions").validate(row)
            checked += 1
    metrics = sorted((demo_out / "eval").rglob("metrics.json"))
    assert metrics
    for path in metrics:
        validator("metrics").validate(json.loads(path.read_text(encoding="utf-8")))
    for path in (demo_out / "eval").rglob("qwenvl_roi_inference.json"):
        validator("inference_config").validate(json.loads(path.read_text(encoding="utf-8")))
    assert checked > 50
