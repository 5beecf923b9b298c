"""The converters' batched steps against the one-at-a-time computations they replace, on inputs chosen to hit
the edges (halves, the frame border, boxes past the image, crowded layouts):

- every region of a split framed at once (frames.boxes_to_frame_many, prompt.framed_boxes) = the per-image
  boxes_to_frame that test_frames.py / test_family_frames.py hold to LLaMA-Factory, the processors and
  norm1000, for every family; a box that is not four numbers refused as regions_block refuses it;
- the random stream of candidate drawing (candidates.ImageRandom, image_rngs) = SHAKE-128 read by hand;
- the acceptance table (candidates.compensation), all cells and trials at once = the rule in its
  docstring written out as plain loops here;
- every image draws the same negatives alone as in a batch beside a crowded one (requests are grouped by
  their box count).
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from qwenvl_roi.converters.candidates import (
    ACCEPTANCE_TRIALS,
    GRID,
    JITTER,
    MIN_ACCEPTANCE,
    TRIES_PER_SOURCE,
    CandidatePolicy,
    DrawJob,
    ImageRandom,
    Layout,
    box_pool,
    compensation,
    draw_many,
    draw_samples,
    image_rng,
    image_rngs,
)
from qwenvl_roi.converters.config import DataConfig
from qwenvl_roi.converters.frames import boxes_to_frame, boxes_to_frame_many
from qwenvl_roi.converters.meta import build_meta
from qwenvl_roi.converters.prompt import framed_boxes, regions_block

from qwenvl_roi.families import FAMILIES


def _edge_boxes(rng: random.Random, w: int, h: int) -> list[list[float]]:
    """Integer and half-pixel boxes, boxes on the border and past it (as a clipped positive never is, but
    the encoders clamp), degenerate ones."""
    boxes: list[list[float]] = [[0, 0, w, h], [w - 1, h - 1, w, h], [0.5, 0.5, 1.5, 2.5], [w, h, w, h]]
    # coordinates near float's limit, which the regions contract accepts (any finite number)
    boxes += [[0, 0, 2**1023, h], [-(2**1023), 0, 1e308, h], [0.5, -1e308, float(2**1023), 2**1000]]
    for _ in range(40):
        x1, y1 = rng.uniform(-5, w), rng.uniform(-5, h)
        x2, y2 = x1 + rng.uniform(0, w / 2), y1 + rng.uniform(0, h / 2)
        boxes.append([round(x1 * 2) / 2, round(y1 * 2) / 2, round(x2 * 2) / 2, round(y2 * 2) / 2])
        boxes.append([rng.randint(0, w), rng.randint(0, h), rng.randint(0, w + 3), rng.randint(0, h + 3)])
    return boxes


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_framing_many_images_at_once_equals_one_at_a_time(family: str) -> None:
    rng = random.Random(11)
    meta = build_meta(DataConfig(model_family=family), [])
    sizes = [(64, 64), (1920, 1080), (33, 4000), (1, 1), (1025, 767), (300, 200), (7, 3)]
    samples = []
    for k, (w, h) in enumerate(sizes * 3):
        boxes = _edge_boxes(rng, w, h)[: 1 + k % 9] if k < len(sizes) * 2 else []  # some samples with none
        regions = [
            {"id": f"R{i}", "box": b, "label": None, "positive": False} for i, b in enumerate(boxes, 1)
        ]
        samples.append({"width": w, "height": h, "regions": regions})
    batched = framed_boxes(samples, meta)
    for s, rows in zip(samples, batched, strict=True):
        w, h = s["width"], s["height"]
        one = boxes_to_frame([r["box"] for r in s["regions"]], w, h, family, meta.frame_size_for_coords(w, h))
        assert rows == one and all(type(v) is int for row in rows for v in row), (family, w, h)
        assert regions_block(s, meta, rows) == regions_block(s, meta)
    for w, h in sizes:  # many boxes of one image, straight through the array function
        boxes = _edge_boxes(rng, w, h)
        n = len(boxes)
        size = meta.frame_size_for_coords(w, h)
        fw, fh = (np.full(n, size[0]), np.full(n, size[1])) if size else (None, None)
        got = boxes_to_frame_many(np.array(boxes, float), np.full(n, w), np.full(n, h), family, fw, fh)
        assert got.tolist() == boxes_to_frame(boxes, w, h, family, size), (family, w, h)


def test_framing_refuses_a_box_that_is_not_four_numbers() -> None:
    meta = build_meta(DataConfig(model_family="qwen3_vl"), [])
    regions = [{"id": "R1", "box": [10, 20, 30]}, {"id": "R2", "box": [40, 50, 60, 70, 80]}]
    with pytest.raises(ValueError, match=r"not \[x1, y1, x2, y2\]"):
        framed_boxes([{"width": 100, "height": 100, "regions": regions}], meta)


def _shake_floats(key: bytes, n: int) -> list[float]:
    """The stream's rule by hand: block b (from 1) = SHAKE-128 of key + b as 4 big-endian bytes, 256 bytes
    read as 32 big-endian 64-bit words, each word's top 53 bits / 2**53."""
    out: list[float] = []
    block = 0
    while len(out) < n:
        block += 1
        digest = hashlib.shake_128(key + block.to_bytes(4, "big")).digest(256)
        out += [(int.from_bytes(digest[i : i + 8], "big") >> 11) / 2**53 for i in range(0, 256, 8)]
    return out[:n]


