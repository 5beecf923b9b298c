"""The file contracts (qwenvl_roi/schemas): real outputs of convert, predict (--regions, --mode generate,
--boxes) and eval pass the published JSON Schemas under an independent validator (jsonschema's
Draft202012Validator) and round-trip through the models byte for byte; malformed records fail both; the
published files are what the models generate; `qwenvl-roi schema NAME` prints a valid schema."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from jsonschema import Draft202012Validator
from PIL import Image
from pydantic import ValidationError

from qwenvl_roi.cli import main
from qwenvl_roi.errors import ContractError
from qwenvl_roi.fileio import compact_row
from qwenvl_roi.schemas import DRAFT, SCHEMAS, WRITE_COMMAND, check_record, get, schema_text
from qwenvl_roi.schemas.__main__ import main as schemas_main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "schemas"


def _published(name: str) -> dict[str, Any]:
    return json.loads((DOCS / f"{name}.schema.json").read_text(encoding="utf-8"))


def _validator(name: str) -> Draft202012Validator:
    """The published schema, format checking on (the schemas name no format; a stray one would be checked)."""
    schema = _published(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --- real outputs ----------------------------------------------------------------------------------------


def _image(path: Path, size: tuple[int, int], value: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def _messy_dataset(root: Path) -> None:
    """40 usable images (so the position audit runs), a defect drawn in each box; plus what the report must
    account for: an EXIF-rotated JPEG and a 16-bit PNG (copies), a bad txt line, a txt without its image."""
    rng = np.random.default_rng(3)
    for i in range(20):
        folder = root / "abn" / f"batch{i % 4}"
        arr = np.full((96, 128, 3), 130, np.uint8)
        lines = []
        for j in range(1 + i % 2):
            x, y = int(rng.integers(4, 80)), int(rng.integers(4, 50))
            arr[y : y + 30, x : x + 40] = 40
            lines.append(f"a{i:02d}.png;{x};{y};{x + 40};{y + 30};{['crack', 'spall'][(i + j) % 2]}")
        if i == 0:
            lines.append("a00.png;1;2;3O;4;crack")  # a bad number: a problem with its line
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"a{i:02d}.png")
        (folder / f"a{i:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "abn" / "batch0" / "orphan.txt").write_text("orphan.png;1;2;30;40;crack\n", encoding="utf-8")
    for i in range(18):
        _image(root / "nor" / f"scene{i % 4}" / f"n{i:02d}.png", (128, 96), 110 + i)
    stored = Image.new("RGB", (96, 128), (125, 125, 125))  # shown 128x96 with Orientation=6
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(root / "nor" / "scene0" / "rotated.jpg", quality=95, exif=exif)
    grey16 = np.full((96, 128), 3000, np.uint16)
    Image.fromarray(grey16).save(root / "nor" / "scene1" / "mono12.png")


@pytest.fixture(scope="module")
def real(tiny_qwen2_5_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every file kind, written by the real commands: convert, predict (score, generate, --boxes), eval."""
    root = tmp_path_factory.mktemp("schemas")
    _messy_dataset(root)
    out = root / "out"
    cfg = {
        "abnormal_dir": str(root / "abn"),
        "normal_dir": str(root / "nor"),
        "out_dir": str(out),
        "dataset_info_dir": str(root / "dinfo"),
        "split_by_parent": False,  # every image its own group: val and test both get a share
        "train_ratio": 0.5,
        "val_ratio": 0.25,
        "test_ratio": 0.25,
        "max_boxes_per_image": 3,
        "normal_decoys_per_image": 2,
        "min_box_size": 4,
        "image_max_pixels": 112 * 112,
        "prompt_language": "en",
    }
    config = root / "data.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["convert", "--config", str(config)]) == 0
    model = ["--model", str(tiny_qwen2_5_vl), "--device", "cpu", "--no-progress"]
    preds = root / "predictions"
    for split in ("val", "test"):
        regions = str(out / f"regions_{split}.jsonl")
        assert main(["predict", *model, "--regions", regions, "--out", str(preds / f"{split}.jsonl")]) == 0
    generated = preds / "generated.jsonl"
    regions = str(out / "regions_test.jsonl")
    assert main(["predict", *model, "--regions", regions, "--mode", "generate", "--out", str(generated)]) == 0
    detections = root / "detections.jsonl"
    detections.write_text(
        json.dumps(
            {"image": "abn/batch1/a01.png", "boxes": [[4, 4, 50, 40], [500, 500, 600, 600], [1, 2, 3]]}
        )
        + "\n"
        + json.dumps({"image": "abn/batch1/missing.png", "boxes": [[4, 4, 50, 40]]})
        + "\n{not json\n",
        encoding="utf-8",
    )
    boxes = preds / "boxes.jsonl"
    assert main(
        ["predict", *model, "--meta", str(out), "--images", str(root), "--boxes", str(detections),
         "--out", str(boxes)]
    ) == 0  # fmt: skip
    eval_dir = root / "eval"
    assert main(
        ["eval", "--predictions", str(preds / "test.jsonl"), "--gold", str(out / "regions_test.jsonl"),
         "--val-predictions", str(preds / "val.jsonl"), "--val-gold", str(out / "regions_val.jsonl"),
         "--out", str(eval_dir), "--gallery-limit", "3"]
    ) == 0  # fmt: skip
    return {"out": out, "preds": preds, "eval": eval_dir}


