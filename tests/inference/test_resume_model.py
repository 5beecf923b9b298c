"""A resumed `predict --boxes` knows its model by the bytes of its weights, not by its path: a model rebuilt
(retrained) in the same folder must not have its scores mixed with the old model's partial results.

Two tiny models of different seeds have the same safetensors header and the same path; only the weight
bytes differ. The job is killed after a few batches, the model rebuilt with another seed, and the rerun
must refuse without writing the output; rebuilt with the first seed again (same bytes), it resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        DISABLE_VERSION_CHECK="1",
        PYTHONUNBUFFERED="1",
    )


def _safetensors_header(folder: Path) -> bytes:
    data = (folder / "model.safetensors").read_bytes()
    return data[: 8 + int.from_bytes(data[:8], "little")]


@pytest.mark.slow
def test_model_rebuilt_at_the_same_path_is_not_resumed(scored_dataset: Path, tmp_path: Path) -> None:
    from qwenvl_roi.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model", "qwen2_5_vl", seed=0)
    header = _safetensors_header(model)
    samples = [json.loads(x) for x in (scored_dataset / "regions_test.jsonl").read_text().splitlines()]
    pictures = tmp_path / "pictures"  # copies: one is replaced below (the session's dataset is shared)
    pictures.mkdir()
    copies = {}
    for s in samples:
        source = Path(s["image"]) if Path(s["image"]).is_absolute() else scored_dataset / s["image"]
        copies.setdefault(s["image"], shutil.copy(source, pictures / f"{len(copies)}{source.suffix}"))
    boxes = tmp_path / "boxes.jsonl"
    rows = [
        {"image": str(copies[s["image"]]), "boxes": [r["box"] for r in s["regions"]],
         "id": f"{rep}/{s['sample_id']}"}
        for rep in range(6)
        for s in samples
    ]  # fmt: skip
    boxes.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pred.jsonl"
    cmd = [
        sys.executable, "-m", "qwenvl_roi", "predict", "--model", str(model), "--meta", str(scored_dataset),
        "--boxes", str(boxes), "--out", str(out), "--batch-size", "2", "--no-progress",
    ]  # fmt: skip
    run = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "pred.jsonl.partial"
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None:
        parts = list(partial.glob("part-*.jsonl")) if partial.is_dir() else []
        if parts and parts[0].read_bytes().count(b"\n") >= 5:  # header + two batches
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not out.exists() and partial.is_dir(), "the job finished before it could be interrupted"
    before = {p.name: p.read_bytes() for p in partial.iterdir()}

    build_tiny_model(model, "qwen2_5_vl", seed=1)  # retrained in place: same path, same header
    assert _safetensors_header(model) == header
    other = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert other.returncode == 2, other.stdout[-2000:] + other.stderr[-3000:]
    assert "differs in: model_files" in other.stderr, other.stderr[-3000:]
    assert not out.exists()
    assert {p.name: p.read_bytes() for p in partial.iterdir()} == before  # nothing added or mixed

    build_tiny_model(model, "qwen2_5_vl", seed=0)  # the first model again, byte for byte
    # a processor file edited at the same path (other image_mean): other scores, so not resumed either
    processor = model / "processor_config.json"
    original = processor.read_bytes()
    edited = json.loads(original)
    edited["image_processor"]["image_mean"] = [0.5, 0.5, 0.5]
    processor.write_text(json.dumps(edited))
    other = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "differs in: model_files" in other.stderr, other.stderr[-3000:]
    processor.write_bytes(original)
    # an input picture replaced by another (same name): not resumed with the old picture's scores
    first = next(iter(copies.values()))
    kept, stat = first.read_bytes(), first.stat()
    Image.new("RGB", (96, 72), (10, 200, 30)).save(first, format=Image.open(first).format)
    other = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "differs in: image_files" in other.stderr, other.stderr[-3000:]
    first.write_bytes(kept)
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the very file that was scored
    assert {p.name: p.read_bytes() for p in partial.iterdir()} == before

    # everything as it was scored: resumed
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming:" in again.stdout
    assert len(out.read_text().splitlines()) == len(rows) and not partial.exists()
