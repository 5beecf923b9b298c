"""prepare with near-duplicate pictures (issue #20): twins filed in other batch folders are found, kept in one
split (``group``) or listed with the splits they span (``report``); a twin annotated differently is a label
conflict (report and problem); ``off`` computes nothing; reruns are byte-identical and decode nothing.

Why this data: the twins are planted the way they arise (re-encoded JPEG, brightness +3 %, resized to 90 %,
PNG -> JPEG, an EXIF-rotated copy) among distinct pictures of one product that are alike by design
(bench/similar_parts.py), in the users' layout: abnormal_dir/batchK/*.jpg with same-stem txt files and
normal_dir/batchK/*.png. Each twin goes into a batch folder whose split differs from its original's, as
when a picture is filed twice, so without the check every set would span two splits.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from qwenvl_roi.converters import near_duplicates as nd
from qwenvl_roi.converters import twin_check
from qwenvl_roi.converters.config import DataConfig, load_data_config
from qwenvl_roi.converters.prepare import prepare
from qwenvl_roi.converters.split import assign_split

from qwenvl_roi.cli import main
from qwenvl_roi.errors import ConvertError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from similar_parts import TWIN_KINDS, ProductLine, plant_twin, save  # noqa: E402

W, H = 320, 240
BATCHES = 10
SEED = 42  # the config's seed: the planted twins are placed by the splits it gives the folders
HOSTILE = "n_<i>&amp;"  # a file name that is markup: the preview must show it as text


@dataclass
class Planted:
    """The dataset: every twin set by image name (as the report names images), the conflicting set."""

    root: Path
    sets: set[frozenset[str]]
    conflict: frozenset[str]
    kinds: dict[str, str]  # twin name -> kind


def _txt(path: Path, boxes: list[tuple[str, float, float, float, float]]) -> None:
    lines = [f"{path.name};{x1:g};{y1:g};{x2:g};{y2:g};{lab}" for lab, x1, y1, x2, y2 in boxes]
    path.with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _elsewhere(batch: int) -> int:
    """The first other batch folder whose split differs from ``batch``'s (by folder alone)."""
    split = assign_split(SEED, f"batch{batch}", 0.8, 0.1)
    return next(b for b in range(BATCHES) if assign_split(SEED, f"batch{b}", 0.8, 0.1) != split)


def build(root: Path) -> Planted:
    """10 batches of 3 abnormal JPEGs (1-3 defects, txt beside) and 2 normal PNGs, all distinct units of one
    product; twins of 5 kinds and a copy of a defective picture filed as normal, each in another split's
    folder; two blank frames (one grey level) in two folders."""
    line = ProductLine(11, W, H)
    rng = np.random.default_rng(3)
    boxes: dict[Path, list[tuple[str, float, float, float, float]]] = {}
    for b in range(BATCHES):
        for k in range(3):
            unit = line.unit(defects=1 + (b + k) % 3)
            dx, dy = (int(v) for v in rng.integers(-6, 7, 2))
            path = save(line.shot(unit, (dx, dy)), root / "abn" / f"batch{b}" / f"a{b}{k}.jpg", quality=90)
            boxes[path] = [(lab, x1 + dx, y1 + dy, x2 + dx, y2 + dy) for lab, x1, y1, x2, y2 in unit.boxes]
            _txt(path, boxes[path])
        for k in range(2):
            save(line.shot(line.unit(defects=0)), root / "nor" / f"batch{b}" / f"n{b}{k}.png")
    sets: set[frozenset[str]] = set()
    kinds: dict[str, str] = {}
    for b, kind in enumerate(("reencode_q70", "brightness_3pct", "resize_90pct", "exif_rotated")):
        src = root / "abn" / f"batch{b}" / f"a{b}0.jpg"
        twin = plant_twin(src, kind, root / "abn" / f"batch{_elsewhere(b)}" / f"resent_{kind}")
        scale = 0.9 if kind == "resize_90pct" else 1.0  # boxes are drawn on the picture as displayed
        _txt(twin, [(lab, *(round(v * scale) for v in xyxy)) for lab, *xyxy in boxes[src]])
        sets.add(frozenset({f"abnormal/batch{b}/{src.name}", f"abnormal/batch{_elsewhere(b)}/{twin.name}"}))
        kinds[twin.name] = kind
    src = root / "nor" / "batch4" / "n40.png"  # a normal PNG exported again as JPEG
    twin = plant_twin(src, "png_jpeg", root / "nor" / f"batch{_elsewhere(4)}" / "resent_png")
    sets.add(frozenset({"normal/batch4/n40.png", f"normal/batch{_elsewhere(4)}/{twin.name}"}))
    kinds[twin.name] = "png_jpeg"
    src = root / "abn" / "batch5" / "a51.jpg"  # a defective picture filed again under normal_dir
    twin = plant_twin(src, "reencode_q70", root / "nor" / f"batch{_elsewhere(5)}" / HOSTILE)
    conflict = frozenset({"abnormal/batch5/a51.jpg", f"normal/batch{_elsewhere(5)}/{twin.name}"})
    sets.add(conflict)
    for b in (6, _elsewhere(6)):
        Image.new("RGB", (W, H), (90 + b, 90 + b, 90 + b)).save(root / "nor" / f"batch{b}" / "blank.png")
    return Planted(root, sets, conflict, kinds)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return build(tmp_path_factory.mktemp("twins"))


