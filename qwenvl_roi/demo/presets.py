"""Named demo configurations: the full `make demo` run and the scaled-down plumbing check for tests."""

from __future__ import annotations

from .pipeline import DemoConfig, PhaseSpec
from .synth import SynthConfig


def quick_config() -> DemoConfig:
    """Few images, test-size model, a few steps per phase: exercises every step in well under 2 minutes.

    It checks the plumbing and the coherence of the outputs, not learning.
    """
    full = DemoConfig()
    phases = [
        PhaseSpec(**{**p.model_dump(), "max_steps": 2, "overrides": _cap_blocks(p.overrides, 4)})
        for p in full.phases
    ]
    return DemoConfig(
        synth=SynthConfig(n_abnormal=20, n_normal=20, images_per_batch=2, size=112, bad_line_every=6),
        # 20 batch folders only: a split seed whose hash gives train, val and test both classes (seed 42
        # leaves val empty since groups are keyed by their folder path without the source prefix)
        split_seed=1,
        model_size="test",
        batch_size=4,
        lora_rank=4,
        predict_batch_size=8,
        phases=phases,
    )


def _cap_blocks(overrides: dict, depth: int) -> dict:
    """Block counts must fit the model's vision depth (the test model has 4 blocks, like the demo's)."""
    out = dict(overrides)
    for key in ("roi_vision_lora_top_blocks", "roi_vision_unfreeze_top_blocks"):
        if key in out:
            out[key] = min(out[key], depth)
    return out
