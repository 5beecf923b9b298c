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

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from .config import DataConfig

Box = tuple[float, float, float, float]
RelBox = tuple[float, float, float, float]  # a box relative to its image's size
Item = tuple[
    Sequence[float], str | None, bool
]  # a candidate: its box, its label (None: not a defect), positive

# Used only when there is no positive at all to learn sizes from: 5-30 % of each side.
FALLBACK_SIZES: tuple[tuple[float, float], ...] = tuple(
    (a / 20, b / 20) for a in range(1, 7) for b in range(1, 7)
)
MAX_TRIES_PER_NEGATIVE = 100  # about this many tries per negative before a sample is left short
SLOTS_PER_NEGATIVE = 1  # first round: sources drawn per wanted negative (+2)
SECOND_ROUND_SOURCES = 12  # second round, per negative still missing: 8 x (1 + 12) ~ 100 tries
CHUNK_ELEMENTS = 4_000_000  # sources x tries x avoided boxes computed at once (memory bound)
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
    """A deterministic random stream seeded only by (seed, image): SHAKE-128 output read as 53-bit floats
    (block n = the digest of key + n as 4 big-endian bytes, 32 big-endian 64-bit words, top 53 bits each).

    Cheaper to create than ``random.Random`` (no Mersenne-Twister seeding per image) and identical on
    every platform; only ``random``, ``floats`` and ``shuffle`` are provided because nothing else is used.
    ``first``: the stream's first block, when computed for many streams at once (image_rngs).
    """

    __slots__ = ("_buf", "_i", "_key", "_n")

    def __init__(self, key: bytes, first: list[float] | None = None):
        self._key = key
        self._n = 0 if first is None else 1
        self._buf: list[float] = [] if first is None else first
        self._i = 0

    def _refill(self) -> None:
        self._n += 1
        self._buf = _floats_of([(_block_key(self._key, self._n), _BLOCK)]).tolist()
        self._i = 0

    @property
    def key(self) -> bytes:
        """The seed bytes of this stream (derived streams append to it)."""
        return self._key

    def random(self) -> float:
        """A float in [0, 1)."""
        i = self._i
        if i >= len(self._buf):
            self._refill()
            i = 0
        self._i = i + 1
        return self._buf[i]

    def floats(self, n: int) -> list[float]:
        """The next n floats in [0, 1) (the same values n calls of random() would give)."""
        i, end = self._i, self._i + n
        if end <= len(self._buf):
            self._i = end
            return self._buf[i:end]
        out = self._buf[i:]
        while len(out) < n:
            self._refill()
            self._i = min(n - len(out), _BLOCK)
            out += self._buf[: self._i]
        return out

    def shuffle(self, x: list) -> None:
        """Fisher-Yates in place."""
        n = len(x)
        if n < 2:
            return
        us = self.floats(n - 1)
        for k in range(n - 1):
            i = n - 1 - k
            j = int(us[k] * (i + 1))
            x[i], x[j] = x[j], x[i]


_BLOCK = 32
_TWO_M53 = 2.0**-53


def _block_key(key: bytes, n: int) -> bytes:
    """What block n (from 1) of the stream ``key`` is the SHAKE-128 digest of."""
    return key + n.to_bytes(4, "big")


def image_rng(seed: int, image_key: str) -> ImageRandom:
    """A generator seeded only by (seed, image), independent of every other image."""
    return image_rngs(seed, [image_key])[0]


def image_rngs(seed: int, image_keys: Sequence[str]) -> list[ImageRandom]:
    """image_rng of every image, their first blocks computed in one go."""
    keys = [f"{seed}\x00candidates\x00{k}\x00".encode() for k in image_keys]
    first = _floats_of([(_block_key(key, 1), _BLOCK) for key in keys]).reshape(-1, _BLOCK).tolist()
    return [ImageRandom(key, block) for key, block in zip(keys, first, strict=True)]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True, eq=False)  # arrays: compared by identity
class BoxPool:
    """Where negatives and decoys come from: every kept positive's (cx/W, cy/H, w/W, h/H) as rows of
    ``array``, sorted, with the running sum of their drawing weights in ``cum``."""

    array: np.ndarray  # (n, 4)
    cum: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.array)


