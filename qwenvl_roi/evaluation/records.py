"""Load gold regions files and predictions files and join them region by region.

Every problem is reported with file, 1-based line and reason, because a silently dropped or misaligned
sample would make the metrics lie.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from qwenvl_roi.converters.paths import resolve_image
from qwenvl_roi.errors import InputError
from qwenvl_roi.fileio import iter_jsonl
from qwenvl_roi.schemas import errors_text
from qwenvl_roi.schemas.predictions import GeneratedPrediction, RegionsPrediction, RegionsPredictionRow
from qwenvl_roi.schemas.regions import RegionSample
from qwenvl_roi.schemas.types import Number as Finite

__all__ = ["Finite", "GoldSample", "JoinedRegion", "PredSample", "join", "load_gold", "load_predictions"]

#: gold and predictions are read through the published file contracts (qwenvl_roi/schemas): a box of three
#: numbers, a score as a string, NaN or a missing region list is the line's error
GoldSample = RegionSample
PredSample = RegionsPrediction | GeneratedPrediction
_PREDICTION: TypeAdapter[Any] = TypeAdapter(RegionsPredictionRow)


@dataclass(frozen=True)
class JoinedRegion:
    """A gold region next to its prediction."""

    sample_id: str
    image: str
    region_id: str
    positive: bool
    gold_label: str | None
    score: float | None
    pred_label: str | None
    image_line_score: float | None = None  # P(abnormal word) on the answer's image line, when predicted
    box: tuple[float, float, float, float] | None = None  # gold box, original pixels xyxy
    image_size: tuple[int, int] | None = None  # (width, height) the gold file records for the picture


def load_gold(path: str | Path) -> list[tuple[int, GoldSample]]:
    """Read a regions_*.jsonl file; raise InputError when it is empty or malformed. Images are resolved the
    way `predict` resolves them (converters/paths.py: relative to the regions file's folder)."""
    out: list[tuple[int, GoldSample]] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        try:
            sample = RegionSample.model_validate(obj)
        except ValidationError as exc:
            raise InputError(f"{path}:{lineno}: not a regions sample ({errors_text(exc)})") from None
        sample.image = str(resolve_image(sample.image, path))  # as predict resolved it
        if sample.sample_id in seen:
            raise InputError(
                f"{path}:{lineno}: duplicate sample_id {sample.sample_id!r} "
                f"(first on line {seen[sample.sample_id]})"
            )
        seen[sample.sample_id] = lineno  # unique region ids are part of the contract (RegionSample)
        out.append((lineno, sample))
    if not out:
        raise InputError(f"{path}: no samples (the file is empty)")
    return out


def load_predictions(path: str | Path) -> list[tuple[int, PredSample]]:
    """Read a predictions file written by `predict`; raise InputError when it is empty or malformed."""
    out: list[tuple[int, PredSample]] = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.append((lineno, _PREDICTION.validate_python(obj)))
        except ValidationError as exc:
            raise InputError(f"{path}:{lineno}: not a prediction ({errors_text(exc)})") from None
    if not out:
        raise InputError(f"{path}: no predictions (the file is empty)")
    return out


def join(
    pred_path: str | Path, gold_path: str | Path, no_regions: list[str] | None = None
) -> list[JoinedRegion]:
    """Pair every gold region with its predicted score and label.

    Predictions are matched to gold by `sample_id` when they carry one, otherwise by line order (then the
    image paths must agree). Every gold sample and region must have a prediction, and vice versa.
    ``no_regions`` gets ``file:line (sample_id)`` of each gold sample without regions (the contract allows
    one; convert never writes one): it is in no metric, so the caller says so.
    """
    gold = load_gold(gold_path)
    preds = load_predictions(pred_path)
    if all(p.sample_id is not None for _, p in preds):
        by_id: dict[str, tuple[int, PredSample]] = {}
        for lineno, p in preds:
            assert p.sample_id is not None
            if p.sample_id in by_id:
                raise InputError(f"{pred_path}:{lineno}: duplicate sample_id {p.sample_id!r}")
            by_id[p.sample_id] = (lineno, p)
        gold_ids = {g.sample_id for _, g in gold}
        for lineno, p in preds:
            if p.sample_id not in gold_ids:
                raise InputError(f"{pred_path}:{lineno}: sample_id {p.sample_id!r} is not in {gold_path}")
        pairs = []
        for glineno, g in gold:
            if g.sample_id not in by_id:
                raise InputError(
                    f"{gold_path}:{glineno}: sample {g.sample_id!r} has no prediction in {pred_path}"
                )
            pairs.append((glineno, g, *by_id[g.sample_id]))
    else:
        if len(preds) != len(gold):
            raise InputError(
                f"{pred_path}: {len(preds)} predictions without sample_id cannot be matched by order "
                f"to the {len(gold)} samples of {gold_path}"
            )
        pairs = []
        for (glineno, g), (plineno, p) in zip(gold, preds, strict=True):
            if resolve_image(p.image, pred_path) != Path(g.image):
                raise InputError(
                    f"{pred_path}:{plineno}: image {p.image!r} does not match "
                    f"{gold_path}:{glineno} ({g.image!r})"
                )
            pairs.append((glineno, g, plineno, p))

    joined: list[JoinedRegion] = []
    for glineno, g, plineno, p in pairs:
        if not g.regions and no_regions is not None:
            no_regions.append(f"{gold_path}:{glineno} ({g.sample_id})")
        pred_regions = {r.id: r for r in p.regions}
        gold_region_ids = {r["id"] for r in g.regions}
        extra = sorted(set(pred_regions) - gold_region_ids)
        if extra:
            raise InputError(f"{pred_path}:{plineno}: regions {extra} are not in {gold_path}:{glineno}")
        for r in g.regions:
            if r["id"] not in pred_regions:
                raise InputError(
                    f"{pred_path}:{plineno}: region {r['id']!r} of sample {g.sample_id!r} has no prediction"
                )
            pr = pred_regions[r["id"]]
            joined.append(
                JoinedRegion(
                    sample_id=g.sample_id,
                    image=g.image,
                    region_id=r["id"],
                    positive=r["positive"],
                    gold_label=r["label"],
                    score=pr.score,
                    pred_label=pr.label,
                    image_line_score=getattr(p, "image_line_score", None),  # scoring mode only
                    box=tuple(r["box"]),
                    image_size=None if g.width is None or g.height is None else (g.width, g.height),
                )
            )
    return joined
