"""Candidate regions: positives plus negatives/decoys drawn so nothing but the pixels gives the answer away.

- Every sample's candidate COUNT is drawn from one distribution for both classes: uniform on
  [lo, max_boxes_per_image] with lo = max(normal_decoys_per_image, 1 + abnormal_neg_per_pos). So both seed
  settings act as minimums: a normal image gets at least normal_decoys_per_image decoys, and an abnormal
  sample holds at most K // (1 + abnormal_neg_per_pos) positives, so every positive has at least
  abnormal_neg_per_pos negatives beside it.
- An abnormal image with more positives than fit yields several samples; no positive is ever dropped.
- Negatives and decoys are placed like the positives of the whole dataset: each copies the relative centre
  and size of a random positive (of any image), its centre moved by up to a quarter of its size. So a box's
  position and size do not tell a positive from a negative.
- A negative overlaps no kept positive by more than max_neg_iou (IoU) and covers at most max_neg_cover of
  the area of every box annotated on its image (kept, clipped, or dropped as too small or outside), so no
  sample labelled normal shows a defect.
- A normal sample borrows the layout of a random abnormal image: its positives become decoys and the other
  decoys avoid them as negatives avoid positives, so the layout of a sample does not tell its class.
- The candidate order is shuffled.
- All randomness comes from a generator seeded by (seed, image), so results are deterministic per image.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from .config import DataConfig

Box = tuple[float, float, float, float]
RelBox = tuple[float, float, float, float]  # a box relative to its image's size

# Used only when there is no positive at all to learn sizes from: 5-30 % of each side.
FALLBACK_SIZES: tuple[tuple[float, float], ...] = tuple(
    (a / 20, b / 20) for a in range(1, 7) for b in range(1, 7)
)
MAX_TRIES_PER_NEGATIVE = 100
TRIES_PER_SOURCE = 8  # a rejected negative is re-jittered this often before another positive is copied
JITTER = 0.25
GRID = 8  # cells per side when estimating how often copies of a box survive the checks
ACCEPTANCE_TRIALS = 64  # simulated draws per cell
MIN_ACCEPTANCE = 0.1  # caps a weight at 10


@dataclass(frozen=True)
class CandidatePolicy:
    """The knobs of candidate drawing, resolved from the config."""

    lo: int
    hi: int
    neg_per_pos: int
    max_iou: float
    min_box_size: float
    max_cover: float = 0.1

    @classmethod
    def from_config(cls, cfg: DataConfig) -> CandidatePolicy:
        neg = cfg.abnormal_neg_per_pos
        hi = cfg.max_boxes_per_image
        lo = min(hi, max(cfg.normal_decoys_per_image, 1 + neg))
        return cls(lo, hi, neg, cfg.max_neg_iou, cfg.min_box_size, cfg.max_neg_cover)


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


@dataclass(frozen=True)
class BoxPool:
    """Where negatives and decoys come from: every kept positive's (cx/W, cy/H, w/W, h/H), sorted, each with
    a drawing weight (cumulative in ``cum``)."""

    boxes: tuple[RelBox, ...]
    cum: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.boxes)

    def pick(self, u: float) -> int:
        """The index a uniform u in [0, 1) selects, in proportion to the weights."""
        return min(bisect.bisect_right(self.cum, u * self.cum[-1]), len(self.boxes) - 1)


@dataclass(frozen=True)
class Compensation:
    """Drawing weights per cell (8x8 grid of centres x two size classes) that undo the checks' pull."""

    median_area: float
    weights: dict[tuple[int, int, int], float]

    def cell(self, box: RelBox) -> tuple[int, int, int]:
        cx, cy, w, h = box
        gx = min(GRID - 1, max(0, int(cx * GRID)))
        return (gx, min(GRID - 1, max(0, int(cy * GRID))), int(w * h > self.median_area))

    def weight(self, box: RelBox) -> float:
        return self.weights.get(self.cell(box), 1.0)


