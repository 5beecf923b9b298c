"""A resumed `predict --boxes` knows its model by the bytes of its weights, not by its path: a model rebuilt
(retrained) in the same folder must not have its scores mixed with the old model's partial results.

Two tiny models of different seeds have the same safetensors header and the same path; only the weight
bytes differ. The job is killed after a few batches, the model rebuilt with another seed, and the rerun
must refuse without writing the output; rebuilt with the first seed again (same bytes), it resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


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
def test_model_rebuilt_at_the_same_path_is_not_resumed(roi_dataset: Path, tmp_path: Path) -> None:
    from qwenvl_roi.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model", "qwen2_5_vl", seed=0)
    header = _safetensors_header(model)
    samples = [json.loads(x) for x in (roi_dataset / "regions_test.jsonl").read_text().splitlines()]
    boxes = tmp_path / "boxes.jsonl"
    rows = [
        {"image": s["image"], "boxes": [r["box"] for r in s["regions"]], "id": f"{rep}/{s['sample_id']}"}
        for rep in range(6)
        for s in samples
    ]
    boxes.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pred.jsonl"
    cmd = [
        sys.executable, "-m", "qwenvl_roi", "predict", "--model", str(model), "--meta", str(roi_dataset),
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
    assert "differs in: model_weights" in other.stderr, other.stderr[-3000:]
    assert not out.exists()
    assert {p.name: p.read_bytes() for p in partial.iterdir()} == before  # nothing added or mixed

    build_tiny_model(model, "qwen2_5_vl", seed=0)  # the first model again, byte for byte: resumed
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming:" in again.stdout
    assert len(out.read_text().splitlines()) == len(rows) and not partial.exists()