def config(planted: Planted, out: str, **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "abnormal_dir": str(planted.root / "abn"),
        "normal_dir": str(planted.root / "nor"),
        "out_dir": str(planted.root / out),
        "dataset_info_dir": str(planted.root / f"{out}-info"),
        "min_box_size": 4,
        "seed": SEED,
        "workers": 1,
        **overrides,
    }
    path = planted.root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _run(planted: Planted, out: str, **overrides: Any) -> dict[str, Any]:
    return prepare(load_data_config(config(planted, out, **overrides)), progress=False).report


def _split_of_images(out: Path) -> dict[str, set[str]]:
    """Image name (the sample_id's image part) -> the splits its samples are in."""
    found: dict[str, set[str]] = {}
    for sp in ("train", "val", "test"):
        for line in (out / f"regions_{sp}.jsonl").read_text(encoding="utf-8").splitlines():
            s = json.loads(line)
            found.setdefault(s["sample_id"].rpartition("#")[0], set()).add(s["split"])
            assert s["split"] == sp
    return found


def _sets(section: dict[str, Any]) -> set[frozenset[str]]:
    return {frozenset(m["image"] for m in s["images"]) for s in section["sets"]}


def test_group_keeps_every_twin_set_in_one_split(planted: Planted) -> None:
    report = _run(planted, "grouped", near_duplicates="group")
    section = report["near_duplicates"]
    assert section["mode"] == "group"
    assert set(planted.kinds.values()) == set(TWIN_KINDS)  # every way a twin arises is planted
    assert _sets(section) == planted.sets  # every twin found, no distinct picture paired
    assert section["rejected_pairs"] > 0  # the hash alone pairs alike units: the pixels kept them apart
    assert section["flat"] == 2  # the blank frames: nothing to compare, not a set
    assert section["sets_across_splits"] == len(planted.sets)  # planted so: each leaks by folder alone
    assert section["sets_split_now"] == 0
    splits = _split_of_images(planted.root / "grouped")
    for s in planted.sets:
        assert len(set().union(*(splits[name] for name in s))) == 1, s
    for s in section["sets"]:
        assert len(s["splits"]) == 1 and len(s["splits_alone"]) == 2
        assert {m["split"] for m in s["images"]} == set(s["splits"])
    # folders stay whole and keep their own key in the samples: a merged folder moves as a whole
    by_group: dict[str, set[str]] = {}
    for sp in ("train", "val", "test"):
        for line in (
            (planted.root / "grouped" / f"regions_{sp}.jsonl").read_text(encoding="utf-8").splitlines()
        ):
            s = json.loads(line)
            by_group.setdefault(s["group"], set()).add(sp)
    assert all(len(v) == 1 for v in by_group.values()) and set(by_group) == {f"batch{b}" for b in range(10)}
    assert section["merged_groups"] and section["images_moved"] > 0
    assert any("near_duplicates: group joined" in w and "adding pictures can move others" in w
               for w in report["warnings"])  # fmt: skip
    assert not any("span splits" in w for w in report["warnings"])
    _on_contract(planted.root / "grouped")