def _records(real: dict[str, Path]) -> dict[str, list[tuple[str, str]]]:
    """Contract name -> (where, text of one record) for every record of every real file."""
    out, preds, eval_dir = real["out"], real["preds"], real["eval"]
    found: dict[str, list[tuple[str, str]]] = {name: [] for name in SCHEMAS}
    for split in ("train", "val", "test"):
        path = out / f"regions_{split}.jsonl"
        found["regions"] += [(f"{path}:{i}", line) for i, line in enumerate(_lines(path), 1)]
    for path in sorted(preds.glob("*.jsonl")):
        found["predictions"] += [(f"{path}:{i}", line) for i, line in enumerate(_lines(path), 1)]
    for name, path in (
        ("metrics", eval_dir / "metrics.json"),
        ("prepare_report", out / "prepare_report.json"),
        ("dataset_meta", out / "dataset_meta.json"),
        ("inference_config", eval_dir / "qwenvl_roi_inference.json"),
    ):
        found[name].append((str(path), path.read_text(encoding="utf-8")))
    return found


def test_real_outputs_pass_the_published_schemas(real: dict[str, Path]) -> None:
    for name, records in _records(real).items():
        validator = _validator(name)
        assert records, name
        for where, text in records:
            errors = [
                f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(json.loads(text))
            ]
            assert not errors, f"{where} ({name}): {errors}"


def test_real_outputs_cover_every_branch(real: dict[str, Path]) -> None:
    """The validation above saw each kind of prediction row, a box note, copies and problems."""
    rows = [json.loads(text) for _, text in _records(real)["predictions"]]
    kinds = {get("predictions").adapter().validate_python(row).__class__.__name__ for row in rows}
    assert kinds == {"RegionsPrediction", "GeneratedPrediction", "BoxesPrediction", "BoxesError"}
    notes = [b for row in rows for b in row.get("boxes", []) if "note" in b]
    assert any(b["box"] is None for b in notes) and any(b["box"] is not None for b in notes)
    assert sum("error" in row for row in rows) == 2
    report = json.loads((real["out"] / "prepare_report.json").read_text(encoding="utf-8"))
    assert report["images"]["bit_depth"] is not None and report["position_audit"]["skipped"] is None
    assert {r for c in report["images"]["converted_images"] for r in c["reasons"]} >= {
        "exif_orientation",
        "16_bit",
    }
    assert {p["kind"] for p in report["problems"]} >= {"non_numeric", "txt_without_image"}
    metrics = json.loads((real["eval"] / "metrics.json").read_text(encoding="utf-8"))
    assert {"val", "gallery", "image_line"} <= set(metrics)


def _as_written(name: str, obj: Any) -> str:
    """The text the writer of that file writes for ``obj`` (qwenvl_roi/fileio.py)."""
    if name in ("regions", "predictions"):
        return compact_row(obj).decode("utf-8")  # the rows' writer
    if name in ("metrics", "inference_config"):
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def test_real_outputs_round_trip_through_the_models(real: dict[str, Path]) -> None:
    """Read through the model and dumped again, every record is the same text: the models declare the
    fields in the writers' order and keep every value as written (an integer coordinate stays one)."""
    for name, records in _records(real).items():
        adapter = get(name).adapter()
        for where, text in records:
            model = adapter.validate_python(json.loads(text))
            again = adapter.dump_python(model, mode="json", exclude_unset=True)
            assert _as_written(name, again) == text, f"{where} ({name})"


