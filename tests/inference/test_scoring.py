"""Scoring mode: the one-pass prefix-tree probabilities equal a brute-force computation, batching does
not change scores, and the scoring arithmetic handles shared prefixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qwenvl_roi.inference.predictor import RegionPredictor
from qwenvl_roi.inference.scoring import plan_slot, word_probabilities

from .conftest import make_dataset


@pytest.fixture(scope="module")
def zh_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chinese words: the tiny tokenizer cuts them into bytes, so 正常 (normal) shares its first token with
    渗水, and 裂缝 / 裂纹 share a prefix that 正常 does not (an extra pass)."""
    return make_dataset(tmp_path_factory.mktemp("zh-data"), language="zh", short_prompts=True)


@pytest.fixture(scope="module")
def random_predictor(tiny_qwen2_5_vl: Path, zh_dataset: Path) -> RegionPredictor:
    return RegionPredictor.load(tiny_qwen2_5_vl, meta=zh_dataset)


def _samples(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"regions_{split}.jsonl").read_text().splitlines()]


def _brute_force(predictor: RegionPredictor, sample: dict) -> list[dict[str, float]]:
    """P(word) per slot: a separate full forward pass for every tree node, softmax over its branches."""
    enc = predictor.encoder.encode(sample)
    meta = predictor.meta
    out = []
    for k, slot in enumerate(enc.slots):
        words = [meta.normal_word, meta.abnormal_word] if k == 0 else [meta.normal_word, *meta.labels]
        seqs = {w: predictor.encoder.alternative_ids(slot.gap, w, slot.tail) for w in words}
        probs = {}
        node_logits: dict[tuple[int, ...], torch.Tensor] = {}
        for w, seq in seqs.items():
            p = 1.0
            for d in range(len(seq)):
                children = sorted({s[d] for s in seqs.values() if len(s) > d and s[:d] == seq[:d]})
                if seq[:d] not in node_logits:
                    ids = enc.input_ids[: slot.start] + list(seq[:d])
                    inputs = predictor._tensors([ids], [enc.images], left_pad=False)
                    with torch.inference_mode():
                        node_logits[seq[:d]] = predictor.model(**inputs).logits[0, -1].double()
                logits = node_logits[seq[:d]]
                p *= float(torch.softmax(logits[children], 0)[children.index(seq[d])])
            probs[w] = p
        out.append(probs)
    return out


def test_scores_equal_brute_force(random_predictor: RegionPredictor, zh_dataset: Path) -> None:
    meta = random_predictor.meta
    enc = random_predictor.encoder
    normal_ids = enc.alternative_ids(" ", meta.normal_word, "\n")
    ids = {lab: enc.alternative_ids(" ", lab, "\n") for lab in meta.labels}
    assert any(t[0] == normal_ids[0] for t in ids.values())  # a label shares the normal word's first token
    assert ids["裂缝"][:2] == ids["裂纹"][:2] and ids["裂缝"][0] != normal_ids[0]  # an off-path branch
    samples = _samples(zh_dataset, "test")[:2]
    got = random_predictor.score_samples(samples, batch_size=2, progress=False)
    samples, got = samples[1:], got[1:]  # brute force on one sample (scored inside a batch of two)
    for sample, row in zip(samples, got, strict=True):
        brute = _brute_force(random_predictor, sample)
        assert row["image_line_score"] == pytest.approx(brute[0][meta.abnormal_word], abs=1e-5)
        for region, probs in zip(row["regions"], brute[1:], strict=True):
            assert sum(probs.values()) == pytest.approx(1.0)
            assert region["score"] == pytest.approx(1.0 - probs[meta.normal_word], abs=1e-5)
            best = max(meta.labels, key=lambda lab, p=probs: p[lab])
            assert region["label"] == best
            assert region["abnormal"] == (region["score"] >= random_predictor.config.threshold)


def test_batching_does_not_change_scores(random_predictor: RegionPredictor, zh_dataset: Path) -> None:
    samples = _samples(zh_dataset, "val")[:5]  # different lengths -> padding inside the batch
    one = random_predictor.score_samples(samples, batch_size=1, progress=False)
    many = random_predictor.score_samples(samples, batch_size=5, progress=False)
    for a, b in zip(one, many, strict=True):
        assert a["sample_id"] == b["sample_id"]
        for ra, rb in zip(a["regions"], b["regions"], strict=True):
            assert ra["score"] == pytest.approx(rb["score"], abs=1e-5)
            assert ra["label"] == rb["label"]


def test_tree_arithmetic_shared_prefix() -> None:
    # words: normal = (1, 9), a = (1, 2, 9), b = (3, 4, 9), c = (3, 5, 9); path = normal
    alts = {"normal": (1, 9), "a": (1, 2, 9), "b": (3, 4, 9), "c": (3, 5, 9)}
    plan = plan_slot(10, alts["normal"], alts)
    on_path = {(q.position, q.prefix): q.children for q in plan.queries}
    assert on_path == {(9, ()): (1, 3), (10, ()): (2, 9), (10, (3,)): (4, 5)}
    logits = {(9, ()): [0.0, 0.0], (10, ()): [0.0, 0.0], (10, (3,)): [2.0, 0.0]}
    p = word_probabilities(plan, logits)
    assert p["normal"] == pytest.approx(0.25) and p["a"] == pytest.approx(0.25)
    e = 2.718281828459045**2
    assert p["b"] == pytest.approx(0.5 * e / (e + 1)) and p["c"] == pytest.approx(0.5 / (e + 1))
    assert sum(p.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="identical token sequences"):
        plan_slot(0, (1,), {"x": (1,), "y": (1,)})
