"""`qwenvl-roi predict --images --boxes`: detector boxes in (JSONL and txt), bad lines reported, resumable
after kill -9, sharded under torchrun, always the same file as one uninterrupted process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from qwenvl_roi.cli import main
from qwenvl_roi.inference.detections import split_boxes


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _samples(root: Path) -> list[dict]:
    return _rows(root / "regions_test.jsonl")


def _predict(*args: str) -> int:
    return main(["predict", *args, "--no-progress"])


def test_boxes_jsonl_and_txt_equal_the_regions_path(
    merged_model: Path, scored_dataset: Path, tmp_path: Path
) -> None:
    samples = _samples(scored_dataset)
    common = ["--model", str(merged_model), "--batch-size", "3"]
    ref = tmp_path / "regions_pred.jsonl"
    assert _predict(*common, "--regions", str(scored_dataset / "regions_test.jsonl"), "--out", str(ref)) == 0
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(
        "".join(
            json.dumps(
                {
                    "image": Path(s["image"]).relative_to(scored_dataset).as_posix(),
                    "boxes": [r["box"] for r in s["regions"]],
                    "id": s["sample_id"],
                }
            )
            + "\n"
            for s in samples
        )
    )
    txt = tmp_path / "txt"
    for s in samples:  # the annotation format, without a label column (one box per line, or two)
        rel = Path(s["image"]).relative_to(scored_dataset).with_suffix(".txt")
        (txt / rel).parent.mkdir(parents=True, exist_ok=True)
        name = Path(s["image"]).name
        lines = [f"{name}；{'，'.join(map(str, r['box']))}" for r in s["regions"]]
        (txt / rel).write_text("\n".join(lines) + "\n", encoding="utf-8")
    outs = {}
    for form, source in (("jsonl", boxes), ("txt", txt)):
        outs[form] = tmp_path / f"{form}.jsonl"
        rc = _predict(
            *common, "--meta", str(scored_dataset), "--images", str(scored_dataset), "--boxes", str(source),
            "--out", str(outs[form]),
        )  # fmt: skip
        assert rc == 0
    reference = _rows(ref)
    for form, path in outs.items():
        rows = _rows(path)
        if form == "txt":  # every image under --images has a row; the train/val ones, without a txt, no box
            others = [r for r in rows if not r["boxes"]]
            assert len(others) == len(list((scored_dataset / "images").iterdir())) - len(samples)
            assert all(r["prompts"] == 0 and r["image_score"] is None for r in others)
            rows = [r for r in rows if r["boxes"]]
        assert len(rows) == len(samples)
        for s, a, b in zip(samples, reference, rows, strict=True):
            want_id = (
                s["sample_id"] if form == "jsonl" else Path(s["image"]).relative_to(scored_dataset).as_posix()
            )
            assert b["id"] == want_id and b["prompts"] == 1 and b["problems"] == []
            # identical, not close: the same prompts in the same batches
            assert [x["score"] for x in b["boxes"]] == [r["score"] for r in a["regions"]], form
            assert [x["label"] for x in b["boxes"]] == [r["label"] for r in a["regions"]]
            assert [x["greedy"] for x in b["boxes"]] == [r["greedy"] for r in a["regions"]]
            assert [x["box"] for x in b["boxes"]] == [r["box"] for r in s["regions"]]
            assert b["image_line_score"] == a["image_line_score"]
            assert b["image_score"] == max(r["score"] for r in a["regions"])
    assert not (tmp_path / "jsonl.jsonl.partial").exists()


def test_bad_lines_are_reported_and_the_rest_scored(
    merged_model: Path, scored_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    s0, s1 = _samples(scored_dataset)[:2]
    rel0 = Path(s0["image"]).relative_to(scored_dataset).as_posix()
    rotated = tmp_path / "rotated.jpg"  # stored 60x40, shown 40x60 (EXIF orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 40), (120, 120, 120)).save(rotated, exif=exif)
    truncated = tmp_path / "truncated.png"
    full = Path(s1["image"]).read_bytes()
    truncated.write_bytes(full[: len(full) * 2 // 3])
    lines = [
        json.dumps({"image": rel0, "boxes": [s0["regions"][0]["box"], [5, 5, "x", 9], [-50, -50, -10, -10]]}),
        "{not json",
        json.dumps({"image": "missing.png", "boxes": [[1, 2, 3, 4]]}),
        json.dumps({"image": str(rotated), "boxes": [[2, 2, 38, 58], [30, 50, 90, 90]], "id": "rot"}),
        json.dumps({"image": rel0, "boxes": []}),  # the same id again
        json.dumps({"image": Path(s1["image"]).relative_to(scored_dataset).as_posix(), "boxes": []}),
        json.dumps({"image": str(truncated), "boxes": [[1, 1, 20, 20]]}),  # broken after its header
    ]
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["--model", str(merged_model), "--meta", str(scored_dataset), "--images", str(scored_dataset)]
    assert _predict(*args, "--boxes", str(boxes), "--out", str(out), "--strict") == 2
    err = capsys.readouterr().err
    assert f"{boxes}:2: not valid JSON" in err and f"{boxes}:3: image" in err and "not found" in err
    assert f"{boxes}:1: box 2 [5, 5, 'x', 9] is not 4 finite numbers" in err
    assert f"{boxes}:1: box 3: box [-50, -50, -10, -10] lies outside the image" in err
    assert not out.exists()
    assert _predict(*args, "--boxes", str(boxes), "--out", str(out)) == 0
    rows = _rows(out)
    ids = [rel0, "<line 2>", "missing.png", "rot", rel0, rows[5]["id"], str(truncated)]
    assert [r["id"] for r in rows] == ids
    assert f"{boxes}:7: cannot decode image {truncated}" in rows[6]["error"]  # the rest of its batch scored
    first = rows[0]
    assert first["boxes"][0]["score"] is not None and first["boxes"][1]["score"] is None
    assert first["boxes"][1]["box"] is None and "lies outside" in first["boxes"][2]["note"]
    assert "error" in rows[1] and "error" in rows[2] and "already given at" in rows[4]["error"]
    rot = rows[3]  # boxes in the displayed frame; the second is clipped to it
    assert (rot["width"], rot["height"]) == (40, 60)
    assert rot["boxes"][0]["score"] is not None and "clipped to the image 40x60" in rot["boxes"][1]["note"]
    assert any("EXIF orientation 6" in p for p in rot["problems"])
    assert rows[5]["boxes"] == [] and rows[5]["image_score"] is None


def test_txt_folder_pairs_as_the_converters_do(tmp_path: Path) -> None:
    """Dotted and upper-case names, hidden files, numeric class-id columns, problems with file:line."""
    from qwenvl_roi.inference.detections import check, read_jobs

    images, txt = tmp_path / "images" / "line1", tmp_path / "txt" / "line1"
    images.mkdir(parents=True)
    txt.mkdir(parents=True)
    for name in ("2024.01.05_001.png", "2024.01.png", "UP.PNG", "twin.png", "twin.jpg"):
        Image.new("RGB", (60, 40)).save(images / name)
    dated_lines = "2024.01.05_001.png；1,2,30,20\n\nx；5;5;9;9；0\n"
    (txt / "2024.01.05_001.txt").write_text(dated_lines, encoding="utf-8")
    (txt / "UP.TXT").write_text("UP.PNG;1 1 10 10\nUP.PNG;50,30,90,90\n", encoding="utf-8")
    (txt / ".hidden.txt").write_text("junk\n", encoding="utf-8")
    (txt / "twin.txt").write_text("twin.png;1,1,5,5\n", encoding="utf-8")
    jobs = {job.image: job for job in read_jobs(tmp_path / "txt", tmp_path / "images")}
    assert sorted(jobs) == ["line1/2024.01.05_001.png", "line1/2024.01.png", "line1/UP.PNG", "line1/twin"]
    no_txt = jobs["line1/2024.01.png"]  # an image without a txt: its row, no boxes (a detector found nothing)
    assert no_txt.error is None and no_txt.boxes == [] and no_txt.path == images / "2024.01.png"
    dated = jobs["line1/2024.01.05_001.png"]
    assert dated.error is None and dated.path == images / "2024.01.05_001.png"
    assert dated.boxes == [[1, 2, 30, 20]]  # the line of another file name is reported, not scored here
    assert any(":3:" in p and "x" in p for p in dated.problems)
    up = jobs["line1/UP.PNG"]
    assert up.boxes == [[1, 1, 10, 10], [50, 30, 90, 90]]
    checked = check(up).job
    where = f"{txt / 'UP.TXT'}:2: box 2:"
    assert any(p.startswith(where) and "clipped" in p for p in checked.problems), checked.problems
    assert not any(p.startswith(where) for p in up.problems)  # check() leaves its argument as it was
    assert "several images" in jobs["line1/twin"].error


def test_numeric_last_column_is_a_label_when_the_coordinates_need_it() -> None:
    from qwenvl_roi.converters.parse import LineParser

    parser = LineParser(label_optional=True)
    assert parser.split_columns("a.png;10;10;50;50;0") == ("a.png", "10;10;50;50", "0")
    assert parser.split_columns("a.png;10;10;50;50") == ("a.png", "10;10;50;50", "")
    assert parser.split_columns("a.png；1,2,3,4；5,6,7,8") == ("a.png", "1,2,3,4；5,6,7,8", "")


def test_each_rank_scores_on_its_own_gpu() -> None:
    from qwenvl_roi.inference.distributed import Ranks

    rank = Ranks(rank=3, world=8, local_rank=3)
    assert [rank.device(d) for d in ("cuda", "cuda:5", "cpu")] == ["cuda:3", "cuda:5", "cpu"]
    assert Ranks().device("cuda") == "cuda"


def test_split_boxes_keeps_order_and_balances() -> None:
    assert [list(r) for r in split_boxes(19, 8)] == [
        list(range(0, 7)),
        list(range(7, 13)),
        list(range(13, 19)),
    ]
    assert [list(r) for r in split_boxes(8, 8)] == [list(range(8))]
    assert split_boxes(0, 8) == []


def _env(tmp: Path) -> dict[str, str]:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        DISABLE_VERSION_CHECK="1",
        PYTHONUNBUFFERED="1",
    )


@pytest.fixture(scope="module")
def many_boxes(scored_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test images 12 times over (distinct ids), one image with more boxes than a prompt holds."""
    path = tmp_path_factory.mktemp("many") / "boxes.jsonl"
    rows = []
    for rep in range(12):
        for s in _samples(scored_dataset):
            boxes = [r["box"] for r in s["regions"]]
            if not rows:
                boxes = boxes * 5  # 10-20 boxes: more than max_boxes_per_image (8), so two or three prompts
            rows.append({"image": s["image"], "boxes": boxes, "id": f"{rep}/{s['sample_id']}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cmd(model: Path, meta: Path, boxes: Path, out: Path) -> list[str]:
    return [
        "predict", "--model", str(model), "--meta", str(meta), "--boxes", str(boxes), "--out", str(out),
        "--batch-size", "2", "--no-progress",
    ]  # fmt: skip


@pytest.mark.slow
def test_kill_and_rerun_gives_the_uninterrupted_file(
    merged_model: Path, scored_dataset: Path, many_boxes: Path, tmp_path: Path
) -> None:
    env = _env(tmp_path)
    whole = tmp_path / "whole.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi", *_cmd(merged_model, scored_dataset, many_boxes, whole)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _rows(whole)[0]["prompts"] >= 2  # the long box list was split
    out = tmp_path / "killed.jsonl"
    run = subprocess.Popen(
        [sys.executable, "-m", "qwenvl_roi", *_cmd(merged_model, scored_dataset, many_boxes, out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    partial = tmp_path / "killed.jsonl.partial"
    deadline = time.time() + 300
    while time.time() < deadline:
        parts = list(partial.glob("part-*.jsonl")) if partial.is_dir() else []
        if parts and parts[0].read_bytes().count(b"\n") >= 10:  # header + a few batches
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not out.exists() and partial.is_dir()  # killed mid-run: only partial results
    part = next(partial.glob("part-*.jsonl"))
    with part.open("ab") as fh:  # a write torn by the kill
        fh.write(b'{"batch": 57, "row": {"id": "torn')
    other = subprocess.run(  # other numbers (bf16) must not be mixed into the fp32 file
        [sys.executable, "-m", "qwenvl_roi", *_cmd(merged_model, scored_dataset, many_boxes, out),
         "--dtype", "bfloat16"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert other.returncode == 2 and "differs in: dtype" in other.stderr, other.stderr[-3000:]
    rerun = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi", *_cmd(merged_model, scored_dataset, many_boxes, out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming:" in rerun.stdout
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists()


@pytest.mark.slow
def test_two_ranks_under_torchrun_give_the_one_process_file(
    merged_model: Path, scored_dataset: Path, many_boxes: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    env = _env(tmp_path)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "qwenvl_roi", *_cmd(merged_model, scored_dataset, many_boxes, one)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    port = free_port()  # other test workers may run torchrun at the same time
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "qwenvl_roi",
         *_cmd(merged_model, scored_dataset, many_boxes, two)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert two.read_bytes() == one.read_bytes()