def test_readers_and_writers_use_the_models(real: dict[str, Path]) -> None:
    """build-sft's reader, the meta and inference-config loaders and savers, and the demo's report all go
    through the contracts, and write what they read."""
    from qwenvl_roi.converters.build_sft import read_regions
    from qwenvl_roi.converters.meta import DatasetMeta, load_dataset_meta

    from qwenvl_roi.demo.report import read_metrics
    from qwenvl_roi.fileio import dumps
    from qwenvl_roi.inference.config import InferenceConfig, load_inference_config, save_inference_config
    from qwenvl_roi.schemas.dataset_meta import DatasetMeta as ContractMeta
    from qwenvl_roi.schemas.inference_config import InferenceConfig as ContractConfig

    assert DatasetMeta is ContractMeta and InferenceConfig is ContractConfig
    out = real["out"]
    regions = out / "regions_test.jsonl"
    assert [compact_row(s).decode("utf-8") for s in read_regions(regions)] == _lines(regions)
    meta_text = (out / "dataset_meta.json").read_text(encoding="utf-8")
    assert dumps(load_dataset_meta(out).model_dump()) + "\n" == meta_text  # prepare's write_json
    config = load_inference_config(real["eval"])
    copy_dir = real["eval"].parent / "config-copy"
    copy_dir.mkdir(exist_ok=True)
    written = save_inference_config(config, copy_dir)
    assert written.read_bytes() == (real["eval"] / written.name).read_bytes()
    metrics = read_metrics(real["eval"])
    on_disk = json.loads((real["eval"] / "metrics.json").read_text(encoding="utf-8"))
    assert metrics == {**on_disk, "eval_dir": str(real["eval"])}


