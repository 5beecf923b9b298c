"""`predict` refuses what it could only fail on at the end, before the model loads (minutes for a 7B):
an ``--out`` it cannot write, and boxes that are not finite numbers (``Infinity``, ``NaN``, an integer too
big for a float) as their line's error, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from qwenvl_roi.cli import main

BIG = "9" * 400


def _regions(root: Path, box: str = "[4, 4, 20, 20]") -> Path:
    image = root / "a.png"
    Image.new("RGB", (64, 48), (120, 120, 120)).save(image)
    path = root / "regions_test.jsonl"
    rest = '"split": "test", "group": "g", "source": "abnormal", "positive_region_ids": ["R1"]'
    good = (
        f'{{"sample_id": "a#0", "image": "{image}", "width": 64, "height": 48, '
        f'"regions": [{{"id": "R1", "box": [4, 4, 20, 20], "label": "crack", "positive": true}}], {rest}}}'
    )
    bad = (
        f'{{"sample_id": "a#1", "image": "{image}", "width": 64, "height": 48, '
        f'"regions": [{{"id": "R1", "box": {box}, "label": "crack", "positive": true}}], {rest}}}\n'
    )
    path.write_text(good + "\n" + bad, encoding="utf-8")
    return path


def test_out_under_a_regular_file_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    regions = _regions(tmp_path)
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the output folder should be\n")
    missing_model = tmp_path / "no-model-here"  # the model is never reached
    for form in (["--regions", str(regions)], ["--boxes", str(tmp_path / "boxes.jsonl")]):
        (tmp_path / "boxes.jsonl").write_text(
            json.dumps({"image": "a.png", "boxes": [[4, 4, 20, 20]]}) + "\n"
        )
        out = blocker / "eval" / "pred.jsonl"
        rc = main(["predict", "--model", str(missing_model), *form, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "--out" in err and str(blocker) in err and "not a folder" in err, err
        assert str(missing_model) not in err
    # an existing folder given as the predictions file
    rc = main(["predict", "--model", str(missing_model), "--regions", str(regions), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--out" in err and "is a folder" in err, err


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare for a ro mount"
)
def test_out_on_a_read_only_mount_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    regions = _regions(tmp_path)
    ro = tmp_path / "ro"
    (ro / "existing").mkdir(parents=True)
    script = (
        f"mount --bind -o ro {ro} {ro} || exit 99; "
        f"exec {sys.executable} -m qwenvl_roi predict --model {tmp_path / 'no-model-here'} "
        f"--regions {regions} --out {ro}/existing/pred.jsonl --no-progress; "
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    if proc.returncode == 99:
        pytest.skip(f"cannot bind-mount read-only here: {proc.stderr[-500:]}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--out" in proc.stderr and f"{ro}/existing" in proc.stderr, proc.stderr[-3000:]
    assert "read-only" in proc.stderr.lower() and "no-model-here" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "box",
    ["[4, 4, Infinity, 20]", "[NaN, 4, 20, 20]", f"[4, 4, {BIG}, 20]"],
    ids=["inf", "nan", "400-digit"],
)
def test_regions_boxes_that_are_not_finite_are_their_lines_error(
    tmp_path: Path, box: str, capsys: pytest.CaptureFixture
) -> None:
    regions = _regions(tmp_path, box)
    out = tmp_path / "pred.jsonl"
    rc = main(
        ["predict", "--model", str(tmp_path / "no-model"), "--regions", str(regions), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"{regions}:2:" in err and "finite" in err, err


def test_detector_boxes_that_are_not_finite_are_their_lines_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.new("RGB", (64, 48), (120, 120, 120)).save(tmp_path / "a.png")
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(
        '{"image": "a.png", "boxes": [[4, 4, 20, 20], [1, 2, ' + BIG + ", 8], [1, 2, Infinity, 8], "
        "[NaN, 1, 2, 3]]}\n",
        encoding="utf-8",
    )
    out = tmp_path / "pred.jsonl"
    argv = [
        "predict",
        "--model",
        str(tmp_path / "no-model"),
        "--boxes",
        str(boxes),
        "--strict",
        "--out",
        str(out),
    ]
    rc = main(argv)  # --strict: every input problem is listed and nothing is scored (no model needed)
    err = capsys.readouterr().err
    assert rc == 2, err
    for k in (2, 3, 4):
        assert f"{boxes}:1: box {k} " in err and "not 4 finite numbers" in err, err
    assert "3 input problem(s)" in err and not out.exists()


def test_a_windows_path_in_jsonl_finds_its_image_as_in_coco(tmp_path: Path) -> None:
    """A Windows tool writes "line3\\0001.png": the COCO reader takes it as line3/0001.png, and so does a
    JSONL line now (before: "image not found"). A name that really holds a backslash is taken as written."""
    from qwenvl_roi.inference.detections import check, read_jobs

    (tmp_path / "line3").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "line3" / "0001.png")
    Image.new("RGB", (32, 24)).save(tmp_path / "odd\\name.png")  # a legal POSIX name
    boxes = tmp_path / "boxes.jsonl"
    lines = [{"image": "line3\\0001.png", "boxes": [[1, 1, 9, 9]]}, {"image": "odd\\name.png", "boxes": []}]
    boxes.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    win, odd = (check(job).job for job in read_jobs(boxes, tmp_path))
    assert (
        win.error is None and win.path == tmp_path / "line3" / "0001.png" and win.image == "line3\\0001.png"
    )
    assert odd.error is None and odd.path == tmp_path / "odd\\name.png"


def test_out_is_never_one_of_the_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--out` naming the regions file, the boxes file or a file inside a txt folder of boxes would replace
    what the predictions are made from: refused before the model loads, nothing touched."""
    regions = _regions(tmp_path)
    boxes = tmp_path / "det.jsonl"
    boxes.write_text('{"image": "a.png", "boxes": [[4, 4, 20, 20]]}\n')
    folder = tmp_path / "txts"
    folder.mkdir()
    (folder / "a.txt").write_text("a.png;4;4;20;20\n")
    before = {p: p.read_bytes() for p in (regions, boxes, folder / "a.txt")}
    model = str(tmp_path / "no-model")
    for form, out in (
        (["--regions", str(regions)], regions),
        (["--boxes", str(boxes), "--images", str(tmp_path)], boxes),
        (["--boxes", str(folder), "--images", str(tmp_path)], folder / "a.txt"),
        (["--boxes", str(folder), "--images", str(tmp_path)], folder / "sub" / "pred.jsonl"),
    ):
        assert main(["predict", "--model", model, *form, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "would replace what they are made from" in err, err
    assert {p: p.read_bytes() for p in before} == before


def test_a_second_job_on_the_same_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two `predict --boxes` jobs writing one --out: the second stops at once (before its model loads)
    instead of mixing its batches in or removing the partial results the first still needs."""
    from qwenvl_roi.inference import resumable

    Image.new("RGB", (64, 48), (120, 120, 120)).save(tmp_path / "a.png")
    boxes = tmp_path / "det.jsonl"
    boxes.write_text('{"image": "a.png", "boxes": [[4, 4, 20, 20]]}\n')
    out = tmp_path / "pred.jsonl"
    argv = ["predict", "--model", str(tmp_path / "no-model"), "--boxes", str(boxes), "--out", str(out)]
    with resumable.exclusive(out, 0):  # the first job, running
        assert main(argv) == 2
        assert "another predict job is writing it" in capsys.readouterr().err
    assert main(argv) == 2  # alone, it gets as far as the missing model
    assert "another predict job" not in capsys.readouterr().err


def test_txt_files_differing_only_in_case_are_one_ambiguous_image(tmp_path: Path) -> None:
    from qwenvl_roi.inference.detections import read_jobs

    Image.new("RGB", (64, 48)).save(tmp_path / "case.jpg")
    (tmp_path / "case.txt").write_text("case.jpg;1;1;20;20\n")
    (tmp_path / "CASE.TXT").write_text("case.jpg;5;5;30;30\n")
    jobs = read_jobs(tmp_path, tmp_path)
    assert len(jobs) == 1 and jobs[0].error and "several txt files match" in jobs[0].error