def _on_contract(out: Path) -> None:
    """The report passes the published JSON Schema and reads back through the model to the same text."""
    from jsonschema import Draft202012Validator

    from qwenvl_roi.schemas import get, schema_text

    text = (out / "prepare_report.json").read_text(encoding="utf-8")
    report = json.loads(text)
    validator = Draft202012Validator(json.loads(schema_text("prepare_report")))
    assert not [e.message for e in validator.iter_errors(report)]
    adapter = get("prepare_report").adapter()
    again = adapter.dump_python(adapter.validate_python(report), mode="json", exclude_unset=True)
    assert json.dumps(again, ensure_ascii=False, indent=2) + "\n" == text


def test_group_merge_comes_before_holdout(planted: Planted) -> None:
    """A holdout picture pulls its twin's folder into test with it."""
    report = _run(planted, "held", near_duplicates="group", holdout_list=["batch0/a00.jpg"])
    twin_set = next(s for s in report["near_duplicates"]["sets"] if "abnormal/batch0/a00.jpg" in
                    [m["image"] for m in s["images"]])  # fmt: skip
    assert twin_set["splits"] == ["test"]
    splits = _split_of_images(planted.root / "held")
    assert all(splits[m["image"]] == {"test"} for m in twin_set["images"])


def test_report_lists_the_sets_and_warns_without_moving_anything(planted: Planted) -> None:
    report = _run(planted, "reported", near_duplicates="report")
    _run(planted, "unchecked", near_duplicates="off")
    section = report["near_duplicates"]
    assert _sets(section) == planted.sets
    n = len(planted.sets)
    assert section["sets_across_splits"] == section["sets_split_now"] == n
    for s in section["sets"]:
        assert s["splits"] == s["splits_alone"] and len(s["splits"]) == 2 and s["across_splits"]
        assert all(m["split"] == m["split_alone"] for m in s["images"])
    assert section["merged_groups"] == {} and section["images_moved"] == 0
    assert any(w.startswith(f"{n} near-duplicate set(s) span splits (near_duplicates: report)")
               for w in report["warnings"])  # fmt: skip
    # listed only: the datasets are those of near_duplicates: off, byte for byte
    for sp in ("train", "val", "test"):
        name = f"regions_{sp}.jsonl"
        assert (planted.root / "reported" / name).read_bytes() == (
            planted.root / "unchecked" / name
        ).read_bytes()


def test_twin_labelled_normal_and_defective_is_a_label_conflict(planted: Planted) -> None:
    report = _run(planted, "conflict", near_duplicates="report")
    section = report["near_duplicates"]
    conflicting = [s for s in section["sets"] if s["label_conflict"]]
    assert [frozenset(m["image"] for m in s["images"]) for s in conflicting] == [planted.conflict]
    assert conflicting[0]["conflicts"] == ["normal_vs_abnormal"]
    assert {m["source"] for m in conflicting[0]["images"]} == {"abnormal", "normal"}
    assert section["label_conflicts"] == 1
    problems = [p for p in report["problems"] if p["kind"] == "near_duplicate_label_conflict"]
    assert len(problems) == 1 and report["problem_counts"]["near_duplicate_label_conflict"] == 1
    twin_file = f"{(planted.root / 'nor').as_posix()}/batch{_elsewhere(5)}/{HOSTILE}.jpg"
    assert problems[0]["file"] == twin_file
    assert f"{(planted.root / 'abn').as_posix()}/batch5/a51.jpg" in problems[0]["reason"]  # both files named
    assert "normal_vs_abnormal" in problems[0]["reason"]
    # the other twins agree: resized and EXIF-rotated copies carry the same boxes in their displayed frame
    assert all(not s["label_conflict"] for s in section["sets"] if s not in conflicting)
    _on_contract(planted.root / "conflict")


def test_strict_mode_stops_on_a_label_conflict(planted: Planted) -> None:
    from qwenvl_roi.converters.prepare import StrictModeError

    with pytest.raises(StrictModeError) as err:
        prepare(load_data_config(config(planted, "strict", strict=True)), progress=False)
    assert "near_duplicate_label_conflict" in {p.kind for p in err.value.problems}


