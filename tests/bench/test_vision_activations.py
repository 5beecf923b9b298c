"""bench/gpu/vision_activations.py: the per-block count of what a frozen vision tower saves for backward."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu" / "vision_activations.py"


def test_quick_shape_counts_every_block(capsys) -> None:
    spec = importlib.util.spec_from_file_location("vision_activations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    assert module.main(["--shape", "quick", "--short-side", "224", "--top-trained", "2"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    per_block = result["per_block_bytes"]
    assert result["model_view"] == [308, 224]  # 299x224, rounded to 28-pixel multiples by the processor
    assert len(per_block) == result["depth"] == 10
    assert all(b > 0 for b in per_block)  # with the input requiring grad, every frozen block saves
    assert result["phase1_wasted_bytes_per_image"] == sum(per_block)
    assert result["phase2_wasted_bytes_per_image"] == sum(per_block[:8])