def test_the_random_stream_is_shake_128_read_by_hand() -> None:
    key = b"7\x00candidates\x00abnormal/a.jpg\x00"
    want = _shake_floats(key, 100)
    assert ImageRandom(key).floats(100) == want  # across block boundaries
    (preloaded,) = image_rngs(7, ["abnormal/a.jpg"])
    got = (
        [preloaded.random() for _ in range(5)]
        + preloaded.floats(40)
        + [preloaded.random() for _ in range(30)]
    )
    assert got == want[:75]
    stream = image_rng(7, "abnormal/a.jpg")
    assert stream.floats(31) + stream.floats(2) + stream.floats(0) + stream.floats(64) == want[:97]
    shuffled = list(range(10))
    ImageRandom(key).shuffle(shuffled)
    expected = list(range(10))
    for k, i in enumerate(range(9, 0, -1)):  # Fisher-Yates with the stream's first nine floats
        j = int(want[k] * (i + 1))
        expected[i], expected[j] = expected[j], expected[i]
    assert shuffled == expected


def _clear(box, keep, defects, policy: CandidatePolicy) -> bool:
    """The negative rule, written out: IoU <= max_iou with every kept positive, at most max_cover of every
    parsed box's area covered."""
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)
    for p in keep:
        iw, ih = min(x2, p[2]) - max(x1, p[0]), min(y2, p[3]) - max(y1, p[1])
        if iw > 0 and ih > 0 and iw * ih > policy.max_iou * (area + (p[2] - p[0]) * (p[3] - p[1]) - iw * ih):
            return False
    for d in defects:
        iw, ih = min(x2, d[2]) - max(x1, d[0]), min(y2, d[3]) - max(y1, d[1])
        if iw > 0 and ih > 0 and iw * ih > policy.max_cover * (d[2] - d[0]) * (d[3] - d[1]):
            return False
    return True


