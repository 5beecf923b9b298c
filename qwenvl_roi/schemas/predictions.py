"""predictions.jsonl of `qwenvl-roi predict`: one row a line, four kinds told apart by their keys.

- ``regions`` (`predict --regions`, scoring mode): a regions sample's every region scored
  (inference/scoring.py ``prediction_record``); what `eval` reads;
- ``generated`` (`predict --regions --mode generate`): greedy generation parsed back
  (inference/predictor.py ``_generated_record``); unparseable regions get nulls;
- ``boxes`` (`predict --boxes`): one input image of an upstream detector, every input box in input order
  (inference/detections.py ``output_row``);
- ``boxes_error`` (`predict --boxes`): an input line or image that could not be scored at all.

No row carries its kind: the keys decide (``boxes``, ``error``, ``text``, else ``regions``), and each kind
forbids the others' keys, so a row matches exactly one (the JSON Schema's ``oneOf``). Fields are declared
in the order the writers write them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Discriminator, Field, StrictBool, StrictStr, Tag

from .types import Box, Contract, Count, Omittable, Pixels, Probability, omitted

_SAMPLE_ID = "the regions sample's sample_id (left out when the sample had none)"
_IMAGE = "the image scored: the regions sample's image, resolved to an absolute path"


class ScoredRegion(Contract):
    """One region in scoring mode (greedy-consistent constrained decoding, docs/evaluation.md)."""

    id: StrictStr = Field(description="the region id of the regions sample")
    score: Probability = Field(description="P(abnormal) = 1 - P(normal word) on the region's answer line")
    label: StrictStr = Field(
        description="the most likely canonical label (even when the region looks normal)"
    )
    abnormal: StrictBool = Field(description="score >= the inference config's threshold")
    greedy: StrictStr = Field(description="the word greedy decoding writes on the region's line")


class RegionsPrediction(Contract):
    """A regions sample scored (`predict --regions`, scoring mode): what `eval` reads."""

    sample_id: Omittable[StrictStr] = omitted(_SAMPLE_ID)
    image: StrictStr = Field(description=_IMAGE)
    regions: Annotated[list[ScoredRegion], AfterValidator(_unique_region_ids)] = Field(
        description="every region of the sample, in its order (ids unique)"
    )
    image_line_score: Omittable[Probability] = omitted(
        "P(abnormal word) on the answer's image line (predict always writes it; a row without it still "
        "evaluates, without the image-line figures)"
    )
    image_verdict: StrictStr = Field(description="the word greedy decoding writes on the image line")


def _unique_region_ids(regions: list[Any]) -> list[Any]:
    """A sample scores each region once: a repeated id would let one of two scores win silently."""
    ids = [r.id for r in regions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"region ids repeat: {ids}")
    return regions


class GeneratedRegion(Contract):
    """One region in generate mode: its parsed verdict, or nulls when its line could not be parsed."""

    id: StrictStr = Field(description="the region id of the regions sample")
    score: Probability | None = Field(
        description="1.0 (a label was written), 0.0 (the normal word) or null (unparsed)"
    )
    label: StrictStr | None = Field(description="the label written; null for normal or unparsed")
    abnormal: StrictBool | None = Field(description="true when a label was written; null when unparsed")


class GeneratedPrediction(Contract):
    """A regions sample answered by greedy generation (`predict --regions --mode generate`), parsed back:
    for inspecting answers; metrics should come from scoring mode."""

    sample_id: Omittable[StrictStr] = omitted(_SAMPLE_ID)
    image: StrictStr = Field(description=_IMAGE)
    regions: Annotated[list[GeneratedRegion], AfterValidator(_unique_region_ids)] = Field(
        description="every region of the sample, in its order (ids unique)"
    )
    image_verdict: StrictStr | None = Field(
        description="the verdict word on the image line; null when it could not be parsed"
    )
    text: StrictStr = Field(description="the generated answer, as decoded")
    unparsed: list[StrictStr] = Field(description="the answer's lines that could not be read")
    missing: list[StrictStr] = Field(description="region ids with no verdict line")
    extra: list[StrictStr] = Field(description="region ids the answer invented")


class BoxScore(Contract):
    """One input box of a detector row, in input order; nulls when it was not scored (see note)."""

    box: Box | None = Field(
        description="the box as given, [x1, y1, x2, y2] in pixels of the image as shown (EXIF orientation "
        "applied); null when the input was not four finite numbers"
    )
    score: Probability | None = Field(description="P(abnormal); null when the box was not scored")
    label: StrictStr | None = Field(description="the most likely canonical label; null when not scored")
    greedy: StrictStr | None = Field(description="the word greedy decoding writes; null when not scored")
    abnormal: StrictBool | None = Field(description="score >= threshold; null when not scored")
    note: Omittable[StrictStr] = omitted(
        "what happened to the box (clipped to the image, outside it, not 4 finite numbers); left out when "
        "nothing did"
    )


class BoxesPrediction(Contract):
    """One input image of `predict --boxes`, scored: its boxes split into prompts of at most
    max_boxes_per_image consecutive boxes."""

    id: StrictStr = Field(description="the input line's id, else the image as given")
    image: StrictStr = Field(description="the image as given (relative to --images, or absolute)")
    width: Pixels = Field(description="the image's width as shown (EXIF orientation applied)")
    height: Pixels = Field(description="the image's height as shown")
    prompts: Count = Field(description="how many prompts its usable boxes were split into")
    boxes: list[BoxScore] = Field(description="every input box, in input order")
    image_score: Probability | None = Field(
        description="the highest box score (what `eval` uses as the image score); null without one"
    )
    image_abnormal: StrictBool | None = Field(description="image_score >= threshold; null without a score")
    image_line_score: Probability | None = Field(
        description="the highest image-line P(abnormal) over the image's prompts; null without a prompt"
    )
    problems: list[StrictStr] = Field(description="input problems, each naming its file and line")


class BoxesError(Contract):
    """An input of `predict --boxes` that could not be scored at all: not JSON, no image or an unreadable
    one, an id given twice, an image the processor or model cannot take."""

    id: StrictStr = Field(description="the input line's id, else the image as given, else <line N>")
    image: StrictStr = Field(description="the image as given (empty when the line had none)")
    error: StrictStr = Field(description="why it could not be scored, naming the file and line")
    problems: list[StrictStr] = Field(description="other input problems, each naming its file and line")


def row_kind(row: Any) -> str | None:
    """Which kind a row is, by its keys (None: not an object, which every branch then refuses)."""
    if isinstance(row, Contract):
        return _KINDS.get(type(row))
    if not isinstance(row, dict):
        return None
    if "boxes" in row:
        return "boxes"
    if "error" in row:
        return "boxes_error"
    if "text" in row:
        return "generated"
    return "regions"


_KINDS: dict[type, str] = {
    RegionsPrediction: "regions",
    GeneratedPrediction: "generated",
    BoxesPrediction: "boxes",
    BoxesError: "boxes_error",
}


#: one line of a predictions file of `predict --regions` (what `eval` reads)
RegionsPredictionRow = Annotated[
    Annotated[RegionsPrediction, Tag("regions")] | Annotated[GeneratedPrediction, Tag("generated")],
    Discriminator(row_kind),
]

#: one line of any predictions file of `qwenvl-roi predict`
PredictionRow = Annotated[
    Annotated[RegionsPrediction, Tag("regions")]
    | Annotated[GeneratedPrediction, Tag("generated")]
    | Annotated[BoxesPrediction, Tag("boxes")]
    | Annotated[BoxesError, Tag("boxes_error")],
    Discriminator(row_kind),
]
