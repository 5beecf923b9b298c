"""ROI- and image-level metrics and the F1-best threshold sweep.

Conventions (also in docs/evaluation.md):
- a region is predicted abnormal when its score >= threshold; a region whose generated answer could not be
  parsed (score None) counts as predicted normal and is counted in `unparsed_regions`;
- undefined ratios (no predicted or no gold positives) are 0.0 with a warning, never NaN;
- AUROC / average precision are None with a warning when only one class is present.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from qwenvl_roi.errors import MetricsError
from qwenvl_roi.evaluation.records import JoinedRegion


@dataclass(frozen=True)
class Counts:
    """Confusion counts."""

    tp: int
    fp: int
    fn: int
    tn: int | None = None


def f1_of(tp: int, fp: int, fn: int) -> float:
    """F1 as one division of counts, 2tp / (2tp + fp + fn) (scikit-learn's form; 0.0 without a true
    positive): equal F1s are then the same float, which 2PR / (P + R) does not give (1/3 from tp 1, fp 3 and
    from tp 2, fp 8 came out one ulp apart, and a tie was broken by the rounding)."""
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def prf(counts: Counts, what: str, warnings: list[str]) -> dict[str, float | int | None]:
    """Precision, recall, F1 from counts; undefined ratios become 0.0 and add a warning."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    if tp + fp == 0:
        warnings.append(f"{what}: nothing predicted abnormal, precision set to 0.0")
        precision = 0.0
    else:
        precision = tp / (tp + fp)
    if tp + fn == 0:
        warnings.append(f"{what}: no positives in gold, recall set to 0.0")
        recall = 0.0
    else:
        recall = tp / (tp + fn)
    f1 = f1_of(tp, fp, fn)
    out: dict[str, float | int | None] = {"precision": precision, "recall": recall, "f1": f1}
    out.update({"tp": tp, "fp": fp, "fn": fn})
    if counts.tn is not None:
        out["tn"] = counts.tn
    return out


def ranking_scores(y_true: Sequence[bool], scores: Sequence[float], what: str, warnings: list[str]) -> dict:
    """AUROC and average precision (scikit-learn); None with a warning when a class is missing."""
    y = np.asarray(y_true, dtype=bool)
    if y.size == 0 or y.all() or not y.any():
        kind = "no samples" if y.size == 0 else ("only positives" if y.all() else "no positives")
        warnings.append(f"{what}: {kind} in gold, AUROC and average precision are undefined (null)")
        return {"auroc": None, "average_precision": None}
    s = np.asarray(scores, dtype=float)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "average_precision": float(average_precision_score(y, s)),
    }


def ranking_score(r: JoinedRegion) -> float:
    """Ranking score: unparsed regions rank as 0 (predicted normal)."""
    return 0.0 if r.score is None else r.score


def _is_pred_abnormal(r: JoinedRegion, threshold: float) -> bool:
    return r.score is not None and r.score >= threshold


def roi_counts(regions: Sequence[JoinedRegion], threshold: float) -> Counts:
    """Region-level confusion counts at a threshold."""
    tp = fp = fn = tn = 0
    for r in regions:
        pred = _is_pred_abnormal(r, threshold)
        if pred and r.positive:
            tp += 1
        elif pred:
            fp += 1
        elif r.positive:
            fn += 1
        else:
            tn += 1
    return Counts(tp, fp, fn, tn)


def roi_labeled_counts(regions: Sequence[JoinedRegion], threshold: float) -> Counts:
    """A true positive also needs the right label; a flagged region with a wrong label is a FP (and its
    gold positive a FN)."""
    tp = fp = fn = 0
    for r in regions:
        pred = _is_pred_abnormal(r, threshold)
        correct = pred and r.positive and r.gold_label is not None and r.pred_label == r.gold_label
        if correct:
            tp += 1
        else:
            if pred:
                fp += 1
            if r.positive:
                fn += 1
    return Counts(tp, fp, fn)