def _acceptance_by_loops(boxes, layouts, policy: CandidatePolicy, seed: int) -> dict:
    """compensation's table by its docstring, one trial and one try at a time: per cell (8x8 centres x
    above / not above the median area, cells in sorted order), ACCEPTANCE_TRIALS trials that copy a random
    member of the cell, jittered up to TRIES_PER_SOURCE times, into a random layout."""
    boxes = sorted(boxes)
    areas = sorted(b[2] * b[3] for b in boxes)
    median = areas[len(areas) // 2]

    def cell(b):
        gx = min(GRID - 1, max(0, int(b[0] * GRID)))
        return (gx, min(GRID - 1, max(0, int(b[1] * GRID))), int(b[2] * b[3] > median))

    cells: dict = {}
    for b in boxes:
        cells.setdefault(cell(b), []).append(b)
    rng = ImageRandom(f"{seed}\x00acceptance\x00".encode())
    weights = {}
    for key in sorted(cells):
        members, accepted = cells[key], 0
        for _ in range(ACCEPTANCE_TRIALS):
            us = [rng.random() for _ in range(2 + 2 * TRIES_PER_SOURCE)]
            cx, cy, w, h = members[int(us[0] * len(members))]
            layout = layouts[int(us[1] * len(layouts))]
            for t in range(TRIES_PER_SOURCE):
                x = min(max(cx + (2.0 * us[2 + 2 * t] - 1.0) * JITTER * w - w / 2, 0.0), 1.0 - w)
                y = min(max(cy + (2.0 * us[3 + 2 * t] - 1.0) * JITTER * h - h / 2, 0.0), 1.0 - h)
                if _clear((x, y, x + w, y + h), layout.positives, layout.defects, policy):
                    accepted += 1
                    break
        weights[key] = 1.0 / max((accepted + 1) / (ACCEPTANCE_TRIALS + 1), MIN_ACCEPTANCE)
    return {"median": median, "weights": weights}


@pytest.mark.parametrize("crowded", [False, True])
def test_acceptance_table_equals_the_rule_written_as_loops(crowded: bool) -> None:
    rng = random.Random(5)
    layouts, positives = [], []
    for i in range(120):
        n = rng.randint(1, 40 if crowded and i % 7 == 0 else 3)  # a few images with many defects
        boxes = []
        for _ in range(n):
            w, h = rng.uniform(0.02, 0.4), rng.uniform(0.02, 0.4)
            x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            boxes.append((x, y, x + w, y + h))
            positives.append((x + w / 2, y + h / 2, w, h))
        extra = [(0.0, 0.0, 0.05, 1.0)] if i % 3 == 0 else []  # a dropped sliver: only a defect
        layouts.append(Layout(tuple(boxes), tuple(boxes + extra)))
    policy = CandidatePolicy(lo=6, hi=8, neg_per_pos=1, max_iou=0.1, min_box_size=4, max_cover=0.1)
    table = compensation(positives, layouts, policy, seed=3)
    want = _acceptance_by_loops(positives, layouts, policy, seed=3)
    assert table is not None and table.median_area == want["median"]
    got = {
        (gx, gy, big): float(table.weights[gx, gy, big])
        for gx in range(GRID)
        for gy in range(GRID)
        for big in range(2)
        if (gx, gy, big) in want["weights"] or table.weights[gx, gy, big] != 1.0
    }
    assert got == want["weights"]
    assert len(set(got.values())) > 3  # the trials did reject: the table is not flat


def test_each_image_draws_the_same_alone_or_in_a_batch_with_a_crowded_one() -> None:
    """Requests are grouped by box count (a crowded image pads only its neighbours), which is only sound
    because each request's negatives depend on it alone: a batch gives every image what it gets alone."""
    rng = random.Random(8)

    def rel() -> tuple[float, float, float, float]:
        w, h = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3)
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        return (x, y, x + w, y + h)

    crowd = tuple(
        (x, y, x + 0.01, y + 0.01)
        for x, y in ((rng.random() * 0.98, rng.random() * 0.98) for _ in range(300))
    )
    layouts = [Layout((rel(), rel()), (rel(),)) for _ in range(20)] + [Layout(crowd, crowd)]
    pool = box_pool(
        [(rng.random(), rng.random(), rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3)) for _ in range(50)]
    )
    policy = CandidatePolicy(lo=6, hi=8, neg_per_pos=1, max_iou=0.1, min_box_size=4, max_cover=0.1)
    jobs = []
    for i, r in enumerate(image_rngs(0, [f"img{i}" for i in range(120)])):
        positives = [] if i % 2 else [((10 + i, 20, 60 + i, 70), "crack")] * (1 + i % 5)
        jobs.append(DrawJob(r, 640, 480, positives, pool, (), layouts))
    together = draw_many(jobs, policy)
    for i, job in enumerate(jobs):
        alone = draw_samples(
            image_rng(0, f"img{i}"), 640, 480, job.positives, pool, policy, job.defects, layouts
        )
        assert [(s.regions, s.wanted) for s in together[i]] == [(s.regions, s.wanted) for s in alone], i
    assert any(len(s.regions) < s.wanted for drawn in together for s in drawn)  # the crowded ones: short