def box_pool(relative_boxes: Sequence[RelBox], compensation: Compensation | None = None) -> BoxPool:
    """The pool of (a split's) positives, weighted by ``compensation`` when given, else uniformly."""
    boxes = tuple(sorted(relative_boxes))
    weights = [compensation.weight(b) for b in boxes] if compensation else [1.0] * len(boxes)
    return BoxPool(boxes, tuple(itertools.accumulate(weights)))


def compensation(
    boxes: Sequence[RelBox], layouts: Sequence[Layout], policy: CandidatePolicy, seed: int
) -> Compensation | None:
    """Per cell, 1 / (chance that a negative copied from a box of that cell survives the checks in a random
    abnormal image); None without positives.

    Negatives must keep clear of their image's defects, so copies of boxes where defects usually sit (often
    the centre, often large boxes) are rejected more often; left alone, the accepted negatives would sit
    farther out and be smaller than the positives, and position alone would tell them apart. The chance is
    estimated per cell by simulating the same draw (jitter, TRIES_PER_SOURCE retries) against the layouts of
    ACCEPTANCE_TRIALS random abnormal images, on the whole dataset (one table serves every split).
    """
    if not boxes or not layouts:
        return None
    boxes = sorted(boxes)
    areas = sorted(b[2] * b[3] for b in boxes)
    table = Compensation(areas[len(areas) // 2], {})
    cells: dict[tuple[int, int, int], list[RelBox]] = {}
    for b in boxes:
        cells.setdefault(table.cell(b), []).append(b)
    rng = ImageRandom(f"{seed}\x00acceptance\x00".encode())
    for key in sorted(cells):
        members = cells[key]
        accepted = 0
        for _ in range(ACCEPTANCE_TRIALS):
            us = rng.floats(2 + 2 * TRIES_PER_SOURCE)
            cx, cy, w, h = members[int(us[0] * len(members))]
            layout = layouts[int(us[1] * len(layouts))]
            for t in range(TRIES_PER_SOURCE):
                x = min(max(cx + (2.0 * us[2 + 2 * t] - 1.0) * JITTER * w - w / 2, 0.0), 1.0 - w)
                y = min(max(cy + (2.0 * us[3 + 2 * t] - 1.0) * JITTER * h - h / 2, 0.0), 1.0 - h)
                if _clear((x, y, x + w, y + h), layout.positives, layout.defects, policy):
                    accepted += 1
                    break
        rate = (accepted + 1) / (ACCEPTANCE_TRIALS + 1)
        table.weights[key] = 1.0 / max(rate, MIN_ACCEPTANCE)
    return table


@dataclass(frozen=True)
class Layout:
    """One abnormal image's boxes relative to its size (x1/W, y1/H, x2/W, y2/H): its kept positives and
    every parsed box (kept, clipped, dropped). A normal sample borrows a layout so its boxes sit where
    defects do."""

    positives: tuple[RelBox, ...]
    defects: tuple[RelBox, ...]


def _clamp_box(x1: float, y1: float, w: int, h: int, width: int, height: int) -> Box:
    """An integer w x h box whose top-left is (x1, y1) rounded, shifted inside the image."""
    x = int(x1 + 0.5) if x1 > 0 else 0
    y = int(y1 + 0.5) if y1 > 0 else 0
    x = min(x, width - w)
    y = min(y, height - h)
    return (x, y, x + w, y + h)


def _clear(box: Box, keep_clear: Sequence[Box], defects: Sequence[Box], policy: CandidatePolicy) -> bool:
    """IoU <= max_iou with every kept positive and at most max_cover of every parsed box's area covered."""
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)
    max_iou, max_cover = policy.max_iou, policy.max_cover
    for p in keep_clear:  # iou() inlined: this loop runs for every try of every negative
        iw = (x2 if x2 < p[2] else p[2]) - (x1 if x1 > p[0] else p[0])
        ih = (y2 if y2 < p[3] else p[3]) - (y1 if y1 > p[1] else p[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            if inter > max_iou * (area + (p[2] - p[0]) * (p[3] - p[1]) - inter):
                return False
    for d in defects:
        iw = (x2 if x2 < d[2] else d[2]) - (x1 if x1 > d[0] else d[0])
        ih = (y2 if y2 < d[3] else d[3]) - (y1 if y1 > d[1] else d[1])
        if iw > 0 and ih > 0 and iw * ih > max_cover * (d[2] - d[0]) * (d[3] - d[1]):
            return False
    return True


def _negatives(
    rng: ImageRandom,
    n: int,
    width: int,
    height: int,
    keep_clear: Sequence[Box],
    defects: Sequence[Box],
    pool: BoxPool,
    policy: CandidatePolicy,
) -> list[Box]:
    """Up to n integer boxes placed like the positives of the dataset, none too close to a defect.

    Each negative copies one positive of the pool (any image): its size and centre scaled to this image, the
    centre moved by up to JITTER of the box's size (so no positive's exact coordinates reappear). A box that
    is not clear (see _clear) is tried again with a new jitter, up to TRIES_PER_SOURCE times, before another
    positive is drawn: so large boxes, which fail more often, are not under-represented. Tries are bounded;
    the sample is short if the image is too crowded. No positive in the dataset: fallback sizes, uniform
    positions.
    """
    out: list[Box] = []
    floor_side = max(1, math.ceil(policy.min_box_size))
    min_w, min_h = min(width, floor_side), min(height, floor_side)
    max_iou, max_cover = policy.max_iou, policy.max_cover
    # the checks of _clear, inlined with the areas precomputed: this loop runs for every try of every negative
    clear_of = [(p[0], p[1], p[2], p[3], (p[2] - p[0]) * (p[3] - p[1])) for p in keep_clear]
    cover_of = [(d[0], d[1], d[2], d[3], max_cover * (d[2] - d[0]) * (d[3] - d[1])) for d in defects]
    boxes, cum = pool.boxes, pool.cum
    n_pool = len(boxes)
    total = cum[-1] if n_pool else 0.0
    tries, limit = 0, n * MAX_TRIES_PER_NEGATIVE
    src, fails = -1, 0
    while len(out) < n and tries < limit:
        batch = min(2 * (n - len(out)) + 4, limit - tries)
        us = rng.floats(3 * batch)  # three numbers per try: which positive (or size), x, y
        for k in range(0, 3 * batch, 3):
            tries += 1
            if src < 0:
                if n_pool:
                    src = bisect.bisect_right(cum, us[k] * total)
                    src = src if src < n_pool else n_pool - 1
                else:
                    src = int(us[k] * len(FALLBACK_SIZES))
            if n_pool:
                cx, cy, rw, rh = boxes[src]
            else:
                rw, rh = FALLBACK_SIZES[src]
            w = int(rw * width + 0.5)
            w = min_w if w < min_w else width if w > width else w
            h = int(rh * height + 0.5)
            h = min_h if h < min_h else height if h > height else h
            if n_pool:  # centre moved by up to JITTER of the size, box shifted inside the image
                fx = (cx + (2.0 * us[k + 1] - 1.0) * JITTER * rw) * width - w / 2
                fy = (cy + (2.0 * us[k + 2] - 1.0) * JITTER * rh) * height - h / 2
                x1 = int(fx + 0.5) if fx > 0 else 0
                y1 = int(fy + 0.5) if fy > 0 else 0
                x1 = x1 if x1 < width - w else width - w
                y1 = y1 if y1 < height - h else height - h
            else:
                x1 = int(us[k + 1] * (width - w + 1))
                y1 = int(us[k + 2] * (height - h + 1))
            x2, y2 = x1 + w, y1 + h
            ok = True
            for px1, py1, px2, py2, pa in clear_of:
                iw = (x2 if x2 < px2 else px2) - (x1 if x1 > px1 else px1)
                ih = (y2 if y2 < py2 else py2) - (y1 if y1 > py1 else py1)
                if iw > 0 and ih > 0 and iw * ih > max_iou * (w * h + pa - iw * ih):
                    ok = False
                    break
            if ok:
                for dx1, dy1, dx2, dy2, limit_area in cover_of:
                    iw = (x2 if x2 < dx2 else dx2) - (x1 if x1 > dx1 else dx1)
                    ih = (y2 if y2 < dy2 else dy2) - (y1 if y1 > dy1 else dy1)
                    if iw > 0 and ih > 0 and iw * ih > limit_area:
                        ok = False
                        break
            if ok:
                out.append((x1, y1, x2, y2))
                src, fails = -1, 0
                if len(out) == n:
                    break
            else:
                fails += 1
                if fails >= TRIES_PER_SOURCE:
                    src, fails = -1, 0
    return out


def _borrowed(
    rng: ImageRandom, layout: Layout, width: int, height: int, policy: CandidatePolicy
) -> tuple[list[Box], list[Box]]:
    """A layout scaled to this image and shifted as a whole by up to JITTER of its mean box size:
    (its positives as integer boxes, its parsed boxes)."""
    n = len(layout.positives)
    mw = sum(b[2] - b[0] for b in layout.positives) / n
    mh = sum(b[3] - b[1] for b in layout.positives) / n
    dx, dy = ((2.0 * u - 1.0) * JITTER for u in rng.floats(2))
    dx, dy = dx * mw, dy * mh
    floor_side = max(1, math.ceil(policy.min_box_size))
    min_w, min_h = min(width, floor_side), min(height, floor_side)
    boxes = []
    for x1, y1, x2, y2 in layout.positives:
        w = min(width, max(min_w, int((x2 - x1) * width + 0.5)))
        h = min(height, max(min_h, int((y2 - y1) * height + 0.5)))
        cx, cy = ((x1 + x2) / 2 + dx) * width, ((y1 + y2) / 2 + dy) * height
        boxes.append(_clamp_box(cx - w / 2, cy - h / 2, w, h, width, height))
    defects = [
        ((x1 + dx) * width, (y1 + dy) * height, (x2 + dx) * width, (y2 + dy) * height)
        for x1, y1, x2, y2 in layout.defects
    ]
    return boxes, defects + boxes


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
    pool: BoxPool,
    policy: CandidatePolicy,
    defects: Sequence[Box] = (),
    layouts: Sequence[Layout] = (),
) -> list[DrawnSample]:
    """The samples of one image: one for a normal image (no positives), one or more for an abnormal one.

    ``defects``: every parsed box of the image (kept, clipped, dropped; degenerate ones widened to 1 pixel)
    that no negative may cover by more than max_cover; the positives are always included. ``layouts``: the
    abnormal images' layouts; a normal sample borrows one (drawn at random) and draws its decoys exactly as
    an abnormal sample draws positives and negatives, so the boxes' layout does not tell the class.
    """
    if not positives:
        k = _count(rng, policy)
        if not layouts:
            decoys = _negatives(rng, k, width, height, (), (), pool, policy)
            return [DrawnSample(_finish(rng, [(b, None, False) for b in decoys]), k)]
        layout = layouts[int(rng.random() * len(layouts))]
        borrowed, avoid = _borrowed(rng, layout, width, height, policy)
        rng.shuffle(borrowed)
        take = min(len(borrowed), max(1, k // (1 + policy.neg_per_pos)))
        decoys = borrowed[:take] + _negatives(rng, k - take, width, height, borrowed, avoid, pool, policy)
        return [DrawnSample(_finish(rng, [(b, None, False) for b in decoys]), k)]
    order = list(range(len(positives)))
    rng.shuffle(order)
    all_pos = [positives[i][0] for i in order]
    avoid = list(defects) if defects else all_pos
    samples: list[DrawnSample] = []
    i = 0
    while i < len(order):
        k = _count(rng, policy)
        take = min(len(order) - i, max(1, k // (1 + policy.neg_per_pos)))
        chunk = [positives[j] for j in order[i : i + take]]
        i += take
        negs = _negatives(rng, k - take, width, height, all_pos, avoid, pool, policy)
        items = [(b, lab, True) for b, lab in chunk] + [(b, None, False) for b in negs]
        samples.append(DrawnSample(_finish(rng, items), k))
    return samples
