"""Issue #17: what a user owns is never lost, and a set of outputs lands whole or not at all.

Real folders and real failures: a project folder handed to `demo --out .`, a user's model folder handed to
`tiny-model`, a full disk (a small tmpfs in a private mount namespace), kill -9 in the middle of a run,
two `convert` runs racing on one dataset_info.json, a umask, a file name near the 255-byte limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

CLI = [sys.executable, "-m", "qwenvl_roi.cli"]


def cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, **kw)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> sha256 of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def user_project(root: Path) -> dict[str, str]:
    """A project laid out as the README shows: data/abnormal_root with an image and its txt."""
    d = root / "data" / "abnormal_root" / "b1"
    d.mkdir(parents=True)
    Image.new("RGB", (64, 48), (90, 90, 90)).save(d / "IMG_0001.jpg")
    (d / "IMG_0001.txt").write_text("IMG_0001.jpg;1;2;30;40;裂缝\n", encoding="utf-8")
    (root / "notes.md").write_text("mine\n", encoding="utf-8")
    return snapshot(root)


# --- folders we did not make --------------------------------------------------------------------------


def test_demo_refuses_a_project_folder_and_touches_nothing(tmp_path: Path) -> None:
    before = user_project(tmp_path)
    (tmp_path / "report.json").write_text("{}\n", encoding="utf-8")  # a name of the demo's outputs
    before = snapshot(tmp_path)
    for cwd, out in ((tmp_path, "."), (tmp_path.parent, str(tmp_path))):
        proc = cli("demo", "--quick", "--quiet", "--out", out, cwd=cwd)
        assert proc.returncode != 0
        assert "not empty and not made by qwenvl-roi demo" in proc.stderr and "data" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert snapshot(tmp_path) == before


def test_tiny_model_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    user_model = tmp_path / "Qwen2.5-VL-7B"
    user_model.mkdir()
    (user_model / "config.json").write_text('{"model_type": "qwen2_5_vl"}\n', encoding="utf-8")
    (user_model / "model-00001-of-00004.safetensors").write_bytes(b"weights")
    before = snapshot(user_model)
    proc = cli("tiny-model", "--out", str(user_model))
    assert proc.returncode == 2, proc.stderr
    assert "model-00001-of-00004.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(user_model) == before
    # an empty folder is fine, and so is rebuilding the tiny model the command made itself
    mine = tmp_path / "tiny"
    mine.mkdir()
    assert cli("tiny-model", "--out", str(mine)).returncode == 0
    assert json.loads((mine / ".qwenvl-roi.json").read_text())["made_by"] == "qwenvl-roi tiny-model"
    assert cli("tiny-model", "--out", str(mine), "--seed", "3").returncode == 0


def test_eval_preview_and_convert_refuse_foreign_folders(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x\n", encoding="utf-8")
    before = snapshot(foreign)
    cfg = make_config(out_dir=str(foreign))
    proc = cli("convert", "--config", str(cfg))
    assert proc.returncode == 2 and "thesis.tex" in proc.stderr and "Traceback" not in proc.stderr
    cfg = make_config()
    assert cli("convert", "--config", str(cfg)).returncode == 0
    out = tmp_path / "out"
    proc = cli("preview", "--config", str(cfg), "--out", str(foreign))
    assert proc.returncode == 2 and "thesis.tex" in proc.stderr
    gold = out / "regions_test.jsonl"
    proc = cli("eval", "--predictions", str(gold), "--gold", str(gold), "--out", str(foreign))
    assert proc.returncode == 2 and "thesis.tex" in proc.stderr
    # a folder made by another of our commands is not taken either
    proc = cli("eval", "--predictions", str(gold), "--gold", str(gold), "--out", str(out))
    assert proc.returncode == 2 and "qwenvl-roi convert" in proc.stderr
    assert snapshot(foreign) == before


def test_outputs_of_an_older_version_are_recognised(tmp_path: Path, files, make_config) -> None:
    """A converted folder from before the marker file (its prepare_report.json) is still ours to replace."""
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    cfg = make_config()
    assert cli("convert", "--config", str(cfg)).returncode == 0
    out = tmp_path / "out"
    (out / ".qwenvl-roi.json").unlink()
    (out / "my_notes.txt").write_text("kept\n", encoding="utf-8")  # a file the user added is kept
    assert cli("convert", "--config", str(cfg)).returncode == 0
    assert (out / ".qwenvl-roi.json").is_file() and (out / "my_notes.txt").read_text() == "kept\n"


# --- sets land whole -----------------------------------------------------------------------------------

SNAPSHOT_PY = """
import hashlib, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
files = sorted(p for p in root.rglob("*") if p.is_file())
digest = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
pathlib.Path(sys.argv[2]).write_text(json.dumps(digest))
"""
FULL_DISK_SCRIPT = """
set -e
mount -t tmpfs -o size={size}k tmpfs {mnt}
{python} -m qwenvl_roi.cli {first} > {log}/first.out 2>&1
{python} {log}/snapshot.py {target} {log}/before.json
{grow}
set +e
{python} -m qwenvl_roi.cli {second} > {log}/second.out 2> {log}/second.err
echo $? > {log}/second.rc
{python} {log}/snapshot.py {target} {log}/after.json
ls -a {mnt} > {log}/mnt.txt
"""


def _unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


needs_mount_ns = pytest.mark.skipif(
    not _unshare_available(), reason="needs a private mount namespace (unshare -m, root)"
)


def _run_full_disk(tmp_path: Path, size_kb: int, first: str, second: str, target: Path, grow: str) -> Path:
    log = tmp_path / "log"
    log.mkdir()
    (log / "snapshot.py").write_text(SNAPSHOT_PY, encoding="utf-8")
    script = FULL_DISK_SCRIPT.format(
        size=size_kb, mnt=tmp_path / "mnt", python=sys.executable, first=first, second=second,
        target=target, grow=grow, log=log,
    )  # fmt: skip
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout, proc.stderr, (log / "first.out").read_text())
    return log


def _noisy_exif_jpegs(folder: Path, n: int, seed: int) -> None:
    """EXIF-rotated noise JPEGs with a box each: every one needs an upright PNG copy in the image cache."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        exif = Image.Exif()
        exif[0x0112] = 6
        pixels = rng.integers(0, 255, (200, 260, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"r{i:03d}.jpg", quality=95, exif=exif)
        (folder / f"r{i:03d}.txt").write_text(f"r{i:03d}.jpg;10;10;80;90;crack\n", encoding="utf-8")


@needs_mount_ns
def test_full_disk_keeps_the_complete_old_set(tmp_path: Path, files, make_config) -> None:
    """convert on a 600 KB tmpfs: the first run fits; the second (80 more pictures that need copies) does
    not. The folder must hold the first run's set, file for file, and the error is one line, no traceback."""
    files.simple(tmp_path, n_abnormal=6, n_normal=6, folders=2)
    out = tmp_path / "mnt" / "prepared"
    (tmp_path / "mnt").mkdir()
    cfg = make_config(out_dir=str(out))
    more = tmp_path / "more"
    _noisy_exif_jpegs(more, 80, seed=1)
    log = _run_full_disk(
        tmp_path, 600, f"convert --config {cfg}", f"convert --config {cfg}", out,
        grow=f"cp -r {more} {tmp_path / 'abn' / 'more'}",
    )  # fmt: skip
    rc = int((log / "second.rc").read_text())
    err = (log / "second.err").read_text()
    assert rc == 2, err
    assert "no space left on the device" in err and "still holds the complete previous outputs" in err
    assert "Traceback" not in err
    before, after = (json.loads((log / n).read_text()) for n in ("before.json", "after.json"))
    assert "sft_train.json" in before and "regions_train.jsonl" in before
    assert after == before
    assert (log / "mnt.txt").read_text().split() == [".", "..", "prepared"]  # no staging left behind


@needs_mount_ns
def test_full_disk_during_eval_keeps_the_old_eval(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    _noisy_exif_jpegs(tmp_path / "abn" / "big", 40, seed=2)
    cfg = make_config(train_ratio=0.0, val_ratio=0.0, test_ratio=1.0)
    assert cli("convert", "--config", str(cfg)).returncode == 0
    gold = tmp_path / "out" / "regions_test.jsonl"
    preds = tmp_path / "preds.jsonl"
    rows = [json.loads(line) for line in gold.read_text(encoding="utf-8").splitlines()]

    def scored(g: dict) -> dict:
        score = 0.7 if g["positive"] else 0.2
        return {"id": g["id"], "score": score, "label": g["label"] or "crack", "abnormal": score >= 0.5,
                "greedy": g["label"] or "正常"}  # fmt: skip

    preds.write_text(
        "".join(
            json.dumps({"sample_id": r["sample_id"], "image": r["image"],
                        "regions": [scored(g) for g in r["regions"]], "image_line_score": 0.5,
                        "image_verdict": "正常"}) + "\n"
            for r in rows
        ),
        encoding="utf-8",
    )  # fmt: skip
    out = tmp_path / "mnt" / "eval"
    (tmp_path / "mnt").mkdir()
    base = f"eval --predictions {preds} --gold {gold} --threshold 0.5 --out {out}"
    log = _run_full_disk(
        tmp_path, 300, f"{base} --gallery-limit 0", f"{base} --gallery-format png --gallery-max-side 2048",
        out, grow="true",
    )  # fmt: skip
    err = (log / "second.err").read_text()
    assert int((log / "second.rc").read_text()) == 2, err
    assert "no space left on the device" in err and "Traceback" not in err
    before, after = (json.loads((log / n).read_text()) for n in ("before.json", "after.json"))
    assert "metrics.json" in before and after == before


def test_kill_9_midway_leaves_the_old_set_and_the_next_run_cleans_up(
    tmp_path: Path, files, make_config
) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    cfg = make_config()
    assert cli("convert", "--config", str(cfg)).returncode == 0
    out = tmp_path / "out"
    before = snapshot(out)
    _noisy_exif_jpegs(tmp_path / "abn" / "more", 60, seed=3)  # copies to write: a run long enough to kill
    proc = subprocess.Popen([*CLI, "convert", "--config", str(cfg)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    staging: list[Path] = []
    while time.monotonic() < deadline and not staging:
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.staging-")]
        time.sleep(0.005)
    assert staging, "the run never staged its outputs"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(out) == before
    assert cli("convert", "--config", str(cfg)).returncode == 0
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]
    assert len(files.regions(out)) > len(json.loads("[]")) and snapshot(out) != before


def test_prepare_alone_removes_the_datasets_it_outdates(tmp_path: Path, files, make_config) -> None:
    """prepare replaces the regions: the sharegpt files of the previous build-sft no longer match them."""
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    cfg = make_config()
    assert cli("convert", "--config", str(cfg)).returncode == 0
    out = tmp_path / "out"
    assert (out / "sft_train.json").is_file()
    assert cli("prepare", "--config", str(cfg)).returncode == 0
    assert not list(out.glob("sft_*.json")) and (out / "regions_train.jsonl").is_file()
    assert cli("build-sft", "--config", str(cfg)).returncode == 0
    assert (out / "sft_train.json").is_file()


def test_dataset_info_is_merged_under_a_lock(tmp_path: Path, files, make_config) -> None:
    """A second writer holding the lock (as a second convert would) makes convert wait, then merge."""
    import fcntl

    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    cfg = make_config()
    dinfo = tmp_path / "dinfo"
    dinfo.mkdir()
    info = dinfo / "dataset_info.json"
    info.write_text(json.dumps({"theirs_a": {"file_name": "a.json"}}) + "\n", encoding="utf-8")
    fd = os.open(dinfo, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        seen = json.loads(info.read_text(encoding="utf-8"))  # the other writer reads ...
        proc = subprocess.Popen([*CLI, "convert", "--config", str(cfg)], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (tmp_path / "out" / "sft_train.json").exists():
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""  # waiting for the lock
        seen["theirs_b"] = {"file_name": "b.json"}
        info.write_text(json.dumps(seen) + "\n", encoding="utf-8")  # ... and writes back what it read
    finally:
        os.close(fd)
    assert proc.wait(timeout=60) == 0
    merged = json.loads(info.read_text(encoding="utf-8"))
    assert {"theirs_a", "theirs_b", "roi_train", "roi_val", "roi_test"} <= set(merged)


def test_outputs_respect_the_umask(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    cfg = make_config()
    proc = subprocess.run(
        ["sh", "-c", 'umask 027 && exec "$@"', "sh", *CLI, "convert", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert oct((out / "sft_train.json").stat().st_mode & 0o777) == oct(0o640)
    assert oct(out.stat().st_mode & 0o777) == oct(0o750)
    assert oct((tmp_path / "dinfo" / "dataset_info.json").stat().st_mode & 0o777) == oct(0o640)
    proc = subprocess.run(
        ["sh", "-c", 'umask 027 && exec "$@"', "sh", *CLI, "tiny-model", "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "m").iterdir()} == {oct(0o640)}


@pytest.mark.parametrize("name", ["a" * 250 + ".json", "缺" * 83 + ".json"])
def test_atomic_writes_work_for_names_near_the_limit(tmp_path: Path, name: str) -> None:
    from qwenvl_roi.fileio import write_text

    assert len(os.fsencode(name)) <= 255
    write_text(tmp_path / name, "ok\n")
    assert (tmp_path / name).read_text() == "ok\n"
    assert os.listdir(tmp_path) == [name]


def test_converted_set_names_no_staging_folder(tmp_path: Path, files, make_config) -> None:
    """Paths inside the outputs are computed for out_dir, not for the staging folder they were written in,
    even when dataset_info lives inside out_dir."""
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    _noisy_exif_jpegs(tmp_path / "abn" / "rot", 3, seed=4)
    cfg_path = tmp_path / "data.yaml"
    cfg = yaml.safe_load(textwrap.dedent(f"""
        abnormal_dir: {tmp_path / "abn"}
        normal_dir: {tmp_path / "nor"}
        out_dir: {tmp_path / "out"}
        dataset_info_dir: {tmp_path / "out" / "dataset_info"}
    """))  # fmt: skip
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert cli("convert", "--config", str(cfg_path)).returncode == 0
    out = tmp_path / "out"
    assert (out / "dataset_info" / "dataset_info.json").is_file()
    for p in out.rglob("*.json*"):
        assert ".staging-" not in p.read_text(encoding="utf-8"), p
    copies = list((out / "image_cache").rglob("*.png"))
    assert len(copies) == 3


# --- found by a red-team pass as a user with real folders ------------------------------------------------


def test_files_added_while_a_set_is_staged_are_kept(tmp_path: Path) -> None:
    from qwenvl_roi.fileio import write_text
    from qwenvl_roi.outputs import staged

    out = tmp_path / "out"
    with staged(out, "eval") as stage:  # commands replace files (atomic writes): staging holds hard links
        write_text(stage / "metrics.json", "{}\n")
    with staged(out, "eval") as stage:
        write_text(stage / "metrics.json", '{"new": 1}\n')
        (out / "my_notes.txt").write_text("written while the command ran\n")  # the user, meanwhile
        (out / "metrics.json").write_text("the user's edit loses to the new set\n")
    assert (out / "my_notes.txt").read_text() == "written while the command ran\n"
    assert (out / "metrics.json").read_text() == '{"new": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_strict_failure_keeps_the_previous_set(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    cfg = make_config()
    assert cli("convert", "--config", str(cfg)).returncode == 0
    out = tmp_path / "out"
    before = snapshot(out)
    with (tmp_path / "abn" / "batch0" / "a000.txt").open("a") as fh:
        fh.write("a000.jpg;4O,10,80,80;crack\n")
    proc = cli("prepare", "--config", str(cfg), "--strict")
    assert proc.returncode == 1 and "prepare_report.strict.json" in proc.stderr
    after = snapshot(out)
    assert json.loads((out / "prepare_report.strict.json").read_text())["ok"] is False
    del after["prepare_report.strict.json"]
    assert after == before  # regions, sft files, meta, report and image cache untouched
    assert cli("convert", "--config", str(cfg)).returncode == 0  # a passing run removes the strict report
    assert not (out / "prepare_report.strict.json").exists()


def test_outputs_of_older_versions_are_told_by_content_not_name(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    model = tmp_path / "model"  # an exported model with the dataset_meta.json eval --model-dir puts there
    model.mkdir()
    (model / "config.json").write_text("{}\n")
    (model / "dataset_meta.json").write_text('{"labels": ["crack"]}\n')
    before = snapshot(model)
    proc = cli("convert", "--config", str(make_config(out_dir=str(model))))
    assert proc.returncode == 2 and "not made by qwenvl-roi convert" in proc.stderr
    assert snapshot(model) == before
    mine = tmp_path / "mine"  # a user's own metrics.json and gallery
    (mine / "gallery").mkdir(parents=True)
    (mine / "metrics.json").write_text('{"acc": 0.9}\n')
    (mine / "gallery" / "fp_0001.jpg").write_bytes(b"x")
    before = snapshot(mine)
    assert cli("convert", "--config", str(make_config())).returncode == 0
    gold = tmp_path / "out" / "regions_test.jsonl"
    proc = cli("eval", "--predictions", str(gold), "--gold", str(gold), "--out", str(mine))
    assert proc.returncode == 2 and "not made by qwenvl-roi eval" in proc.stderr
    assert snapshot(mine) == before


def test_a_symlinked_output_folder_is_written_where_it_points(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    (tmp_path / "big" / "prepared").mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "big" / "prepared")
    for _ in range(2):
        assert cli("convert", "--config", str(make_config())).returncode == 0
    assert link.is_symlink() and (tmp_path / "big" / "prepared" / "sft_train.json").is_file()
    assert not [p for p in tmp_path.rglob(".*staging*")]


def test_dataset_info_problems_stop_before_the_work(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    dinfo = tmp_path / "dinfo"
    dinfo.mkdir()
    (dinfo / "dataset_info.json").write_bytes('{"中文": {"file_name": "zh.json"}}'.encode("gbk"))
    proc = cli("convert", "--config", str(make_config()))
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    (dinfo / "dataset_info.json").unlink()
    dinfo.rmdir()
    dinfo.write_text("a file\n")
    proc = cli("convert", "--config", str(make_config()))
    assert proc.returncode == 2 and "not a folder" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_current_folder_is_not_replaced(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    work = tmp_path / "work"
    work.mkdir()
    proc = cli("convert", "--config", str(make_config(out_dir=".")), cwd=work)
    assert proc.returncode == 2 and "is the current folder" in proc.stderr
    assert list(work.iterdir()) == []


@needs_mount_ns
def test_a_read_only_parent_is_one_clear_line(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    assert cli("convert", "--config", str(make_config())).returncode == 0
    ro = tmp_path / "ro"
    ro.mkdir()
    gold = tmp_path / "out" / "regions_test.jsonl"
    py = f"{sys.executable} -m qwenvl_roi.cli"
    ro_cfg = tmp_path / "ro.yaml"
    ro_cfg.write_text(make_config(out_dir=str(ro / "out")).read_text())
    commands = {
        "convert": f"convert --config {ro_cfg}",
        "eval": f"eval --predictions {gold} --gold {gold} --out {ro / 'ev'}",
        "preview": f"preview --config {make_config()} --out {ro / 'pv'}",
        "tiny-model": f"tiny-model --out {ro / 'm'}",
        "scan-labels": f"scan-labels --abnormal-dir {tmp_path / 'abn'} --out {ro / 'labels.json'}",
    }
    script = f"mount --bind -o ro {ro} {ro}\n" + "".join(
        f"{py} {args} 2> {tmp_path / name}.err; echo $? > {tmp_path / name}.rc\n"
        for name, args in commands.items()
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in commands:
        err = (tmp_path / f"{name}.err").read_text()
        assert (tmp_path / f"{name}.rc").read_text().strip() == "2", (name, err)
        assert "Traceback" not in err and err.strip().count("\n") == 0, (name, err)
        assert "not writable" in err or "Read-only" in err, (name, err)


def test_our_own_outputs_inside_the_data_are_not_data(tmp_path: Path, files, make_config) -> None:
    """out_dir and a preview inside normal_dir: their copies and thumbnails of defect pictures are not
    normal pictures; a normal_dir that holds abnormal_dir (or links into it) does not read it as normal."""
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    cfg = make_config(out_dir=str(tmp_path / "nor" / "prepared"))
    _noisy_exif_jpegs(tmp_path / "abn" / "rot", 2, seed=5)  # copies land in out_dir/image_cache
    assert cli("convert", "--config", str(cfg)).returncode == 0
    assert cli("preview", "--config", str(cfg), "--out", str(tmp_path / "nor" / "pv")).returncode == 0
    assert cli("convert", "--config", str(cfg)).returncode == 0
    rows = files.regions(tmp_path / "nor" / "prepared")
    assert not [r for r in rows if "/prepared/" in r["sample_id"] or "/pv/" in r["sample_id"]]
    report = json.loads((tmp_path / "nor" / "prepared" / "prepare_report.json").read_text())
    assert report["problem_counts"].get("output_folder_skipped") == 2  # prepared and pv, each named
    (tmp_path / "nor" / "linked").symlink_to(tmp_path / "abn" / "batch1")
    cfg = make_config(normal_dir=str(tmp_path), out_dir=str(tmp_path / "out2"))  # holds abn/ itself too
    proc = cli("convert", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    rows = files.regions(tmp_path / "out2")
    normal = [r["sample_id"] for r in rows if r["source"] == "normal"]
    assert normal and not [n for n in normal if "/abn/" in n or "/linked/" in n], normal
    assert all(n.startswith("normal/nor/") for n in normal)


def test_preview_keeps_files_the_user_added(tmp_path: Path, files, make_config) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=2)
    cfg = make_config()
    assert cli("convert", "--config", str(cfg)).returncode == 0
    pv = tmp_path / "pv"
    assert cli("preview", "--config", str(cfg), "--out", str(pv)).returncode == 0
    (pv / "my_notes.txt").write_text("n\n")
    assert cli("preview", "--config", str(cfg), "--out", str(pv)).returncode == 0
    assert (pv / "my_notes.txt").read_text() == "n\n" and (pv / "index.html").is_file()


def test_scan_labels_never_replaces_a_picture_it_did_not_draw(tmp_path: Path, files) -> None:
    files.simple(tmp_path, n_abnormal=4, n_normal=0, folders=2)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(photo)
    before = photo.read_bytes()
    proc = cli("scan-labels", "--abnormal-dir", str(tmp_path / "abn"), "--out", str(tmp_path / "photo.json"))
    assert proc.returncode == 2 and "was not drawn by scan-labels" in proc.stderr
    assert photo.read_bytes() == before and not (tmp_path / "photo.json").exists()
    for out in (tmp_path / "labels.png", tmp_path / "abn"):
        proc = cli("scan-labels", "--abnormal-dir", str(tmp_path / "abn"), "--out", str(out))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    ok = tmp_path / "labels.json"
    for _ in range(2):  # its own chart is replaced on a rerun
        assert cli("scan-labels", "--abnormal-dir", str(tmp_path / "abn"), "--out", str(ok)).returncode == 0
