"""Candidate regions: positives plus negatives/decoys drawn so nothing but the pixels gives the answer away.

- Every sample's candidate COUNT is drawn from one distribution for both classes: uniform on
  [lo, max_boxes_per_image] with lo = max(normal_decoys_per_image, 1 + abnormal_neg_per_pos). So both seed
  settings act as minimums: a normal image gets at least normal_decoys_per_image decoys, and an abnormal
  sample holds at most K // (1 + abnormal_neg_per_pos) positives, so every positive has at least
  abnormal_neg_per_pos negatives beside it.
- An abnormal image with more positives than fit yields several samples; no positive is ever dropped.
- Negative and decoy sizes are drawn from the positives' relative sizes (w/W, h/H); negatives overlap no
  positive of the image by more than max_neg_iou; the candidate order is shuffled.
- All randomness comes from a generator seeded by (seed, image), so results are deterministic per image.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .config import DataConfig

Box = tuple[float, float, float, float]

# Used only when there is no positive at all to learn sizes from: 5-30 % of each side.
FALLBACK_SIZES: tuple[tuple[float, float], ...] = tuple(
    (a / 20, b / 20) for a in range(1, 7) for b in range(1, 7)
)
MAX_TRIES_PER_NEGATIVE = 100


@dataclass(frozen=True)
class CandidatePolicy:
    """The knobs of candidate drawing, resolved from the config."""

    lo: int
    hi: int
    neg_per_pos: int
    max_iou: float
    min_box_size: float

    @classmethod
    def from_config(cls, cfg: DataConfig) -> CandidatePolicy:
        neg = cfg.abnormal_neg_per_pos
        hi = cfg.max_boxes_per_image
        lo = min(hi, max(cfg.normal_decoys_per_image, 1 + neg))
        return cls(lo, hi, neg, cfg.max_neg_iou, cfg.min_box_size)


def image_rng(seed: int, image_key: str) -> random.Random:
    """A generator seeded only by (seed, image), independent of every other image."""
    digest = hashlib.sha256(f"{seed}\x00candidates\x00{image_key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def size_pool(relative_sizes: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted (w/W, h/H) of every kept positive; the fallback grid when there is none."""
    return sorted(relative_sizes) if relative_sizes else list(FALLBACK_SIZES)


def draw_box(
    rng: random.Random, width: int, height: int, pool: Sequence[tuple[float, float]], min_size: float
) -> Box:
    """One integer box with a size taken from the pool (scaled to this image) at a uniform position."""
    rw, rh = pool[rng.randrange(len(pool))]
    floor_w, floor_h = min(width, max(1, math.ceil(min_size))), min(height, max(1, math.ceil(min_size)))
    w = min(width, max(floor_w, int(math.floor(rw * width + 0.5))))
    h = min(height, max(floor_h, int(math.floor(rh * height + 0.5))))
    x1 = rng.randint(0, width - w)
    y1 = rng.randint(0, height - h)
    return (x1, y1, x1 + w, y1 + h)


def _negatives(
    rng: random.Random,
    n: int,
    width: int,
    height: int,
    avoid: Sequence[Box],
    pool: Sequence,
    policy: CandidatePolicy,
) -> list[Box]:
    out: list[Box] = []
    tries = 0
    while len(out) < n and tries < n * MAX_TRIES_PER_NEGATIVE:
        tries += 1
        box = draw_box(rng, width, height, pool, policy.min_box_size)
        if all(iou(box, p) <= policy.max_iou for p in avoid):
            out.append(box)
    return out


@dataclass
class DrawnSample:
    """One sample's candidates in prompt order; ``wanted`` is the drawn count (more than len if short)."""

    regions: list[dict]
    wanted: int


def _finish(rng: random.Random, items: list[tuple[Box, str | None, bool]]) -> list[dict]:
    rng.shuffle(items)
    return [
        {"id": f"R{i}", "box": list(box), "label": label, "positive": positive}
        for i, (box, label, positive) in enumerate(items, start=1)
    ]


def draw_samples(
    rng: random.Random,
    width: int,
    height: int,
    positives: Sequence[tuple[Box, str]],
    pool: Sequence[tuple[float, float]],
    policy: CandidatePolicy,
) -> list[DrawnSample]:
    """The samples of one image: one for a normal image (no positives), one or more for an abnormal one."""
    if not positives:
        k = rng.randint(policy.lo, policy.hi)
        decoys = _negatives(rng, k, width, height, (), pool, policy)
        return [DrawnSample(_finish(rng, [(b, None, False) for b in decoys]), k)]
    order = list(range(len(positives)))
    rng.shuffle(order)
    all_pos = [positives[i][0] for i in order]
    samples: list[DrawnSample] = []
    i = 0
    while i < len(order):
        k = rng.randint(policy.lo, policy.hi)
        take = min(len(order) - i, max(1, k // (1 + policy.neg_per_pos)))
        chunk = [positives[j] for j in order[i : i + take]]
        i += take
        negs = _negatives(rng, k - take, width, height, all_pos, pool, policy)
        items = [(b, lab, True) for b, lab in chunk] + [(b, None, False) for b in negs]
        samples.append(DrawnSample(_finish(rng, items), k))
    return samples
