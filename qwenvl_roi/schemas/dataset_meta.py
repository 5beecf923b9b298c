"""dataset_meta.json: everything needed to rebuild a prompt exactly, written beside the regions files.

The model lives here with the other file contracts; ``qwenvl_roi.converters.meta`` re-exports it with the
functions that build, check and load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from qwenvl_roi.converters.frames import box_to_frame, frame_size_of
from qwenvl_roi.families import DEFAULT_FAMILY, ModelFamily, family, with_processor_defaults

from .types import Pixels

#: the format version of dataset_meta.json, written into the file as ``version``
META_VERSION = 1

_DEFAULT_FAMILY = family(DEFAULT_FAMILY)


class DatasetMeta(BaseModel):
    """The resolved prompt texts, words, labels and coordinate-frame settings of one converted dataset:
    inference and the plugin read them so nobody has to repeat them, and a mismatch with a recipe shows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[StrictInt, Field(ge=1)] = Field(
        META_VERSION, description="format version of this file (1)"
    )
    model_family: ModelFamily = Field(
        DEFAULT_FAMILY,
        description="the model family the prompts were written for (qwenvl_roi/families.py): it fixes the "
        "coordinate frame of the boxes in the prompt and the template",
    )
    image_max_pixels: Pixels = Field(
        1048576, description="LLaMA-Factory's image_max_pixels: larger images are shrunk to this area"
    )
    image_min_pixels: Pixels = Field(
        1024, description="LLaMA-Factory's image_min_pixels: smaller images are grown to this area"
    )
    processor_min_pixels: Pixels = Field(
        _DEFAULT_FAMILY.processor_min_pixels,
        description="the processor's min_pixels (missing from a file: the family's released processor)",
    )
    processor_max_pixels: Pixels = Field(
        _DEFAULT_FAMILY.processor_max_pixels,
        description="the processor's max_pixels (missing from a file: the family's released processor)",
    )
    prompt_language: Literal["zh", "en"] = Field("zh", description="language of the default prompt texts")
    system_prompt: StrictStr = Field(description="the system turn")
    region_instruction: StrictStr = Field(
        description="user turn of a region sample, a template with {labels} {normal_word} {abnormal_word} "
        "{image_key} {coord_desc}; the <regions> list follows it"
    )
    image_instruction: StrictStr = Field(
        description="user turn of an image-level sample (whole image, one verdict), same placeholders"
    )
    coord_desc: StrictStr = Field(description="how the prompt words the coordinate frame ({coord_desc})")
    normal_word: StrictStr = Field(description="the verdict word for normal, on the image and region lines")
    abnormal_word: StrictStr = Field(description="the verdict word for an abnormal image (image line)")
    image_key: StrictStr = Field(description="the key of the answer's first line (the image-level verdict)")
    label_sep: StrictStr = Field(description="separator of the labels listed in the prompt ({labels})")
    region_id_prefix: StrictStr = Field("R", description="region ids are this prefix and 1, 2, ...")
    labels: list[StrictStr] = Field(
        default_factory=list, description="the canonical defect labels, sorted; a region line answers one"
    )
    dataset_prefix: StrictStr = Field(
        "roi", description="dataset names in dataset_info.json: <prefix>_train ..."
    )
    max_boxes_per_image: Annotated[StrictInt, Field(ge=1)] = Field(
        8, description="at most this many candidates per prompt; inference on new images splits more"
    )
    image_bit_depth: Annotated[StrictInt, Field(ge=8, le=32)] | None = Field(
        None,
        description="the bit depth that scaled 16/32-bit images to 8 bits (inference must repeat it); "
        "null: the dataset had none",
    )

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: object) -> object:
        """Processor pixel limits missing from a file default to its family's released processor (a null
        stays an error: this project writes both)."""
        return with_processor_defaults(data, null_is_unset=False)

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """(W, H) the model sees for an original image of this size (the family's grid factor)."""
        return frame_size_of(self, width, height)

    def frame_size_for_coords(self, width: int, height: int) -> tuple[int, int] | None:
        """The frame size when the family's coordinates depend on it (resized pixels), else None."""
        return self.frame_size(width, height) if family(self.model_family).frame_needs_size else None

    def box_in_frame(self, box: Sequence[float], width: int, height: int) -> list[int]:
        """An original-pixel xyxy box written in the model's coordinate frame."""
        size = self.frame_size_for_coords(width, height)
        return box_to_frame(box, width, height, self.model_family, size)
