"""Scoring mechanics: the word-tree arithmetic, batch-size independence, and the two ways the "hf" backend
runs a continuation (re-using the cached prefix, or re-running the whole sequence) giving the same numbers.
The scores themselves are checked against LLaMA-Factory's pipeline in test_reference.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qwenvl_roi.errors import EncodingError
from qwenvl_roi.inference.predictor import RegionPredictor
from qwenvl_roi.inference.scoring import WordTree

from .conftest import make_dataset


@pytest.fixture(scope="module")
def zh_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("zh-data"), language="zh", short_prompts=True)


@pytest.fixture(scope="module")
def random_predictor(tiny_qwen2_5_vl: Path, zh_dataset: Path) -> RegionPredictor:
    return RegionPredictor.load(tiny_qwen2_5_vl, meta=zh_dataset)


def _samples(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"regions_{split}.jsonl").read_text().splitlines()]


def test_batching_does_not_change_scores(random_predictor: RegionPredictor, zh_dataset: Path) -> None:
    samples = _samples(zh_dataset, "val")[:5]  # different lengths -> padding inside the batch
    one = random_predictor.score_samples(samples, batch_size=1, progress=False)
    many = random_predictor.score_samples(samples, batch_size=5, progress=False)
    for a, b in zip(one, many, strict=True):
        assert a["sample_id"] == b["sample_id"] and a["image_verdict"] == b["image_verdict"]
        assert a["image_line_score"] == pytest.approx(b["image_line_score"], abs=1e-5)
        for ra, rb in zip(a["regions"], b["regions"], strict=True):
            assert ra["score"] == pytest.approx(rb["score"], abs=1e-5)
            assert ra["label"] == rb["label"] and ra["greedy"] == rb["greedy"]


def test_rerun_path_equals_cached_prefix_path(tiny_qwen2_5_vl: Path, zh_dataset: Path) -> None:
    """Models whose cache cannot be cut (linear attention) re-run whole sequences: same scores."""
    samples = _samples(zh_dataset, "test")[:4]
    cached = RegionPredictor.load(tiny_qwen2_5_vl, meta=zh_dataset)
    rerun = RegionPredictor.load(tiny_qwen2_5_vl, meta=zh_dataset)
    rerun.backend.reuse_prefix = False
    a = cached.score_samples(samples, batch_size=4, progress=False)
    b = rerun.score_samples(samples, batch_size=4, progress=False)
    assert cached.backend.reuse_prefix is True
    departed = 0
    for x, y in zip(a, b, strict=True):
        assert x["image_line_score"] == pytest.approx(y["image_line_score"], abs=1e-5)
        for rx, ry in zip(x["regions"], y["regions"], strict=True):
            assert rx["score"] == pytest.approx(ry["score"], abs=1e-5) and rx["greedy"] == ry["greedy"]
            departed += rx["greedy"] != cached.meta.normal_word
    assert departed  # continuations really ran


@pytest.mark.parametrize(("arch", "cuts"), [("qwen2_vl", True), ("qwen3_5", False)])
def test_hf_backend_cuts_the_cache_only_where_it_can(
    arch: str, cuts: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Qwen3.5's linear-attention cache cannot be cut at a token: its continuations re-run whole sequences
    (the conformance test, test_reference.py, holds both paths' numbers to LLaMA-Factory's)."""
    root = make_dataset(tmp_path / "data", model_family=arch, short_prompts=True)
    predictor = RegionPredictor.load(request.getfixturevalue(f"tiny_{arch}"), meta=root)
    predictor.score_samples(_samples(root, "test")[:1], progress=False)
    assert predictor.backend.reuse_prefix is cuts


def test_word_tree_arithmetic() -> None:
    # words: normal = (1, 9), a = (1, 2, 9), b = (3, 4, 9), c = (3, 5, 9)
    tree = WordTree({"normal": (1, 9), "a": (1, 2, 9), "b": (3, 4, 9), "c": (3, 5, 9)})
    assert tree.branches == {(): (1, 3), (1,): (2, 9), (3,): (4, 5)}
    logits = {(): [0.0, 0.0], (1,): [0.0, 0.0], (3,): [2.0, 0.0]}
    p = tree.probabilities(logits)
    e = math.e**2
    assert p["normal"] == pytest.approx(0.25) and p["a"] == pytest.approx(0.25)
    assert p["b"] == pytest.approx(0.5 * e / (e + 1)) and p["c"] == pytest.approx(0.5 / (e + 1))
    assert sum(p.values()) == pytest.approx(1.0)
    # greedy descends branch by branch; ties go to the lowest token id, as argmax does
    assert tree.greedy(logits) == "a"  # () tie -> 1; (1,) tie -> 2
    assert tree.greedy({(): [0.0, 1.0], (1,): [0.0, 0.0], (3,): [0.0, 3.0]}) == "c"
    # the greedy word need not be the most probable one: greedy decoding does not look ahead
    skewed = {(): [0.1, 0.0], (1,): [0.0, 0.0], (3,): [9.0, 0.0]}
    assert (
        tree.greedy(skewed) == "a" and max(tree.probabilities(skewed).items(), key=lambda kv: kv[1])[0] == "b"
    )
    with pytest.raises(EncodingError, match="one is a prefix of the other"):
        WordTree({"x": (1,), "y": (1, 2)})