def test_off_decodes_nothing(planted: Planted, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(planted, "switched", near_duplicates="report")
    cache = planted.root / "switched" / twin_check.CACHE_FILE
    assert cache.is_file()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("near_duplicates: off must not hash")

    monkeypatch.setattr(nd, "hash_pictures", refuse)
    monkeypatch.setattr(nd, "find_near_duplicates", refuse)
    report = _run(planted, "switched", near_duplicates="off")
    assert report["near_duplicates"] == {"mode": "off", "sets": []}
    assert not cache.exists()  # the earlier run's cache does not linger in the set
    assert not any("near-duplicate" in w for w in report["warnings"])
    assert "near_duplicate_label_conflict" not in report["problem_counts"]
    _on_contract(planted.root / "switched")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_rerun_is_byte_identical_and_decodes_nothing(
    planted: Planted, capsys: pytest.CaptureFixture[str]
) -> None:
    """convert twice into one out_dir (hashing in two worker processes): the same files byte for byte, and
    the second run takes every hash from the cache (the report carries no run-dependent counts; convert
    prints them). Rehashed by one process, the files are the same again."""
    path = config(planted, "again", near_duplicates="group", workers=2)
    assert main(["convert", "--config", str(path)]) == 0
    first = _files(planted.root / "again")
    assert twin_check.CACHE_FILE in first
    pictures = json.loads(first["prepare_report.json"])["near_duplicates"]["pictures"]
    assert f"near-duplicates (group): {pictures} pictures ({pictures} decoded, 0 from the cache)" in (
        capsys.readouterr().out
    )
    assert main(["convert", "--config", str(path)]) == 0
    assert f"{pictures} pictures (0 decoded, {pictures} from the cache)" in capsys.readouterr().out
    assert _files(planted.root / "again") == first
    result = prepare(load_data_config(path), progress=False)
    assert result.hashing == {"pictures": pictures, "decoded": 0, "from_cache": pictures}
    one = config(planted, "again", near_duplicates="group", workers=1)
    (planted.root / "again" / twin_check.CACHE_FILE).unlink()
    assert main(["convert", "--config", str(one)]) == 0
    assert f"({pictures} decoded, 0 from the cache)" in capsys.readouterr().out
    assert _files(planted.root / "again") == first


def test_preview_shows_the_sets_side_by_side_conflicts_first(planted: Planted) -> None:
    path = config(planted, "previewed", near_duplicates="report")
    assert main(["convert", "--config", str(path)]) == 0
    out = planted.root / "preview"
    assert main(["preview", "--config", str(path), "--out", str(out), "--limit", "5"]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    summary = json.loads((out / "preview.json").read_text(encoding="utf-8"))
    assert summary["near_duplicate_sets"] == summary["near_duplicate_sets_shown"] == len(planted.sets)
    start = page.index("<h2>Near-duplicate pictures")
    section = page[start : page.index("<h2>Annotation", start)]  # the samples follow under their headings
    heads = section.split("<h3>")[1:]
    assert len(heads) == len(planted.sets) and "label conflict: normal_vs_abnormal" in heads[0]
    assert all("label conflict" not in h for h in heads[1:])
    assert all("spans " in h for h in heads)  # report: every planted set spans two splits
    first = heads[0][: heads[0].index("</div>")]
    assert first.count("<figure>") == 2 and first.count("split <b>") == 2  # side by side, with splits
    assert "n_&lt;i&gt;&amp;amp;" in page and HOSTILE not in page  # names are text, never markup
    for name in planted.conflict:
        assert name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in first
    for src in {s.split('src="', 1)[1].split('"', 1)[0] for s in section.split("<img ")[1:]}:
        assert (out / src).is_file()
    assert page.index("<h2>Near-duplicate pictures") < page.index('<figure class="sample">')
    if summary["pages"] > 1:
        assert "Near-duplicate" not in (out / "page-2.html").read_text(encoding="utf-8")


def test_settings_are_validated_with_precise_errors(tmp_path: Path) -> None:
    defaults = DataConfig()
    assert defaults.near_duplicates == nd.DEFAULT_MODE == "report"
    assert defaults.near_duplicate_max_distance == nd.DEFAULT_MAX_DISTANCE == 8
    assert defaults.near_duplicate_min_correlation == nd.DEFAULT_MIN_CORRELATION == 0.9995
    assert defaults.workers is None
    path = tmp_path / "data.yaml"
    path.write_text("near_duplicates: off\n", encoding="utf-8")  # YAML reads an unquoted off as false
    assert load_data_config(path).near_duplicates == "off"
    for text, message in (
        ("near_duplicates: yes\n", "data.yaml:1: near_duplicates: Value error, true/on/yes says nothing"),
        (
            "near_duplicates: merge\n",
            "data.yaml:1: near_duplicates: Input should be 'group', 'report' or 'off'",
        ),
        ("near_duplicate_max_distance: 40\n", "near_duplicate_max_distance: Value error, must be 0..32 bits"),
        ("near_duplicate_max_distance: true\n", "near_duplicate_max_distance: Value error, must be a number"),
        (
            "near_duplicate_min_correlation: 0\n",
            "near_duplicate_min_correlation: Value error, must be a Pearson",
        ),
        ("near_duplicate_min_correlation: 1.5\n", "must be a Pearson correlation in (0, 1], got 1.5"),
        ("workers: 0\n", "data.yaml:1: workers: Value error, must be at least 1 process"),
    ):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConvertError) as err:
            load_data_config(path)
        assert message in str(err.value), (text, str(err.value))


def test_workers_are_started_only_for_enough_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwenvl_roi.converters.prepare import ImageEntry

    monkeypatch.setattr(nd, "default_workers", lambda: 8)
    small = [ImageEntry("normal", f"n{k}.png", "", 64, 64, path=f"/d/n{k}.png") for k in range(2000)]
    assert twin_check.auto_workers(small) == 1  # 2,000 thumbnails-sized pictures: under a second
    jpegs = [ImageEntry("normal", f"n{k}.jpg", "", 2048, 1536, path=f"/d/n{k}.jpg") for k in range(10_000)]
    assert twin_check.auto_workers(jpegs) == 8  # 10,000 photos: about 44 s of decoding, capped by the CPUs
    pngs = [ImageEntry("normal", f"n{k}.png", "", 2048, 1536, path=f"/d/n{k}.png") for k in range(200)]
    assert twin_check.auto_workers(pngs) == 5  # 200 PNGs: about 11 s


def test_blank_frames_are_never_paired(tmp_path: Path) -> None:
    """A thumbnail of one grey level has a constant hash and no correlation: blank frames of any brightness
    (and any number of them) form no set, and a textured picture among them is unaffected."""
    pictures = []
    for k, value in enumerate((0, 90, 91, 255)):
        path = tmp_path / f"blank{k}.png"
        Image.new("RGB", (64, 48), (value, value, value)).save(path)
        pictures.append(nd.Picture(str(path), path.name, f"g{k}"))
    textured = save(ProductLine(1, 96, 72).shot(ProductLine(1, 96, 72).unit(0)), tmp_path / "part.png")
    pictures.append(nd.Picture(str(textured), "part.png", "g9"))
    result = nd.find_near_duplicates(pictures, None, workers=1)
    assert result.sets == [] and result.flat == 4 and result.pictures == 5 and result.hash_pairs == 0


def test_a_picture_whose_pixels_cannot_be_decoded_is_a_problem(tmp_path: Path) -> None:
    """Its header reads, so prepare used to keep it silently and the trainer failed on it; the check decodes
    it, reports it by file and leaves it out of the search."""
    line = ProductLine(2, 160, 120)
    good = save(line.shot(line.unit(1)), tmp_path / "abn" / "b1" / "a.jpg")
    _txt(good, [("crack", 20, 20, 60, 60)])
    whole = save(line.shot(line.unit(0)), tmp_path / "nor" / "b2" / "cut.jpg").read_bytes()
    (tmp_path / "nor" / "b2" / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    cfg = {"abnormal_dir": str(tmp_path / "abn"), "normal_dir": str(tmp_path / "nor"),
           "out_dir": str(tmp_path / "out"), "min_box_size": 4}  # fmt: skip
    report = prepare(cfg, progress=False).report
    assert report["inputs"]["normal_images_used"] == 1  # in the datasets, as before
    assert report["near_duplicates"]["unreadable"] == 1 and report["near_duplicates"]["pictures"] == 1
    (problem,) = [p for p in report["problems"] if p["kind"] == "pixels_unreadable"]
    assert problem["file"] == f"{(tmp_path / 'nor').as_posix()}/b2/cut.jpg"
    assert "the trainer will fail on it" in problem["reason"]
