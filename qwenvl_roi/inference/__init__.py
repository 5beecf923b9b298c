"""Per-region scores from a fine-tuned model: prompt building, scoring and generate modes.

`RegionPredictor` is imported lazily so that `import qwenvl_roi.inference` stays light (no torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["RegionPredictor"]


def __getattr__(name: str) -> Any:
    if name == "RegionPredictor":
        from qwenvl_roi.inference.predictor import RegionPredictor

        return RegionPredictor
    raise AttributeError(name)
