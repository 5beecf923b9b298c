"""qwenvl_roi_inference.json: the decision threshold `eval` chose, which `predict` and the Python API apply.

The model lives here with the other file contracts; ``qwenvl_roi.inference.config`` re-exports it with the
functions that find, load and save the file.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict

DEFAULT_THRESHOLD = 0.5

# a float as the file has always been written (an integer given is stored as a float), never a string or NaN
_Ratio = Annotated[float, Strict(), AllowInfNan(False), Field(ge=0.0, le=1.0)]


class InferenceConfig(BaseModel):
    """Decision settings applied to P(abnormal) scores: the threshold fixed on validation travels with the
    model, so the blind test set and other projects use it unchanged, never re-tuned."""

    model_config = ConfigDict(extra="forbid")

    threshold: _Ratio = Field(
        DEFAULT_THRESHOLD, description="a region is abnormal when its score >= threshold"
    )
    threshold_source: Literal["val", "given", "default"] = Field(
        "default",
        description="where the threshold came from: 'val' (F1-best on validation), 'given' (--threshold) "
        "or 'default' (0.5)",
    )
    val_f1: _Ratio | None = Field(
        None, description="ROI-level F1 on validation at the chosen threshold; null unless chosen on val"
    )
