"""regions_{train,val,test}.jsonl: one sample a line, the image and its candidate regions with gold verdicts.

Written by `qwenvl-roi prepare` (converters/prepare.py ``_samples``); read by build-sft (the sharegpt
records), `predict --regions`, `eval` (the gold) and `preview`. Fields are declared in the order prepare
writes them, so a sample dumped from the model is the line it was read from.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictStr, model_validator, with_config
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

from .types import Box, Contract, Pixels


# A TypedDict, not a model: a region is read and written as the dict it is, and readers index it
# (``region["box"]``). prepare checks every sample before writing (140,000 regions for 20,000 images), and
# dicts validated inside pydantic-core take half the time of model instances. Same JSON Schema either way.
@with_config(ConfigDict(extra="forbid"))  # as Contract: an unknown key is an error
class Region(TypedDict):
    """One candidate region of a sample, with its gold verdict."""

    id: Annotated[StrictStr, Field(description="R1, R2, ... in the order the prompt lists the regions")]
    box: Annotated[
        Box,
        Field(description="[x1, y1, x2, y2] in pixels of the picture `image` (xyxy, after clipping to it)"),
    ]
    label: Annotated[
        StrictStr | None,
        Field(description="the canonical defect label of a positive region; null for a negative one"),
    ]
    positive: Annotated[StrictBool, Field(description="true when the region covers an annotated defect")]


class RegionSample(Contract):
    """One line of regions_{train,val,test}.jsonl: one prompt, an image and up to max_boxes_per_image
    candidates (an image may give several samples)."""

    sample_id: StrictStr = Field(
        description="unique and stable: <source>/<path of the original image relative to its root>#<k>"
    )
    image: StrictStr = Field(
        description="the picture the trainer loads (the upright 8-bit RGB copy under image_cache/ when the "
        "original needed one); a relative path is relative to the folder that holds the regions file"
    )
    width: Pixels = Field(description="width of that picture in pixels")
    height: Pixels = Field(description="height of that picture in pixels")
    split: Literal["train", "val", "test"] = Field(description="the split (test is blind: never trained on)")
    group: StrictStr = Field(
        description="the split group: the folder path relative to its root (the same for both sources); "
        "a group never spans two splits"
    )
    source: Literal["abnormal", "normal"] = Field(description="which input folder the image came from")
    regions: list[Region] = Field(description="the candidates, in prompt order")
    positive_region_ids: list[StrictStr] = Field(
        description="ids of the positive regions, in order (the same as the regions' `positive`)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RegionSample:
        """Region ids are unique and the positive ids list the positive regions, so no reader has to choose
        which of two disagreeing fields to believe."""
        ids = [r["id"] for r in self.regions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"region ids repeat: {ids}")
        positive = [r["id"] for r in self.regions if r["positive"]]
        if self.positive_region_ids != positive:
            raise ValueError(
                f"positive_region_ids {self.positive_region_ids} but the positive regions are {positive}"
            )
        return self
