"""Training stops before the first step, through the real `llamafactory-cli train`, when a ROI dataset
would be trained as something else: samples longer than cutoff_len (LLaMA-Factory would cut them) or data
converted for another model family (another coordinate frame)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _failed(proc, *needles: str) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    for needle in needles:
        assert needle in text, (needle, text[-3000:])
    return text


def test_cutoff_len_too_small_stops_naming_the_longest_sample(
    lf, tiny_qwen2_5_vl: Path, roi_dataset: Path, tmp_path: Path
) -> None:
    proc = lf.train("phase1.yaml", tiny_qwen2_5_vl, roi_dataset, tmp_path / "a", cutoff_len=64)
    text = _failed(proc, "cutoff_len 64 is too short for 6 of 6 train samples of roi_train, roi_val")
    match = re.search(r"the longest is (\d+) tokens .*sample (\d+) with image (\S+)\. ", text)
    assert match, text[-3000:]
    longest = int(match.group(1))
    assert Path(match.group(3)).name.startswith("img") and f"at least {longest}" in text
    assert not (tmp_path / "a" / "out" / "adapter_model.safetensors").exists()
    # the number is exact: one token less still stops, the number itself trains
    _failed(lf.train("phase1.yaml", tiny_qwen2_5_vl, roi_dataset, tmp_path / "b", cutoff_len=longest - 1))
    ok = lf.train(
        "phase1.yaml", tiny_qwen2_5_vl, roi_dataset, tmp_path / "c", cutoff_len=longest, max_steps=1
    )
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-3000:]


def test_model_family_mismatch_stops(lf, tiny_qwen2_vl: Path, roi_dataset: Path, tmp_path: Path) -> None:
    proc = lf.train("phase1.yaml", tiny_qwen2_vl, roi_dataset, tmp_path)
    _failed(
        proc,
        "dataset 'roi_train' was converted with model_family=qwen2_5_vl",
        "is qwen2_vl (model_type 'qwen2_vl'",
        "Set model_family: qwen2_vl",
    )
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