def per_label(
    regions: Sequence[JoinedRegion], threshold: float, labels: Sequence[str], warnings: list[str]
) -> dict[str, dict]:
    """One-vs-rest figures per canonical label: predicted L = flagged with label L; gold L = positive
    with label L."""
    all_labels = sorted(
        set(labels)
        | {r.gold_label for r in regions if r.positive and r.gold_label}
        | {r.pred_label for r in regions if _is_pred_abnormal(r, threshold) and r.pred_label}
    )
    out: dict[str, dict] = {}
    for label in all_labels:
        tp = fp = fn = 0
        for r in regions:
            pred = _is_pred_abnormal(r, threshold) and r.pred_label == label
            gold = r.positive and r.gold_label == label
            tp += pred and gold
            fp += pred and not gold
            fn += gold and not pred
        local: list[str] = []
        figures = prf(Counts(tp, fp, fn), f"label {label!r}", local)
        figures["support"] = tp + fn
        out[label] = figures
        # Per-label zero divisions are expected for rare labels; report them once, compactly.
        if tp + fn == 0:
            warnings.append(f"label {label!r}: no gold positives, its recall is 0.0 by convention")
    return out


NORMAL_CLASS = "normal"
NO_LABEL_CLASS = "(no label)"


def gold_class(r: JoinedRegion) -> str:
    """A region's gold class for the confusion matrix: its label, ``normal``, or ``(no label)``."""
    if not r.positive:
        return NORMAL_CLASS
    return r.gold_label if r.gold_label is not None else NO_LABEL_CLASS


def predicted_class(r: JoinedRegion, threshold: float) -> str:
    """A region's predicted class: ``normal`` below the threshold (or unparsed), else its predicted label."""
    if not _is_pred_abnormal(r, threshold):
        return NORMAL_CLASS
    return r.pred_label if r.pred_label is not None else NO_LABEL_CLASS


def confusion(regions: Sequence[JoinedRegion], threshold: float, labels: Sequence[str]) -> dict[str, list]:
    """Region-level confusion counts: rows gold class, columns predicted class, both including normal.

    Classes: ``normal``, the canonical labels in their order, then any other label seen (sorted), then
    ``(no label)`` when a positive region has no gold label or a flagged one no predicted label.
    """
    gold = [gold_class(r) for r in regions]
    pred = [predicted_class(r, threshold) for r in regions]
    known = [NORMAL_CLASS, *dict.fromkeys(labels)]
    extra = sorted((set(gold) | set(pred)) - set(known) - {NO_LABEL_CLASS})
    classes = known + extra + ([NO_LABEL_CLASS] if NO_LABEL_CLASS in set(gold) | set(pred) else [])
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * len(classes) for _ in classes]
    for g, p in zip(gold, pred, strict=True):
        counts[index[g]][index[p]] += 1
    return {"labels": classes, "counts": counts}


def image_rows(regions: Sequence[JoinedRegion], threshold: float) -> list[tuple[str, bool, float, bool]]:
    """(image, gold abnormal, image score, predicted abnormal), grouped over all samples of an image.

    The image score is the max over all its regions across samples; an image is abnormal in gold when
    any of its regions is positive, and predicted abnormal when any of its regions is.
    """
    gold: dict[str, bool] = defaultdict(bool)
    score: dict[str, float] = defaultdict(float)
    pred: dict[str, bool] = defaultdict(bool)
    for r in regions:
        gold[r.image] |= r.positive
        score[r.image] = max(score[r.image], ranking_score(r))
        pred[r.image] |= _is_pred_abnormal(r, threshold)
    return [(img, gold[img], score[img], pred[img]) for img in sorted(gold)]


