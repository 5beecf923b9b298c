"""metrics.json of `qwenvl-roi eval`: ROI- and image-level figures at one threshold (docs/evaluation.md).

Written by qwenvl_roi/evaluation/cli.py ``evaluate`` (figures from evaluation/metrics.py
``compute_metrics``, the gallery's summary from evaluation/gallery.py) with sorted keys; read by the demo's
report. Undefined ratios are 0.0 with a warning and undefined AUROCs null, never NaN.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictStr, model_validator

from .types import Contract, Count, Omittable, Probability, omitted


class Ranking(Contract):
    """Threshold-free figures (scikit-learn); null when gold has a single class."""

    auroc: Probability | None = Field(description="area under the ROC curve; null with one class")
    average_precision: Probability | None = Field(description="average precision; null with one class")


class Figures(Contract):
    """Precision, recall and F1 with their counts at the threshold."""

    precision: Probability = Field(description="tp / (tp + fp); 0.0 with a warning when nothing is flagged")
    recall: Probability = Field(description="tp / (tp + fn); 0.0 with a warning when gold has no positive")
    f1: Probability = Field(description="harmonic mean of precision and recall; 0.0 when both are 0")
    tp: Count = Field(description="true positives")
    fp: Count = Field(description="false positives")
    fn: Count = Field(description="false negatives")


class FullFigures(Figures):
    """Figures with true negatives and the ranking figures."""

    tn: Count = Field(description="true negatives")
    auroc: Probability | None = Field(description="area under the ROC curve; null with one class in gold")
    average_precision: Probability | None = Field(description="average precision; null with one class")


class LabelFigures(Figures):
    """One label against the rest: predicted L = flagged with label L; gold L = positive with label L."""

    support: Count = Field(description="gold positives with this label (tp + fn)")


class Counts(Contract):
    """What was evaluated."""

    samples: Count = Field(description="distinct samples")
    regions: Count = Field(description="regions")
    positive_regions: Count = Field(description="positive regions in gold")
    images: Count = Field(description="distinct images (all samples of an image together)")
    abnormal_images: Count = Field(description="images with a positive region in gold")
    unparsed_regions: Count = Field(description="regions whose generated answer could not be parsed")


class Confusion(Contract):
    """Region-level confusion counts: rows gold class, columns predicted class."""

    labels: list[StrictStr] = Field(
        description="the classes: normal, the canonical labels, any other label seen, then (no label) "
        "when a positive region has no gold label or a flagged one no predicted label"
    )
    counts: list[list[Count]] = Field(description="counts[gold][predicted], a square matrix over labels")

    @model_validator(mode="after")
    def _square(self) -> Confusion:
        """One row and one column per class: a ragged matrix cannot be read back against the labels."""
        n = len(self.labels)
        if len(self.counts) != n or any(len(row) != n for row in self.counts):
            raise ValueError(f"counts must be {n} x {n}, one row and one column per label")
        return self


class ValSweep(Contract):
    """The threshold chosen on validation (F1-best at ROI level; ties: the highest) and its figures there."""

    threshold: Probability = Field(description="the chosen threshold")
    precision: Probability = Field(description="ROI precision on validation at it")
    recall: Probability = Field(description="ROI recall on validation at it")
    f1: Probability = Field(description="ROI F1 on validation at it")


class Inputs(Contract):
    """The files evaluated, as given on the command line."""

    predictions: StrictStr = Field(description="--predictions")
    gold: StrictStr = Field(description="--gold")
    val_predictions: Omittable[StrictStr] = omitted(
        "--val-predictions (when the threshold was chosen on val)"
    )
    val_gold: Omittable[StrictStr] = omitted("--val-gold (when the threshold was chosen on val)")


class Categories(Contract):
    """Pictures per kind: the first of these their regions show."""

    FN: Count = Field(description="pictures with a false negative")
    FP: Count = Field(description="pictures with a false positive (and no false negative)")
    LABEL: Count = Field(description="pictures whose only mistake is a wrong label")
    rest: Count = Field(description="pictures without a mistake")


class Gallery(Contract):
    """The gallery of pictures as the model sees them, mistakes first (docs/evaluation.md)."""

    index: StrictStr = Field(description="the first page, relative to the eval folder")
    pages: Count = Field(description="how many pages")
    pictures: Count = Field(description="pictures evaluated")
    shown: Count = Field(description="pictures shown (at most --gallery-limit)")
    by_category: Categories = Field(description="pictures per kind")
    shown_by_category: Categories = Field(description="pictures shown per kind")
    unreadable: Count = Field(description="pictures that could not be read (shown without the picture)")
    label_legend: dict[StrictStr, StrictStr] = Field(
        description="#k -> label, for labels the installed fonts cannot draw"
    )
    warnings: list[StrictStr] = Field(description="what the gallery could not do, for a person to read")


class Metrics(Contract):
    """metrics.json: every figure of one evaluation at one threshold."""

    threshold: Probability = Field(description="a region is predicted abnormal when score >= threshold")
    counts: Counts = Field(description="what was evaluated")
    roi: FullFigures = Field(description="region level")
    roi_labeled: Figures = Field(
        description="region level, a true positive also needing the right label (a flagged region with a "
        "wrong label is a FP, its gold positive a FN)"
    )
    roi_within_abnormal: Ranking = Field(
        description="positive vs negative regions inside the images that have a defect: localisation alone"
    )
    per_label: dict[StrictStr, LabelFigures] = Field(
        description="label -> its one-vs-rest figures, for the canonical labels and any label seen"
    )
    confusion: Confusion = Field(description="region-level confusion matrix")
    image: FullFigures = Field(
        description="image level: an image's score is the max over its regions across its samples; abnormal "
        "in gold when any region is positive, predicted abnormal when any region is flagged"
    )
    warnings: list[StrictStr] = Field(description="what a person should know about these figures")
    image_line: Omittable[Ranking] = omitted(
        "the model's own image-level verdict (image_line_score, max over an image's samples); present "
        "only when every prediction carries that score, as scoring mode's do"
    )
    threshold_source: Literal["val", "given", "default"] = Field(
        description="'val' (chosen on validation), 'given' (--threshold) or 'default' (0.5, with a warning)"
    )
    val: Omittable[ValSweep] = omitted("the validation sweep, when the threshold was chosen on val")
    inputs: Inputs = Field(description="the files evaluated")
    gallery: Omittable[Gallery] = omitted("the gallery's summary, when one was written")
