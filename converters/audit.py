"""Position audit: can a classifier tell the answer from where the boxes sit, without looking at pixels?

Two adversaries, each a gradient-boosted tree model (scikit-learn) cross-validated with folds grouped by image
(so no image is in both the fitting and the scoring fold):

- positive_vs_negative: every region of the abnormal samples, from its box alone (position, size, shape);
- abnormal_vs_normal: every sample, from its boxes' layout (count, spread, sizes, overlaps between boxes).

An AUROC near 0.5 means the boxes give nothing away; prepare warns above LIMIT. Large datasets are audited on
a deterministic subset of images (MAX_IMAGES) to keep the converter near its I/O floor.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LIMIT = 0.6
MIN_IMAGES = 40  # below this an AUROC says nothing: reported as null with the reason
MAX_IMAGES = 1000
FOLDS = 3  # 5 folds give the same figures within about 0.015 and cost 0.1-0.15 s more (10 fits, not 6)


def box_features(box: Sequence[float], width: int, height: int) -> list[float]:
    """One box relative to its image: corners, centre, size, area, aspect, distance from the centre."""
    x1, y1, x2, y2 = box[0] / width, box[1] / height, box[2] / width, box[3] / height
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    aspect = math.log((w + 1e-6) / (h + 1e-6))
    return [x1, y1, x2, y2, cx, cy, w, h, w * h, aspect, math.hypot(cx - 0.5, cy - 0.5)]


def layout_features(samples: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Each sample's boxes as one fixed-length row: count; mean and spread of centre, size and distance from
    the image centre; the extent of all boxes; how they overlap (largest and mean pairwise IoU, pairs that
    touch, boxes touching no other) and how close their centres come. Computed for all samples at once
    (boxes padded to the largest count and masked)."""
    n_max = max((len(s["regions"]) for s in samples), default=0)
    m = len(samples)
    if m == 0 or n_max == 0:
        return np.zeros((m, 21))
    b = np.zeros((m, n_max, 4))
    valid = np.zeros((m, n_max), bool)
    for i, s in enumerate(samples):
        k = len(s["regions"])
        b[i, :k] = [r["box"] for r in s["regions"]]
        b[i, :k] /= (s["width"], s["height"], s["width"], s["height"])
        valid[i, :k] = True
    count = valid.sum(axis=1)
    cx, cy = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    dist = np.hypot(cx - 0.5, cy - 0.5)
    per_box = np.stack([cx, cy, w, h, dist], axis=2)
    cnt = np.maximum(count, 1)[:, None]
    mean = (per_box * valid[..., None]).sum(axis=1) / cnt
    std = np.sqrt((((per_box - mean[:, None, :]) ** 2) * valid[..., None]).sum(axis=1) / cnt)
    iw = np.minimum(b[:, :, None, 2], b[:, None, :, 2]) - np.maximum(b[:, :, None, 0], b[:, None, :, 0])
    ih = np.minimum(b[:, :, None, 3], b[:, None, :, 3]) - np.maximum(b[:, :, None, 1], b[:, None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = w * h
    iou = inter / np.maximum(area[:, :, None] + area[:, None, :] - inter, 1e-12)
    pair = valid[:, :, None] & valid[:, None, :] & ~np.eye(n_max, dtype=bool)[None]
    upper = pair & np.triu(np.ones((n_max, n_max), bool), k=1)[None]
    iou = np.where(pair, iou, 0.0)
    n_pairs = np.maximum(upper.sum(axis=(1, 2)), 1)
    gap = np.hypot(cx[:, :, None] - cx[:, None, :], cy[:, :, None] - cy[:, None, :])
    gap = np.where(upper, gap, np.inf).min(axis=(1, 2))
    return np.column_stack(
        [
            count,
            mean,
            std,
            np.where(valid, dist, np.inf).min(axis=1),
            np.where(valid, b[..., 0], np.inf).min(axis=1),
            np.where(valid, b[..., 1], np.inf).min(axis=1),
            np.where(valid, b[..., 2], -np.inf).max(axis=1),
            np.where(valid, b[..., 3], -np.inf).max(axis=1),
            iou.max(axis=(1, 2)),
            np.where(upper, iou, 0.0).sum(axis=(1, 2)) / n_pairs,
            (upper & (iou > 0)).sum(axis=(1, 2)),
            (valid & (iou.max(axis=2) == 0)).sum(axis=1),
            np.where(np.isfinite(gap), gap, 0.0),
        ]
    )


def _cv_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> float | None:
    """Mean held-out-fold AUROC of a gradient-boosted classifier, folds grouped by image (a per-fold AUROC is
    immune to the class-ratio shifts between folds that bias a pooled one); None when not computable."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from threadpoolctl import threadpool_limits

    n_groups = len(set(groups.tolist()))
    if len(set(y.tolist())) < 2 or n_groups < 2:
        return None
    model = HistGradientBoostingClassifier(
        max_iter=40,
        max_leaf_nodes=7,
        learning_rate=0.12,
        min_samples_leaf=20,
        max_bins=64,
        early_stopping=False,
        random_state=seed,
    )
    cv = GroupKFold(n_splits=min(FOLDS, n_groups), shuffle=True, random_state=seed)
    aucs = []
    with threadpool_limits(1):  # tiny fits: threads only add overhead (and the machine may be shared)
        for train, test in cv.split(x, y, groups):
            if len(set(y[train].tolist())) < 2 or len(set(y[test].tolist())) < 2:
                continue
            model.fit(x[train], y[train])
            aucs.append(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    return round(float(np.mean(aucs)), 4) if aucs else None


def _image_of(sample: Mapping[str, Any]) -> str:
    return str(sample["sample_id"]).rsplit("#", 1)[0]


def position_audit(samples: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:
    """The report's ``position_audit`` section (AUROCs are None when a class is missing or there are fewer
    than MIN_IMAGES images)."""
    images = sorted({_image_of(s) for s in samples})
    head: dict[str, Any] = {
        "limit": LIMIT,
        "classifier": (
            f"HistGradientBoostingClassifier, {FOLDS}-fold GroupKFold by image, mean held-out-fold AUROC"
        ),
    }
    if len(images) < MIN_IMAGES:
        return {
            **head,
            "images": len(images),
            "skipped": f"fewer than {MIN_IMAGES} images",
            "positive_vs_negative": {"auroc": None, "regions": 0},
            "abnormal_vs_normal": {"auroc": None, "samples": 0},
        }
    if len(images) > MAX_IMAGES:  # a deterministic subset, independent of the input order
        images = sorted(images, key=lambda k: hashlib.sha256(f"{seed}\x00{k}".encode()).digest())[:MAX_IMAGES]
    index = {k: i for i, k in enumerate(sorted(images))}
    chosen = [s for s in samples if _image_of(s) in index]
    rows, ys, gs = [], [], []
    for s in chosen:
        if s["source"] != "abnormal":
            continue
        for r in s["regions"]:
            rows.append(box_features(r["box"], s["width"], s["height"]))
            ys.append(int(bool(r["positive"])))
            gs.append(index[_image_of(s)])
    pos_neg = _cv_auroc(np.array(rows), np.array(ys), np.array(gs), seed) if rows else None
    n_regions = len(rows)
    ys = [int(s["source"] == "abnormal") for s in chosen]
    gs = [index[_image_of(s)] for s in chosen]
    abn_norm = _cv_auroc(layout_features(chosen), np.array(ys), np.array(gs), seed) if chosen else None
    return {
        **head,
        "images": len(index),
        "skipped": None,
        "positive_vs_negative": {"auroc": pos_neg, "regions": n_regions},
        "abnormal_vs_normal": {"auroc": abn_norm, "samples": len(chosen)},
    }
