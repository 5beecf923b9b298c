"""prepare_report.json: every input file and box accounted for, every problem with its file and line.

Written by `qwenvl-roi prepare` (converters/prepare.py ``prepare_into``, its pieces from converters/
report.py, images.py and audit.py); read by the demo's report. Fields are declared in the order prepare
writes them, so a report dumped from the model is the file it was read from.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from qwenvl_roi.converters.images import REASONS

from .types import Box, Contract, Count, DigitKey, Number, Omittable, Probability, digit_keys, omitted

#: why an image was given an upright 8-bit RGB copy (converters/images.py REASONS)
ConversionReason = Literal[REASONS]  # type: ignore[valid-type]


def _candidate_counts() -> Any:
    return Field(
        description="candidate count (as text) -> samples with that many candidates",
        json_schema_extra=digit_keys,
    )


class Inputs(Contract):
    """What the input folders held and what was used."""

    abnormal_images_found: Count = Field(
        description="images under abnormal_dir (for labelme/voc/yolo/coco: the images folder; for a "
        "dataset_layout: the images under dataset_root, masks not counted)"
    )
    annotation_files_found: Omittable[Count] = omitted(
        "labelme/voc/yolo: annotation files found (beside the images or under annotations_dir)"
    )
    annotation_format: Omittable[StrictStr] = omitted(
        "the annotation_format read: labelme, voc, yolo, coco or a registered source (absent for txt)"
    )
    coco_annotations: Omittable[Count] = omitted("coco: annotations in the COCO file")
    coco_images_listed: Omittable[Count] = omitted("coco: images listed in the COCO file")
    dataset_layout: Omittable[StrictStr] = omitted(
        "the dataset_layout read: mvtec or visa (absent without one)"
    )
    mask_files_found: Omittable[Count] = omitted("dataset_layout: mask files under dataset_root")
    normal_images_found: Omittable[Count] = omitted("images under normal_dir (left out without normal_dir)")
    split_csv_rows: Omittable[Count] = omitted("visa: usable rows of visa_split_csv")
    split_from: Omittable[Literal["defect_types", "layout"]] = omitted(
        "dataset_layout: where the forced splits come from (mvtec: split_from; visa: layout, its csv)"
    )
    txt_files_found: Omittable[Count] = omitted("txt: txt files under abnormal_dir")
    visa_split_csv: Omittable[StrictStr] = omitted("visa: the split csv read, relative to dataset_root")
    abnormal_images_used: Count = Field(description="abnormal images that gave samples")
    normal_images_used: Count = Field(description="normal images that gave samples")
    normal_images_from_abnormal_dir: Omittable[Count] = omitted(
        "labelme/voc/yolo/coco: images of the images folder whose annotation lists no object (normal samples)"
    )
    txt_encodings: Omittable[dict[StrictStr, Count]] = omitted("txt: encoding -> txt files read in it")
    annotation_encodings: Omittable[dict[StrictStr, Count]] = omitted(
        "labelme/voc/yolo: encoding -> annotation files read in it"
    )


class Lines(Contract):
    """Non-blank lines of the txt files matched to an image."""

    read: Count = Field(description="lines read")
    skipped: Count = Field(description="lines skipped (each one is a problem below)")


class BitDepth(Contract):
    """How 16/32-bit images were scaled to 8 bits."""

    used: Annotated[StrictInt, Field(ge=8, le=32)] = Field(description="the bit depth that scaled them")
    how: Literal["configured (image_bit_depth)", "detected"] = Field(description="where it came from")
    max_value: Number | None = Field(description="the largest pixel value of those read as counts")
    images: Count = Field(description="high-bit-depth images read as counts")


class ConvertedImage(Contract):
    """One image given an upright 8-bit RGB copy."""

    # "copy" in the file; not the attribute name, which would shadow BaseModel.copy
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    image: StrictStr = Field(description="<source>/<path relative to its root>")
    copy_: StrictStr = Field(alias="copy", description="the copy, relative to out_dir (under cache_dir)")
    reasons: list[ConversionReason] = Field(description="why it needed one")
    mode: StrictStr = Field(description="the original's PIL mode")
    orientation: Annotated[StrictInt, Field(ge=1, le=8)] = Field(description="its EXIF orientation (1: none)")


class Images(Contract):
    """The images as the trainer will load them (docs/converters.md)."""

    image_fixes: Literal["fix", "flag"] = Field(
        description="fix: copies made; flag: such images reported and left out"
    )
    used_as_is: Count = Field(description="images used as they are (headers read, no pixels decoded)")
    converted: Count = Field(description="images given an upright 8-bit RGB copy")
    converted_by_reason: dict[ConversionReason, Count] = Field(description="reason -> images copied for it")
    left_out: Count = Field(description="images left out (image_fixes: flag)")
    bit_depth: BitDepth | None = Field(description="null when the dataset has no 16/32-bit image")
    cache_dir: StrictStr = Field(description="the folder of the copies, relative to out_dir")
    converted_images: list[ConvertedImage] = Field(description="every copy, sorted by image")


class Boxes(Contract):
    """Every box read is counted once: kept, clipped (kept after a fix) or dropped with a reason."""

    read: Count = Field(description="kept + clipped + dropped")
    kept: Count = Field(description="boxes kept as written")
    clipped: Count = Field(description="boxes kept after a fix (clipped to the image, corners swapped)")
    dropped: Count = Field(description="boxes dropped")
    dropped_by_reason: dict[StrictStr, Count] = Field(description="problem kind -> boxes dropped for it")


class LabelVariants(Contract):
    """The raw labels that became one canonical label."""

    variants: list[StrictStr] = Field(description="raw label texts, sorted")


class ShortBySource(Contract):
    """Samples that got fewer candidates than drawn, per source."""

    abnormal: Count = Field(description="abnormal samples")
    normal: Count = Field(description="normal samples")


class CandidatePolicy(Contract):
    """How candidates were drawn (the config's settings and what came out)."""

    count_range: Annotated[list[Count], Field(min_length=2, max_length=2)] = Field(
        description="[lo, max_boxes_per_image]: candidates per sample, the same for both classes"
    )
    abnormal_neg_per_pos: Count = Field(description="negatives per positive in abnormal samples")
    max_neg_iou: Probability = Field(description="a negative's largest IoU with an annotated box")
    max_neg_cover: Probability = Field(description="a negative's largest cover of an annotated box")
    samples_short_of_candidates: Count = Field(description="samples that got fewer candidates than drawn")
    samples_short_by_source: ShortBySource = Field(description="the same per source")


class AuditRegions(Contract):
    """Positive vs negative regions of the abnormal samples, from each box alone."""

    auroc: Probability | None = Field(description="cross-validated AUROC; null when not computable")
    regions: Count = Field(description="regions audited")


class AuditSamples(Contract):
    """Abnormal vs normal samples, from their boxes' layout."""

    auroc: Probability | None = Field(description="cross-validated AUROC; null when not computable")
    samples: Count = Field(description="samples audited")


class PositionAudit(Contract):
    """Can a classifier tell the answer from where the boxes sit, without the pixels? Near 0.5 is good."""

    limit: Probability = Field(description="prepare warns when an AUROC is above it")
    classifier: StrictStr = Field(description="the adversary and its cross-validation")
    images: Count = Field(description="images audited")
    skipped: StrictStr | None = Field(description="why the audit was skipped; null when it ran")
    positive_vs_negative: AuditRegions = Field(description="regions of abnormal samples")
    abnormal_vs_normal: AuditSamples = Field(description="samples")


class SplitPolicy(Contract):
    """How images were grouped for the split."""

    split_by_parent: StrictBool = Field(description="a folder is one group (false: every image its own)")
    split_group_depth: Annotated[StrictInt, Field(ge=1)] | None = Field(
        description="the folder depth that makes a group; null: the image's parent folder"
    )
    groups: Count = Field(description="groups in all splits")


class LabelCount(Contract):
    """Positive boxes of one label in one split."""

    boxes: Count = Field(description="positive regions with this label")
    images: Count = Field(description="images with such a region")


class CandidatesBySource(Contract):
    """Samples per candidate count, per source."""

    abnormal: dict[DigitKey, Count] = _candidate_counts()
    normal: dict[DigitKey, Count] = _candidate_counts()


class SplitStats(Contract):
    """One split."""

    images: Count = Field(description="distinct images")
    abnormal_images: Count = Field(description="abnormal images")
    normal_images: Count = Field(description="normal images")
    samples: Count = Field(description="samples (lines of its regions file)")
    groups: Count = Field(description="groups")
    group_keys: list[StrictStr] = Field(description="the groups, sorted")
    labels: dict[StrictStr, LabelCount] = Field(description="label -> its positive boxes and images")
    candidates_per_sample: CandidatesBySource = Field(description="samples per candidate count")


class Splits(Contract):
    """Per split."""

    train: SplitStats = Field(description="the training split")
    val: SplitStats = Field(description="the validation split")
    test: SplitStats = Field(description="the blind test split")


Split = Literal["train", "val", "test"]


class TwinImage(Contract):
    """One picture of a near-duplicate set."""

    image: StrictStr = Field(
        description="<root>/<path relative to its root> (root abnormal or normal): the image part of its "
        "samples' sample_id in regions_*.jsonl"
    )
    group: StrictStr = Field(description="its folder group (the samples' group)")
    split_alone: Split = Field(
        description="the split its folder group gets on its own (holdout_list and forced splits included)"
    )
    split: Split = Field(description="the split it is in, in the datasets written")
    source: Literal["abnormal", "normal"] = Field(description="its class")
    labels: list[StrictStr] = Field(description="the canonical labels of its kept boxes, sorted")


class HammingRange(Contract):
    """Hamming distances of 64-bit pHashes."""

    min: Annotated[StrictInt, Field(ge=0, le=64)] = Field(description="the smallest, in bits")
    max: Annotated[StrictInt, Field(ge=0, le=64)] = Field(description="the largest, in bits")


class TwinSet(Contract):
    """Pictures the hash paired and the pixels confirmed, joined transitively."""

    images: Annotated[list[TwinImage], Field(min_length=2)] = Field(description="its pictures, by image")
    distance: HammingRange = Field(description="over the set's verified pairs")
    correlation_min: Probability = Field(
        description="the weakest verified link: Pearson r of the two 32x32 grey thumbnails"
    )
    pairs: Annotated[StrictInt, Field(ge=1)] = Field(description="verified pairs inside the set")
    splits_alone: list[Split] = Field(description="the splits its pictures' folder groups give on their own")
    across_splits: StrictBool = Field(
        description="splits_alone has more than one split: a leak without group"
    )
    splits: list[Split] = Field(
        description="the splits its pictures are in now (one with near_duplicates: group)"
    )
    label_conflict: StrictBool = Field(description="its pictures are annotated differently")
    conflicts: list[Literal["normal_vs_abnormal", "labels_differ", "boxes_differ"]] = Field(
        description="how they differ from the first picture's annotation: class, labels, or boxes that do "
        "not pair up one to one at IoU >= 0.5 (each also a near_duplicate_label_conflict problem)"
    )


class NearDuplicates(Contract):
    """Near-duplicate pictures (twins) across the dataset (converters/near_duplicates.py). Mode group and
    report write every key; off writes only `mode` and an empty `sets` (nothing was hashed). The hash
    cache's work in a run (pictures decoded or taken from the cache) is printed, not written: a rerun on the
    same inputs writes the same report."""

    mode: Literal["group", "report", "off"] = Field(
        description="the near_duplicates setting: group (the folders of a set split as one), report, off"
    )
    hash: Omittable[StrictStr] = omitted(
        "what was hashed and how (its recipe; a change invalidates the cache)"
    )
    max_distance: Omittable[Annotated[StrictInt, Field(ge=0, le=64)]] = omitted(
        "near_duplicate_max_distance: Hamming distance (bits of 64) up to which hashes are a candidate pair"
    )
    min_correlation: Omittable[Probability] = omitted(
        "near_duplicate_min_correlation: Pearson r of the thumbnails from which a candidate pair is a twin"
    )
    pictures: Omittable[Count] = omitted("pictures hashed (every image used in the datasets)")
    unreadable: Omittable[Count] = omitted(
        "pictures whose pixels could not be decoded (each a pixels_unreadable problem)"
    )
    flat: Omittable[Count] = omitted(
        "pictures whose thumbnail is one grey level: nothing to compare, never paired"
    )
    compared: Omittable[Count] = omitted("Hamming distances the multi-index search computed")
    hash_pairs: Omittable[Count] = omitted("distinct pairs within max_distance")
    verified_pairs: Omittable[Count] = omitted("of those, confirmed on the pixels: twins")
    rejected_pairs: Omittable[Count] = omitted(
        "hash-near pairs whose pixels differ: alike pictures that a hash alone would pair"
    )
    set_count: Omittable[Count] = omitted("twin sets")
    images_in_sets: Omittable[Count] = omitted("pictures in some set")
    sets_across_splits: Omittable[Count] = omitted(
        "sets whose pictures' folder groups fall in more than one split on their own"
    )
    sets_split_now: Omittable[Count] = omitted(
        "sets spanning more than one split in the datasets written (0 with group)"
    )
    label_conflicts: Omittable[Count] = omitted("sets whose pictures are annotated differently")
    sets: list[TwinSet] = Field(description="the twin sets, sorted by their first image")
    merged_groups: Omittable[dict[StrictStr, StrictStr]] = omitted(
        "group: folder group -> the key its union with the folders it shares sets with is split by (the "
        "smallest folder key of the union); folders not joined are absent; empty for report"
    )
    images_moved: Omittable[Count] = omitted(
        "images in another split than their own folder group gives (group only: every image of a joined "
        "folder follows the union)"
    )

    @model_validator(mode="after")
    def _complete(self) -> NearDuplicates:
        """Off writes nothing else; report and group write every key."""
        unset = [k for k in type(self).model_fields if getattr(self, k) is None]
        if self.mode == "off" and (self.sets or len(unset) != len(type(self).model_fields) - 2):
            raise ValueError("mode off writes only mode and an empty sets")
        if self.mode != "off" and unset:
            raise ValueError(f"mode {self.mode} writes every key; missing: {', '.join(unset)}")
        return self


class Problem(Contract):
    """One thing a person must know about: where and why."""

    file: StrictStr = Field(description="the file (or setting) concerned, as configured")
    line: (
        Annotated[StrictInt, Field(ge=1)]
        | Annotated[StrictStr, Field(pattern=r"^[A-Za-z_]\w*(\[\d+\])*$")]
        | None
    ) = Field(
        description="1-based line; a JSON path (`shapes[3]`, `annotations[17]`) in a JSON annotation file; "
        "`components[k]` (0-based, raster order) of a mask; null for a whole file"
    )
    kind: StrictStr = Field(description="the kind of problem (the keys of problem_counts)")
    reason: StrictStr = Field(description="what is wrong and what was done, for a person to read")
    image: Omittable[StrictStr] = omitted(
        "the image a problem of its annotation concerns, named as `file` names files; left out when `file` "
        "is the image itself or the problem concerns no single image"
    )
    box: Omittable[Box] = omitted(
        "where a box the checks clipped (the box kept) or dropped lies on the picture, in pixels of the "
        "frame the regions use; left out when it lies wholly outside the picture or the problem is no box's"
    )


class PrepareReport(Contract):
    """prepare_report.json: the outcome of one `qwenvl-roi prepare`."""

    ok: StrictBool = Field(
        description="false when strict mode found problems (then no datasets were written)"
    )
    strict: StrictBool = Field(description="whether strict mode was on")
    inputs: Inputs = Field(description="what the input folders held and what was used")
    lines: Lines = Field(description="txt lines read and skipped")
    images: Images = Field(description="images as the trainer will load them")
    boxes: Boxes = Field(description="every box read, accounted for")
    labels: dict[StrictStr, LabelVariants] = Field(description="canonical label -> its raw variants")
    candidate_policy: CandidatePolicy = Field(description="how candidates were drawn")
    position_audit: PositionAudit = Field(description="whether box positions give the answer away")
    split_policy: SplitPolicy = Field(description="how images were grouped")
    splits: Splits = Field(description="per split counts")
    near_duplicates: Omittable[NearDuplicates] = omitted(
        "near-duplicate pictures across the dataset and the splits they span (absent before issue #20)"
    )
    warnings: list[StrictStr] = Field(description="what a person should read")
    problem_counts: dict[StrictStr, Count] = Field(description="problem kind -> problems, sorted by kind")
    problems: list[Problem] = Field(description="every problem, with its file and line")