def test_the_demo_report_refuses_a_metrics_file_off_contract(real: dict[str, Path], tmp_path: Path) -> None:
    from qwenvl_roi.demo.report import read_metrics

    metrics = json.loads((real["eval"] / "metrics.json").read_text(encoding="utf-8"))
    metrics["image"]["AUROC"] = metrics["image"].pop("auroc")  # a renamed figure: once printed as "None"
    (tmp_path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    with pytest.raises(ContractError, match=r"(?s)invalid metrics\.json: .*image\.auroc\s+Field required"):
        read_metrics(tmp_path)


# --- malformed records -----------------------------------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            obj = obj[int(key)] if isinstance(obj, list) else obj[key]
        if value is _DELETE:
            del obj[last]
        else:
            obj[int(last) if isinstance(obj, list) else last] = value

    return edit


_DELETE = object()

# (contract, which real record, edit, what is wrong): each fails the published schema and the model
MALFORMED: list[tuple[str, str, Edit, str]] = [
    ("regions", "regions", _set("regions.0.box", [1, 2, 3]), "a box of three numbers"),
    ("regions", "regions", _set("regions", _DELETE), "no region list"),
    ("regions", "regions", _set("width", "128"), "a width as a string"),
    ("regions", "regions", _set("regions.0.positive", "true"), "a verdict as a string"),
    ("regions", "regions", _set("source", "unknown"), "a source that is neither"),
    ("regions", "regions", _set("boxes", []), "an unknown key"),
    ("predictions", "scored", _set("regions.0.score", "0.5"), "a score as a string"),
    ("predictions", "scored", _set("regions.0.score", 1.5), "a score above 1"),
    ("predictions", "scored", _set("regions", _DELETE), "no region list"),
    ("predictions", "scored", _set("regions.0.greedy", _DELETE), "a scored region without its word"),
    ("predictions", "boxes", _set("boxes.0.box", [4, 4, 50]), "a detector box of three numbers"),
    ("predictions", "boxes", _set("image_score", "high"), "an image score as a string"),
    ("predictions", "error", _set("error", None), "an error row without its error"),
    ("predictions", "boxes", _set("error", "oops"), "a scored row that also says it failed"),
    ("metrics", "metrics", _set("roi.auroc", "0.9"), "an AUROC as a string"),
    ("metrics", "metrics", _set("threshold_source", _DELETE), "no threshold source"),
    ("metrics", "metrics", _set("counts.regions", -1), "a negative count"),
    ("prepare_report", "prepare_report", _set("boxes.kept", "40"), "a count as a string"),
    ("prepare_report", "prepare_report", _set("problems.0.line", "3"), "a line number as a string"),
    ("dataset_meta", "dataset_meta", _set("image_max_pixels", "12544"), "a pixel limit as a string"),
    ("dataset_meta", "dataset_meta", _set("labels", "crack"), "labels not a list"),
    ("inference_config", "inference_config", _set("threshold", "0.5"), "a threshold as a string"),
    ("inference_config", "inference_config", _set("threshold_source", "tuned"), "an unknown source"),
]

# the models also refuse what a JSON Schema cannot express (Python's json reads NaN and Infinity)
MALFORMED_FOR_THE_MODELS: list[tuple[str, str, Edit, str]] = [
    ("regions", "regions", _set("regions.0.box.0", math.nan), "a NaN coordinate"),
    ("regions", "regions", _set("regions.0.box.2", math.inf), "an infinite coordinate"),
    ("regions", "regions", _set("regions.0.box.0", 10**400), "a coordinate too large for a float"),
    ("regions", "regions", _set("width", 128.0), "a width of 128.0"),
    ("regions", "regions", _set("positive_region_ids", ["R9"]), "positive ids that are not the positives"),
    ("predictions", "scored", _set("image_line_score", math.nan), "a NaN score"),
    ("metrics", "metrics", _set("roi.precision", math.inf), "an infinite precision"),
    ("metrics", "metrics", _set("confusion.counts.0", []), "a ragged confusion matrix"),
]


def _sample(real: dict[str, Path], which: str) -> dict[str, Any]:
    preds = real["preds"]
    if which == "regions":
        return json.loads(_lines(real["out"] / "regions_test.jsonl")[0])
    if which == "scored":
        return json.loads(_lines(preds / "test.jsonl")[0])
    if which in ("boxes", "error"):
        rows = [json.loads(line) for line in _lines(preds / "boxes.jsonl")]
        return next(r for r in rows if ("error" in r) == (which == "error"))
    folder = real["eval"] if which in ("metrics", "inference_config") else real["out"]
    file = {
        "metrics": "metrics.json",
        "inference_config": "qwenvl_roi_inference.json",
        "prepare_report": "prepare_report.json",
        "dataset_meta": "dataset_meta.json",
    }[which]
    return json.loads((folder / file).read_text(encoding="utf-8"))


@pytest.mark.parametrize(("name", "which", "edit", "why"), MALFORMED, ids=[m[3] for m in MALFORMED])
def test_malformed_records_fail_the_schema_and_the_model(
    real: dict[str, Path], name: str, which: str, edit: Edit, why: str
) -> None:
    good = _sample(real, which)
    bad = copy.deepcopy(good)
    edit(bad)
    validator = _validator(name)
    assert not list(validator.iter_errors(good))
    assert list(validator.iter_errors(bad)), f"the {name} schema accepts {why}"
    with pytest.raises(ValidationError):
        get(name).adapter().validate_python(bad)
    with pytest.raises(ContractError, match=f"a {name} record breaks its contract"):
        check_record(name, bad)


@pytest.mark.parametrize(
    ("name", "which", "edit", "why"), MALFORMED_FOR_THE_MODELS, ids=[m[3] for m in MALFORMED_FOR_THE_MODELS]
)
def test_malformed_values_fail_the_model(
    real: dict[str, Path], name: str, which: str, edit: Edit, why: str
) -> None:
    bad = _sample(real, which)
    edit(bad)
    with pytest.raises(ValidationError):
        get(name).adapter().validate_python(bad)


def test_build_sft_names_the_line_of_a_malformed_sample(real: dict[str, Path], tmp_path: Path) -> None:
    from qwenvl_roi.converters.build_sft import read_regions

    from qwenvl_roi.errors import ConvertError

    lines = _lines(real["out"] / "regions_test.jsonl")
    bad = json.loads(lines[0])
    bad["regions"][0]["box"] = [1, 2, 3]
    path = tmp_path / "regions_test.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(bad)]) + "\n", encoding="utf-8")
    with pytest.raises(
        ConvertError, match=r"regions_test\.jsonl:2: not a regions sample \(regions\.0\.box: "
    ):
        list(read_regions(path))


# --- the published files and the CLI ---------------------------------------------------------------------


def test_published_schemas_are_current(tmp_path: Path) -> None:
    assert schemas_main(["--write", str(tmp_path)]) == 0
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted([*(f"{name}.schema.json" for name in SCHEMAS), "README.md"])
    stale = [
        n for n in fresh if not (DOCS / n).is_file() or (DOCS / n).read_bytes() != (tmp_path / n).read_bytes()
    ]
    assert not stale, f"docs/schemas is out of date ({', '.join(stale)}): run `{WRITE_COMMAND}`"
    assert schemas_main(["--check", str(DOCS)]) == 0


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schema_command_prints_a_draft_2020_12_schema(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", name]) == 0
    captured = capsys.readouterr()
    schema = json.loads(captured.out)  # stdout holds the schema and nothing else
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DRAFT == "https://json-schema.org/draft/2020-12/schema"
    assert schema["x-format-version"] == get(name).version
    assert captured.out == schema_text(name) == (DOCS / f"{name}.schema.json").read_text(encoding="utf-8")


def test_schema_command_refuses_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "regionz"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown schema 'regionz'" in captured.err
    assert all(name in captured.err for name in SCHEMAS)


def test_dataset_meta_format_version_is_the_files() -> None:
    from qwenvl_roi.converters.meta import META_VERSION

    assert get("dataset_meta").version == META_VERSION
    assert _published("dataset_meta")["properties"]["version"]["default"] == META_VERSION


def test_a_box_is_four_finite_numbers_kept_as_written() -> None:
    """Box (four Numbers, checked inside pydantic-core): ints stay ints, floats floats, the box returned is
    a copy, strict mode is honoured, and each refused number is named by its place."""
    from pydantic import TypeAdapter

    from qwenvl_roi.schemas.regions import Region

    region_adapter = TypeAdapter(Region)
    good = {"id": "R1", "box": [1, 2.5, 3, 4], "label": None, "positive": False}
    box = good["box"]
    region = region_adapter.validate_python(good)
    assert region["box"] == box and region["box"] is not box
    with pytest.raises(ValidationError, match=r"box\.2\n.*finite"):
        region_adapter.validate_python({**good, "box": [1, 2, math.nan, 4]})
    with pytest.raises(ValidationError, match="valid list"):
        region_adapter.validate_python({**good, "box": (1, 2, 3, 4)}, strict=True)
    assert region_adapter.validate_python({**good, "box": (1, 2, 3, 4)})["box"] == [1, 2, 3, 4]  # lax
    for bad in ([1, 2, 3], [1, 2, 3, 4, 5], [1, 2, 3, True], [1, 2, 3, "4"], [1, 2, 3, 10**400]):
        with pytest.raises(ValidationError):
            region_adapter.validate_python({**good, "box": bad})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        region_adapter.validate_python({**good, "score": 0.5})
    kept = region_adapter.validate_python({**good, "box": [-(2**1023), 0.5, 2**1023, -0.0]})["box"]
    assert [type(v) for v in kept] == [int, float, int, float]  # no int turned into a float on the way


def test_a_number_is_what_float_can_hold_and_nothing_else() -> None:
    """Number refuses exactly what a JSON writer would refuse or a reader could not use, each with the
    same message: every int float() converts (up to 2**1024 - 2**970, where float() overflows) is kept an
    int; bools, strings, NaN, infinities, numpy ints and float32 are refused, in strict mode and not."""
    from pydantic import TypeAdapter

    from qwenvl_roi.schemas.types import Number

    number = TypeAdapter(Number)
    edge = 2**1024 - 2**970
    float(edge - 1)  # the last int float() holds
    with pytest.raises(OverflowError):
        float(edge)
    accepted = [edge - 1, -(edge - 1), 0, -0.0, 1.5, 1e308, np.float64(1.5)]
    refused = [edge, -edge, 10**400, True, False, "1", None, [1], math.nan, math.inf, -math.inf]
    refused += [np.int64(3), np.float32(1.5), np.bool_(True), np.float64("nan")]
    for strict in (None, True):
        for value in accepted:
            got = number.validate_python(value, strict=strict)
            assert got == value and isinstance(got, type(value) if type(value) in (int, float) else float)
        for value in refused:
            with pytest.raises(ValidationError, match="finite number"):
                number.validate_python(value, strict=strict)