def sweep_threshold(regions: Sequence[JoinedRegion]) -> tuple[float, dict[str, float]]:
    """The ROI-level F1-best threshold among the observed scores (ties: the highest such threshold).

    Returns (threshold, {"precision", "recall", "f1"} at it). Raises MetricsError when there is nothing
    to choose from (no regions, no positives, no scores).
    """
    if not regions:
        raise MetricsError("cannot choose a threshold: the validation set has no regions")
    n_pos = sum(r.positive for r in regions)
    if n_pos == 0:
        raise MetricsError("cannot choose a threshold: the validation gold has no positive regions")
    scored = [(r.score, r.positive) for r in regions if r.score is not None]
    if not scored:
        raise MetricsError("cannot choose a threshold: no validation region has a score (all unparsed)")
    scores = np.array([s for s, _ in scored], dtype=float)
    pos = np.array([p for _, p in scored], dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, pos = scores[order], pos[order]
    tp_cum = np.cumsum(pos)
    fp_cum = np.cumsum(~pos)
    # the last index of each distinct score: predicting abnormal for score >= that value
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tp, fp = tp_cum[last], fp_cum[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    # f1_of for every candidate: one correctly rounded division of integers, so exactly equal F1s (ties)
    # are equal floats, and F1s of different counts (denominators far below 2**26) differ by more than an ulp
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    best = f1.max()
    # candidates are ordered from the highest threshold down; take the first (highest) reaching the max
    idx = int(np.flatnonzero(f1 == best)[0])
    return float(scores[last[idx]]), {
        "precision": float(precision[idx]),
        "recall": float(recall[idx]),
        "f1": float(f1[idx]),
    }


def compute_metrics(
    regions: Sequence[JoinedRegion], threshold: float, labels: Sequence[str] = ()
) -> dict[str, object]:
    """All figures of metrics.json for one set of joined regions at a fixed threshold (the file's contract:
    qwenvl_roi/schemas/metrics.py ``Metrics``, checked by `eval` on the whole file before it is written)."""
    if not regions:
        raise MetricsError("no regions to evaluate: every sample has an empty region list")
    warnings: list[str] = []
    n_unparsed = sum(r.score is None for r in regions)
    if n_unparsed:
        warnings.append(
            f"{n_unparsed} region(s) had unparseable generated answers and count as predicted normal"
        )

    roi = prf(roi_counts(regions, threshold), "roi", warnings)
    roi.update(
        ranking_scores([r.positive for r in regions], [ranking_score(r) for r in regions], "roi", warnings)
    )
    roi_labeled = prf(roi_labeled_counts(regions, threshold), "roi_labeled", [])
    unlabeled = sum(r.positive and r.gold_label is None for r in regions)
    if unlabeled:
        warnings.append(f"{unlabeled} positive region(s) have no gold label and can never be labelled right")

    # localisation alone: positive vs negative regions inside images that have a defect
    abnormal_images = {r.image for r in regions if r.positive}
    inside = [r for r in regions if r.image in abnormal_images]
    roi_within = ranking_scores(
        [r.positive for r in inside], [ranking_score(r) for r in inside], "roi_within_abnormal", warnings
    )

    rows = image_rows(regions, threshold)
    y_img = [g for _, g, _, _ in rows]
    s_img = [s for _, _, s, _ in rows]
    tp = sum(g and p for _, g, _, p in rows)
    fp = sum((not g) and p for _, g, _, p in rows)
    fn = sum(g and not p for _, g, _, p in rows)
    tn = len(rows) - tp - fp - fn
    image = prf(Counts(tp, fp, fn, tn), "image", warnings)
    image.update(ranking_scores(y_img, s_img, "image", warnings))

    out: dict[str, object] = {
        "threshold": threshold,
        "counts": {
            "samples": len({r.sample_id for r in regions}),
            "regions": len(regions),
            "positive_regions": sum(r.positive for r in regions),
            "images": len(rows),
            "abnormal_images": sum(y_img),
            "unparsed_regions": n_unparsed,
        },
        "roi": roi,
        "roi_labeled": roi_labeled,
        "roi_within_abnormal": roi_within,
        "per_label": per_label(regions, threshold, labels, warnings),
        "confusion": confusion(regions, threshold, labels),
        "image": image,
        "warnings": warnings,
    }
    if all(r.image_line_score is not None for r in regions):
        # the model's own image-level verdict (first answer line), ranked the same way as image scores
        line: dict[str, float] = defaultdict(float)
        for r in regions:
            line[r.image] = max(line[r.image], float(r.image_line_score or 0.0))
        out["image_line"] = ranking_scores(
            y_img, [line[img] for img, _, _, _ in rows], "image_line", warnings
        )
    return out