@dataclass(frozen=True, eq=False)
class Compensation:
    """Drawing weights per cell (8x8 grid of centres x two size classes) that undo the checks' pull."""

    median_area: float
    weights: np.ndarray  # (GRID, GRID, 2); 1.0 where no positive fell

    def cells(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The cell of each (cx, cy, w, h) row: column, row (centre clamped to the grid), size class."""
        gx = np.clip(np.trunc(boxes[:, 0] * GRID), 0, GRID - 1).astype(np.int64)
        gy = np.clip(np.trunc(boxes[:, 1] * GRID), 0, GRID - 1).astype(np.int64)
        return gx, gy, (boxes[:, 2] * boxes[:, 3] > self.median_area).astype(np.int64)


def _sorted_rows(relative_boxes: Sequence[RelBox]) -> np.ndarray:
    """The boxes as an (n, 4) array in the order ``sorted`` gives the tuples (by cx, then cy, w, h)."""
    rows = np.array(relative_boxes, dtype=np.float64).reshape(-1, 4)
    return rows[np.lexsort(rows.T[::-1])]


def box_pool(relative_boxes: Sequence[RelBox], compensation: Compensation | None = None) -> BoxPool:
    """The pool of (a split's) positives, weighted by ``compensation`` when given, else uniformly."""
    rows = _sorted_rows(relative_boxes)
    weights = compensation.weights[compensation.cells(rows)] if compensation else np.ones(len(rows))
    return BoxPool(rows, np.cumsum(weights))  # a running sum, added left to right


def _stream(key: bytes, count: int) -> np.ndarray:
    """The first ``count`` floats ImageRandom(key) gives, as one array."""
    blocks = -(-count // _BLOCK)
    return _floats_of([(_block_key(key, n), _BLOCK) for n in range(1, blocks + 1)])[:count]


def compensation(
    boxes: Sequence[RelBox], layouts: Sequence[Layout], policy: CandidatePolicy, seed: int
) -> Compensation | None:
    """Per cell, 1 / (chance that a negative copied from a box of that cell survives the checks in a random
    abnormal image); None without positives.

    Negatives must keep clear of their image's defects, so copies of boxes where defects usually sit (often
    the centre, often large boxes) are rejected more often; left alone, the accepted negatives would sit
    farther out and be smaller than the positives, and position alone would tell them apart. The chance is
    estimated per cell by simulating the same draw (jitter, TRIES_PER_SOURCE retries) against the layouts of
    ACCEPTANCE_TRIALS random abnormal images, on the whole dataset (one table serves every split); all
    trials of all cells are computed at once.
    """
    if not boxes or not layouts:
        return None
    rows = _sorted_rows(boxes)
    areas = np.sort(rows[:, 2] * rows[:, 3])
    weights = np.ones((GRID, GRID, 2))
    table = Compensation(float(areas[len(areas) // 2]), weights)
    gx, gy, big = table.cells(rows)
    cell_id = (gx * GRID + gy) * 2 + big  # sorted(cells) order = ascending id
    ids, sizes = np.unique(cell_id, return_counts=True)
    members = rows[np.argsort(cell_id, kind="stable")]  # each cell's boxes in sorted order, cell after cell
    per = 2 + 2 * TRIES_PER_SOURCE
    u = _stream(f"{seed}\x00acceptance\x00".encode(), len(ids) * ACCEPTANCE_TRIALS * per)
    u = u.reshape(len(ids), ACCEPTANCE_TRIALS, per)
    starts = np.cumsum(sizes) - sizes
    pick = starts[:, None] + (u[..., 0] * sizes[:, None]).astype(np.int64)  # (cells, trials)
    cx, cy, w, h = (members[pick, k][..., None] for k in range(4))  # (cells, trials, 1)
    which = (u[..., 1] * len(layouts)).astype(np.int64).reshape(-1)  # each trial's layout
    jx, jy = u[..., 2::2], u[..., 3::2]  # (cells, trials, tries)
    x1 = np.minimum(np.maximum(cx + (2.0 * jx - 1.0) * JITTER * w - w / 2, 0.0), 1.0 - w)
    y1 = np.minimum(np.maximum(cy + (2.0 * jy - 1.0) * JITTER * h - h / 2, 0.0), 1.0 - h)
    x1, y1 = x1.reshape(len(which), -1), y1.reshape(len(which), -1)  # (trials of all cells, tries)
    x2, y2 = x1 + w.reshape(-1, 1), y1 + h.reshape(-1, 1)
    clear = np.zeros(len(which), bool)
    for trials, keep, cover, at in _by_layout_size(which, layouts, policy, TRIES_PER_SOURCE):
        box = (x1[trials], y1[trials], x2[trials], y2[trials])
        ok = _clear_of(*box, keep[at, None], cover[at, None], policy.max_iou)
        clear[trials] = ok.any(axis=1)  # a trial succeeds at its first clear try
    accepted = clear.reshape(len(ids), ACCEPTANCE_TRIALS).sum(axis=1)
    rate = (accepted + 1) / (ACCEPTANCE_TRIALS + 1)
    weights[np.unravel_index(ids, weights.shape)] = 1.0 / np.maximum(rate, MIN_ACCEPTANCE)
    return table


def _by_layout_size(
    which: np.ndarray, layouts: Sequence[Layout], policy: CandidatePolicy, tries: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The trials (each naming its layout in ``which``) in groups of layouts of about the same box count,
    each group in chunks bounded in memory: (trial rows, the group's keep and cover arrays, each row's
    layout in them). One crowded layout then pads only the trials that drew it, not every trial."""
    count = np.array([max(1, len(lay.positives), len(lay.defects)) for lay in layouts])
    size_class = np.ceil(np.log2(count[which])).astype(np.int64)
    for c in np.unique(size_class):
        rows = np.flatnonzero(size_class == c)
        chosen, at = np.unique(which[rows], return_inverse=True)
        keep = _avoid_array([layouts[i].positives for i in chosen], 1.0)
        cover = _avoid_array([layouts[i].defects for i in chosen], policy.max_cover)
        step = max(1, CHUNK_ELEMENTS // (tries * max(keep.shape[1], cover.shape[1])))
        for start in range(0, len(rows), step):
            yield rows[start : start + step], keep, cover, at.reshape(-1)[start : start + step]


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


def _clear_of(
    x1: np.ndarray,
    y1: np.ndarray,
    x2: np.ndarray,
    y2: np.ndarray,
    keep: np.ndarray,
    cover: np.ndarray,
    max_iou: float,
) -> np.ndarray:
    """For boxes (x1, y1, x2, y2) of any shape S: IoU <= max_iou with every ``keep`` box and at most
    max_cover of every ``cover`` box's area covered (S + (boxes, 5) arrays of _avoid_array, broadcast)."""
    ok = np.ones(np.broadcast_shapes(x1.shape, x2.shape), bool)
    x1, y1, x2, y2 = (v[..., None] for v in (x1, y1, x2, y2))
    area = (x2 - x1) * (y2 - y1)
    for b, is_cover in ((keep, False), (cover, True)):
        iw = np.minimum(x2, b[..., 2]) - np.maximum(x1, b[..., 0])
        ih = np.minimum(y2, b[..., 3]) - np.maximum(y1, b[..., 1])
        inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
        # cover: more than max_cover of the box's area; IoU: above max_iou, written without a division
        limit = b[..., 4] if is_cover else max_iou * (area + b[..., 4] - inter)
        ok &= ~((inter > 0) & (inter > limit)).any(axis=-1)
    return ok


def _floats_of(requests: Sequence[tuple[bytes, int]]) -> np.ndarray:
    """For each (key, count): ``count`` floats in [0, 1) from SHAKE-128 of ``key`` (big-endian 64-bit words,
    top 53 bits), all in one array: one hash call per request and one conversion for all of them."""
    digest = b"".join([hashlib.shake_128(key).digest(8 * count) for key, count in requests])
    words = np.frombuffer(digest, dtype=">u8")
    return (words >> np.uint64(11)).astype(np.float64) * _TWO_M53


@dataclass(slots=True)
class _Request:
    """The negatives one sample needs, and what they must keep clear of; ``out`` is filled by _fill."""

    key: bytes
    n: int
    width: int
    height: int
    keep_clear: Sequence[Box]
    defects: Sequence[Box]
    pool: BoxPool
    out: list[list[int]] = field(default_factory=list)  # [x1, y1, x2, y2] of each negative found


_PAD = (np.inf, np.inf, -np.inf, -np.inf, 0.0)  # a box nothing intersects: padding for the avoid arrays


def _avoid_array(rows: list[Sequence[Box]], scale: float) -> np.ndarray:
    """(requests, most boxes, 5): x1, y1, x2, y2 and ``scale`` x area per box, padded with _PAD."""
    lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    out = np.tile(np.array(_PAD), (len(rows), max(1, int(lens.max(initial=0))), 1))
    total = int(lens.sum())
    if total:  # every box is 4 numbers: read flat (np.array would find each box's shape, 10x slower)
        flat = np.fromiter(chain.from_iterable(chain.from_iterable(rows)), np.float64, 4 * total)
        flat = flat.reshape(total, 4)
        row = np.repeat(np.arange(len(rows)), lens)
        col = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
        out[row, col, :4] = flat
        out[row, col, 4] = scale * (flat[:, 2] - flat[:, 0]) * (flat[:, 3] - flat[:, 1])
    return out


def _fill_chunk(reqs: list[_Request], slots: list[int], tag: bytes, policy: CandidatePolicy) -> None:
    """Draw ``slots[i]`` sources for request i, each tried at up to TRIES_PER_SOURCE jitters; a source yields
    its first clear try. The first successful sources, in order, become the request's negatives: exactly
    the sequential rule (copy a positive, re-jitter it up to TRIES_PER_SOURCE times, then draw another),
    computed for all sources of all requests at once, one try at a time for the sources still failing."""
    per = 1 + 2 * TRIES_PER_SOURCE  # which positive, then x and y of each try
    u = _floats_of([(r.key + tag, n * per) for r, n in zip(reqs, slots, strict=True)]).reshape(-1, per)
    owner = np.repeat(np.arange(len(reqs)), slots)
    width = np.array([r.width for r in reqs], dtype=np.float64)[owner]
    height = np.array([r.height for r in reqs], dtype=np.float64)[owner]
    cx, cy, rw, rh = (np.zeros(len(u)) for _ in range(4))
    pooled = np.zeros(len(u), bool)
    pools: dict[int, BoxPool] = {id(r.pool): r.pool for r in reqs}
    pool_of = np.array([id(r.pool) for r in reqs])[owner]
    for pid, pool in pools.items():
        m = pool_of == pid
        if len(pool):
            idx = np.searchsorted(pool.cum, u[m, 0] * pool.cum[-1], side="right")
            cx[m], cy[m], rw[m], rh[m] = pool.array[np.minimum(idx, len(pool) - 1)].T
            pooled[m] = True
        else:
            fallback = np.array(FALLBACK_SIZES)[(u[m, 0] * len(FALLBACK_SIZES)).astype(np.int64)]
            rw[m], rh[m] = fallback.T
    floor_side = max(1, math.ceil(policy.min_box_size))
    w = np.minimum(np.maximum(np.floor(rw * width + 0.5), np.minimum(width, floor_side)), width)
    h = np.minimum(np.maximum(np.floor(rh * height + 0.5), np.minimum(height, floor_side)), height)
    keep = _avoid_array([r.keep_clear for r in reqs], 1.0)
    cover = _avoid_array([r.defects for r in reqs], policy.max_cover)
    x1 = np.full(len(u), np.nan)
    y1 = np.full(len(u), np.nan)
    active = np.arange(len(u))
    for t in range(TRIES_PER_SOURCE):
        if not len(active):
            break
        a = active
        jx, jy = u[a, 1 + 2 * t], u[a, 2 + 2 * t]
        fx = (cx[a] + (2.0 * jx - 1.0) * JITTER * rw[a]) * width[a] - w[a] / 2
        fy = (cy[a] + (2.0 * jy - 1.0) * JITTER * rh[a]) * height[a] - h[a] / 2
        bx = np.where(  # centre moved by up to JITTER of the size, shifted inside the image
            pooled[a],
            np.minimum(np.where(fx > 0, np.floor(fx + 0.5), 0.0), width[a] - w[a]),
            np.floor(jx * (width[a] - w[a] + 1)),  # no positive anywhere: uniform positions
        )
        by = np.where(
            pooled[a],
            np.minimum(np.where(fy > 0, np.floor(fy + 0.5), 0.0), height[a] - h[a]),
            np.floor(jy * (height[a] - h[a] + 1)),
        )
        ok = _clear_of(bx, by, bx + w[a], by + h[a], keep[owner[a]], cover[owner[a]], policy.max_iou)
        x1[a[ok]], y1[a[ok]] = bx[ok], by[ok]
        active = a[~ok]
    hit_rows = np.flatnonzero(~np.isnan(x1))
    found = np.stack([x1, y1, x1 + w, y1 + h], axis=1)[hit_rows].astype(np.int64).tolist()
    bounds = np.searchsorted(hit_rows, np.cumsum([0, *slots]))
    for i, r in enumerate(reqs):
        r.out += found[bounds[i] : min(bounds[i + 1], bounds[i] + r.n - len(r.out))]


def _fill(reqs: list[_Request], policy: CandidatePolicy) -> None:
    """Fill every request's negatives: a first round of SLOTS_PER_NEGATIVE sources per negative, then, for
    requests still short (crowded images), SECOND_ROUND_SOURCES more per missing one (about
    MAX_TRIES_PER_NEGATIVE tries per negative in all); a request still short stays short."""

    def avoided_count(r: _Request) -> int:
        return max(1, len(r.keep_clear), len(r.defects))

    for tag, sources in ((b"\x00round1", lambda r: SLOTS_PER_NEGATIVE * r.n + 2), (b"\x00round2", None)):
        # each request's negatives depend on it alone, so requests are grouped freely: by box count, so
        # that a crowded image pads only the few requests beside it
        todo = sorted((r for r in reqs if len(r.out) < r.n), key=avoided_count)
        if sources is None:
            slots = [SECOND_ROUND_SOURCES * (r.n - len(r.out)) for r in todo]
        else:
            slots = [sources(r) for r in todo]
        i = 0
        while i < len(todo):  # chunks bounded in memory: sources x tries x the chunk's most boxes
            j, n_sources = i, 0
            while j < len(todo):
                if (
                    j > i
                    and (n_sources + slots[j]) * TRIES_PER_SOURCE * avoided_count(todo[j]) > CHUNK_ELEMENTS
                ):
                    break
                n_sources += slots[j]
                j += 1
            _fill_chunk(todo[i:j], slots[i:j], tag, policy)
            i = j


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


@dataclass(slots=True)
class DrawnSample:
    """One sample's candidates in prompt order; ``wanted`` is the drawn count (more than len if short)."""

    regions: list[dict]
    wanted: int


def _finish(rng: ImageRandom, items: list[Item]) -> list[dict]:
    rng.shuffle(items)
    return [
        {"id": f"R{i}", "box": list(box), "label": label, "positive": positive}
        for i, (box, label, positive) in enumerate(items, start=1)
    ]


def _count(rng: ImageRandom, policy: CandidatePolicy) -> int:
    """The candidate count of one sample: uniform on [lo, hi], the same for both classes."""
    return policy.lo + int(rng.random() * (policy.hi - policy.lo + 1))


@dataclass(frozen=True, slots=True)
class DrawJob:
    """One image to draw samples for (see draw_samples for the fields)."""

    rng: ImageRandom
    width: int
    height: int
    positives: Sequence[tuple[Box, str]]
    pool: BoxPool
    defects: Sequence[Box] = ()
    layouts: Sequence[Layout] = ()


def _plan(
    job: DrawJob, policy: CandidatePolicy
) -> Iterator[tuple[list[Item], int, int, Sequence[Box], Sequence[Box]]]:
    """Per sample of the image: (positives or borrowed decoys, drawn count K, negatives needed, boxes to keep
    IoU-clear of, boxes not to cover)."""
    rng = job.rng
    if not job.positives:
        k = _count(rng, policy)
        if not job.layouts:
            yield [], k, k, (), ()
            return
        layout = job.layouts[int(rng.random() * len(job.layouts))]
        borrowed, avoid = _borrowed(rng, layout, job.width, job.height, policy)
        rng.shuffle(borrowed)
        take = min(len(borrowed), max(1, k // (1 + policy.neg_per_pos)))
        yield [(b, None, False) for b in borrowed[:take]], k, k - take, borrowed, avoid
        return
    order = list(range(len(job.positives)))
    rng.shuffle(order)
    all_pos = [job.positives[i][0] for i in order]
    avoid = list(job.defects) if job.defects else all_pos
    i = 0
    while i < len(order):
        k = _count(rng, policy)
        take = min(len(order) - i, max(1, k // (1 + policy.neg_per_pos)))
        chunk = [job.positives[j] for j in order[i : i + take]]
        i += take
        yield [(b, lab, True) for b, lab in chunk], k, k - take, all_pos, avoid


def draw_many(jobs: Sequence[DrawJob], policy: CandidatePolicy) -> list[list[DrawnSample]]:
    """The samples of many images at once (the negatives of all of them drawn together, see _fill_chunk);
    each image's result depends only on its own job."""
    plans: list[tuple[int, list[Item], int, _Request]] = []
    for j, job in enumerate(jobs):
        for s, (items, k, n, keep_clear, avoid) in enumerate(_plan(job, policy)):
            key = job.rng.key + f"\x00negatives\x00{s}".encode()
            req = _Request(key, n, job.width, job.height, keep_clear, avoid, job.pool)
            plans.append((j, items, k, req))
    _fill([req for _, _, _, req in plans if req.n > 0], policy)
    out: list[list[DrawnSample]] = [[] for _ in jobs]
    for j, items, k, req in plans:
        regions = _finish(jobs[j].rng, items + [(b, None, False) for b in req.out])
        out[j].append(DrawnSample(regions, k))
    return out


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
    Same result as ``draw_many`` with this one image.
    """
    return draw_many([DrawJob(rng, width, height, positives, pool, defects, layouts)], policy)[0]
