"""Candidate invariants: overlap cap, count cap, all positives kept, shuffling, and the same count and size
distributions for normal and abnormal samples."""

from __future__ import annotations

import random
import statistics
from collections import Counter

from qwenvl_roi.converters.candidates import CandidatePolicy, Layout, box_pool, draw_samples, image_rng, iou
from qwenvl_roi.converters.config import DataConfig

POLICY = CandidatePolicy.from_config(DataConfig())  # counts 6..8, 1 negative per positive, IoU cap 0.1


def random_positives(rng: random.Random, n: int, w: int, h: int) -> list[tuple[tuple[int, ...], str]]:
    out = []
    for _ in range(n):
        bw, bh = rng.randint(24, w // 3), rng.randint(24, h // 3)
        x, y = rng.randint(0, w - bw), rng.randint(0, h - bh)
        out.append(((x, y, x + bw, y + bh), rng.choice(["crack", "spall"])))
    return out


def rel_box(b: tuple[int, ...], w: int, h: int) -> tuple[float, float, float, float]:
    return ((b[0] + b[2]) / 2 / w, (b[1] + b[3]) / 2 / h, (b[2] - b[0]) / w, (b[3] - b[1]) / h)


def test_policy_resolves_seed_settings_as_minimums() -> None:
    assert (POLICY.lo, POLICY.hi) == (6, 8)
    p = CandidatePolicy.from_config(
        DataConfig(normal_decoys_per_image=2, abnormal_neg_per_pos=3, max_boxes_per_image=6)
    )
    assert (p.lo, p.hi) == (4, 6)


def test_invariants_on_many_images() -> None:
    rng = random.Random(0)
    pool = box_pool([(0.5, 0.5, 0.1, 0.2), (0.3, 0.7, 0.3, 0.1), (0.7, 0.3, 0.15, 0.15)])
    for i in range(300):
        w, h = 640, 480
        positives = random_positives(rng, rng.randint(1, 9), w, h)
        samples = draw_samples(image_rng(1, f"img{i}"), w, h, positives, pool, POLICY)
        kept = sorted(tuple(r["box"]) for s in samples for r in s.regions if r["positive"])
        assert kept == sorted(tuple(b) for b, _ in positives), "every positive kept exactly once"
        for s in samples:
            assert len(s.regions) <= POLICY.hi
            assert [r["id"] for r in s.regions] == [f"R{k}" for k in range(1, len(s.regions) + 1)]
            pos = [r for r in s.regions if r["positive"]]
            neg = [r for r in s.regions if not r["positive"]]
            assert pos and all(r["label"] in ("crack", "spall") for r in pos)
            assert all(r["label"] is None for r in neg)
            assert len(neg) >= len(pos) * POLICY.neg_per_pos or len(s.regions) < s.wanted
            for n in neg:
                x1, y1, x2, y2 = n["box"]
                assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
                assert all(iou(tuple(n["box"]), p) <= POLICY.max_iou for p, _ in positives)


def test_deterministic_per_image_and_independent_of_other_images() -> None:
    pool = box_pool([(0.5, 0.5, 0.2, 0.2)])
    pos = [((10, 10, 100, 100), "crack")]
    a = draw_samples(image_rng(5, "abnormal/x.jpg"), 500, 400, pos, pool, POLICY)
    random.Random(99).random()  # unrelated randomness elsewhere must not matter
    b = draw_samples(image_rng(5, "abnormal/x.jpg"), 500, 400, pos, pool, POLICY)
    c = draw_samples(image_rng(6, "abnormal/x.jpg"), 500, 400, pos, pool, POLICY)
    assert [s.regions for s in a] == [s.regions for s in b]
    assert [s.regions for s in a] != [s.regions for s in c]


def test_positive_position_is_shuffled() -> None:
    pool = box_pool([(0.6, 0.6, 0.2, 0.2)])
    where = Counter()
    for i in range(400):
        (s,) = draw_samples(image_rng(0, f"i{i}"), 500, 400, [((10, 10, 100, 100), "crack")], pool, POLICY)
        where[next(r["id"] for r in s.regions if r["positive"])] += 1
    assert set(where) >= {f"R{k}" for k in range(1, 7)}
    assert max(where.values()) < 0.3 * 400


def test_count_and_size_distributions_match_between_classes() -> None:
    rng = random.Random(3)
    w, h = 640, 480
    positives_by_image = [random_positives(rng, rng.randint(1, 3), w, h) for _ in range(600)]
    rel = [rel_box(b, w, h) for ps in positives_by_image for b, _ in ps]
    pool = box_pool(rel)
    layouts = [
        Layout(tuple(tuple(v / s for v, s in zip(b, (w, h, w, h), strict=True)) for b, _ in ps), ())
        for ps in positives_by_image
    ]
    counts = {"abnormal": Counter(), "normal": Counter()}
    sizes = {"positive": [], "negative": [], "decoy": []}
    for i, ps in enumerate(positives_by_image):
        for s in draw_samples(image_rng(0, f"a{i}"), w, h, ps, pool, POLICY):
            counts["abnormal"][len(s.regions)] += 1
            for r in s.regions:
                x1, y1, x2, y2 = r["box"]
                sizes["positive" if r["positive"] else "negative"].append((x2 - x1) * (y2 - y1))
        for s in draw_samples(image_rng(0, f"n{i}"), w, h, [], pool, POLICY, layouts=layouts):
            counts["normal"][len(s.regions)] += 1
            sizes["decoy"] += [(r["box"][2] - r["box"][0]) * (r["box"][3] - r["box"][1]) for r in s.regions]
    n_a, n_n = sum(counts["abnormal"].values()), sum(counts["normal"].values())
    for k in range(POLICY.lo, POLICY.hi + 1):
        assert abs(counts["abnormal"][k] / n_a - counts["normal"][k] / n_n) < 0.06, (k, counts)
    assert set(counts["abnormal"]) <= set(range(POLICY.lo, POLICY.hi + 1))
    assert set(counts["normal"]) <= set(range(POLICY.lo, POLICY.hi + 1))
    med = {k: statistics.median(v) for k, v in sizes.items()}
    q = {k: statistics.quantiles(v, n=4) for k, v in sizes.items()}
    for other in ("negative", "decoy"):
        assert abs(med[other] / med["positive"] - 1) < 0.15, med
        assert (
            abs(q[other][0] / q["positive"][0] - 1) < 0.2 and abs(q[other][2] / q["positive"][2] - 1) < 0.2
        ), q


def test_fallback_sizes_without_positives() -> None:
    (s,) = draw_samples(image_rng(0, "n"), 300, 200, [], box_pool([]), POLICY)
    assert POLICY.lo <= len(s.regions) <= POLICY.hi
    for r in s.regions:
        x1, y1, x2, y2 = r["box"]
        assert 0.05 * 300 - 1 <= x2 - x1 <= 0.3 * 300 + 1


def test_crowded_image_is_short_of_negatives_but_keeps_its_positive() -> None:
    policy = CandidatePolicy(lo=4, hi=4, neg_per_pos=1, max_iou=0.0, min_box_size=4)
    (s,) = draw_samples(image_rng(0, "full"), 100, 80, [((0, 0, 100, 80), "crack")], box_pool([]), policy)
    assert s.wanted == 4 and [r["positive"] for r in s.regions] == [True]
