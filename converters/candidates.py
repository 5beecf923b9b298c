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
import sys
from array import array
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


class ImageRandom:
    """A deterministic random stream seeded only by (seed, image): SHAKE-128 output read as 53-bit floats.

    Cheaper to create than ``random.Random`` (no Mersenne-Twister seeding per image) and identical on
    every platform; only ``random``, ``randint`` and ``shuffle`` are provided because nothing else is used.
    """

    __slots__ = ("_buf", "_i", "_key", "_n")

    def __init__(self, key: bytes):
        self._key = key
        self._n = 0
        self._buf: Sequence[int] = ()
        self._i = 0

    def _refill(self) -> None:
        self._n += 1
        words = array("Q", hashlib.shake_128(self._key + self._n.to_bytes(4, "big")).digest(8 * _BLOCK))
        if _LITTLE:  # read the digest as big-endian words on every platform
            words.byteswap()
        self._buf = words
        self._i = 0

    def random(self) -> float:
        """A float in [0, 1)."""
        i = self._i
        if i >= len(self._buf):
            self._refill()
            i = 0
        self._i = i + 1
        return (self._buf[i] >> 11) * _TWO_M53

    def floats(self, n: int) -> list[float]:
        """The next n floats in [0, 1) (the same values n calls of random() would give)."""
        out: list[float] = []
        while len(out) < n:
            if self._i >= len(self._buf):
                self._refill()
            take = min(n - len(out), len(self._buf) - self._i)
            out += [(v >> 11) * _TWO_M53 for v in self._buf[self._i : self._i + take]]
            self._i += take
        return out

    def randint(self, a: int, b: int) -> int:
        """An int in [a, b]."""
        return a + int(self.random() * (b - a + 1))

    def shuffle(self, x: list) -> None:
        """Fisher-Yates in place."""
        us = self.floats(max(0, len(x) - 1))
        for k, i in enumerate(range(len(x) - 1, 0, -1)):
            j = int(us[k] * (i + 1))
            x[i], x[j] = x[j], x[i]


_BLOCK = 32
_LITTLE = sys.byteorder == "little"
_TWO_M53 = 2.0**-53


def image_rng(seed: int, image_key: str) -> ImageRandom:
    """A generator seeded only by (seed, image), independent of every other image."""
    return ImageRandom(f"{seed}\x00candidates\x00{image_key}\x00".encode())


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


def _negatives(
    rng: ImageRandom,
    n: int,
    width: int,
    height: int,
    avoid: Sequence[Box],
    pool: Sequence[tuple[float, float]],
    policy: CandidatePolicy,
) -> list[Box]:
    """Up to n integer boxes, sizes taken from the pool (scaled to this image), uniform positions, none
    overlapping a box of ``avoid`` by more than max_iou (rejection sampling, bounded tries)."""
    out: list[Box] = []
    n_pool = len(pool)
    floor_side = max(1, math.ceil(policy.min_box_size))
    min_w, min_h = min(width, floor_side), min(height, floor_side)
    max_iou = policy.max_iou
    tries, limit = 0, n * MAX_TRIES_PER_NEGATIVE
    while len(out) < n and tries < limit:
        batch = min(n - len(out), limit - tries)
        us = rng.floats(3 * batch)  # three numbers per try: size, x, y
        for k in range(0, 3 * batch, 3):
            tries += 1
            rw, rh = pool[int(us[k] * n_pool)]
            w = int(rw * width + 0.5)
            w = min_w if w < min_w else width if w > width else w
            h = int(rh * height + 0.5)
            h = min_h if h < min_h else height if h > height else h
            x1 = int(us[k + 1] * (width - w + 1))
            y1 = int(us[k + 2] * (height - h + 1))
            x2, y2 = x1 + w, y1 + h
            ok = True
            for p in avoid:  # iou() inlined: this loop runs for every try of every negative
                iw = (x2 if x2 < p[2] else p[2]) - (x1 if x1 > p[0] else p[0])
                ih = (y2 if y2 < p[3] else p[3]) - (y1 if y1 > p[1] else p[1])
                if iw > 0 and ih > 0:
                    inter = iw * ih
                    if inter > max_iou * (w * h + (p[2] - p[0]) * (p[3] - p[1]) - inter):
                        ok = False
                        break
            if ok:
                out.append((x1, y1, x2, y2))
    return out


@dataclass
class DrawnSample:
    """One sample's candidates in prompt order; ``wanted`` is the drawn count (more than len if short)."""

    regions: list[dict]
    wanted: int


def _finish(rng: ImageRandom, items: list[tuple[Box, str | None, bool]]) -> list[dict]:
    rng.shuffle(items)
    return [
        {"id": f"R{i}", "box": list(box), "label": label, "positive": positive}
        for i, (box, label, positive) in enumerate(items, start=1)
    ]


def _count(rng: ImageRandom, policy: CandidatePolicy) -> int:
    """The candidate count of one sample: uniform on [lo, hi], the same for both classes."""
    return policy.lo + int(rng.random() * (policy.hi - policy.lo + 1))


def draw_samples(
    rng: ImageRandom,
    width: int,
    height: int,
    positives: Sequence[tuple[Box, str]],
    pool: Sequence[tuple[float, float]],
    policy: CandidatePolicy,
) -> list[DrawnSample]:
    """The samples of one image: one for a normal image (no positives), one or more for an abnormal one."""
    if not positives:
        k = _count(rng, policy)
        decoys = _negatives(rng, k, width, height, (), pool, policy)
        return [DrawnSample(_finish(rng, [(b, None, False) for b in decoys]), k)]
    order = list(range(len(positives)))
    rng.shuffle(order)
    all_pos = [positives[i][0] for i in order]
    samples: list[DrawnSample] = []
    i = 0
    while i < len(order):
        k = _count(rng, policy)
        take = min(len(order) - i, max(1, k // (1 + policy.neg_per_pos)))
        chunk = [positives[j] for j in order[i : i + take]]
        i += take
        negs = _negatives(rng, k - take, width, height, all_pos, pool, policy)
        items = [(b, lab, True) for b, lab in chunk] + [(b, None, False) for b in negs]
        samples.append(DrawnSample(_finish(rng, items), k))
    return samples
