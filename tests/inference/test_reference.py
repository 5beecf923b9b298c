"""The conformance test of scoring backends: the predictor's scores, on every registered backend
(qwenvl_roi/inference/backend.py; the `backend_name` fixture iterates the registry, so a new backend is
tested here without a line added), equal an independent reference: LLaMA-Factory's own training data path
(template, image plugin, collator with M-RoPE positions) and a brute-force forward pass per allowed word and
line. A backend that cannot run on this machine is skipped with its reason.

Covers a briefly trained model (so the model's own answer departs from "normal" and later lines are
conditioned on what it wrote), both model families, both prompt languages, batch 1 and padded batches,
labels that start with a digit, a Latin letter and a CJK character, labels sharing first tokens, and
greedy generation. The reference runs in float32, and so does every backend here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl_roi.inference import RegionPredictor
from qwenvl_roi.inference.backend import ScoringBackend

from .conftest import make_dataset
from .lf_reference import LFReference

TOLERANCE = 1e-4
DTYPE = "float32"  # the reference's; a GPU backend's default (bfloat16) would differ by more than TOLERANCE


def _samples(root: Path, split: str, n: int) -> list[dict]:
    lines = (root / f"regions_{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def _compare(predictor: RegionPredictor, reference: LFReference, samples: list[dict], batch_size: int) -> int:
    """Assert predictor == reference on every line; return how many lines the model answered not-normal."""
    meta = predictor.meta
    rows = predictor.score_samples(samples, batch_size=batch_size, progress=False)
    departures = 0
    for sample, row in zip(samples, rows, strict=True):
        ref = reference.score(sample)
        image = ref[0]
        assert row["image_line_score"] == pytest.approx(image["probs"][meta.abnormal_word], abs=TOLERANCE)
        departures += image["greedy"] != meta.normal_word
        assert row["image_verdict"] == image["greedy"], sample["sample_id"]
        for region, line in zip(row["regions"], ref[1:], strict=True):
            probs = line["probs"]
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
            assert region["score"] == pytest.approx(1.0 - probs[meta.normal_word], abs=TOLERANCE), (
                sample["sample_id"],
                region["id"],
            )
            assert region["label"] == max(meta.labels, key=lambda lab, p=probs: p[lab])
            assert region["greedy"] == line["greedy"], (sample["sample_id"], region["id"])
            departures += line["greedy"] != meta.normal_word
    return departures


def test_trained_model_matches_llamafactory_reference(
    merged_model: Path, scored_dataset: Path, backend_name: str
) -> None:
    predictor = RegionPredictor.load(merged_model, meta=scored_dataset, dtype=DTYPE, backend=backend_name)
    assert isinstance(predictor.backend, ScoringBackend) and predictor.backend.name == backend_name
    reference = LFReference(merged_model, predictor.meta)
    samples = _samples(scored_dataset, "val", 6)
    departures = _compare(predictor, reference, samples[:2], batch_size=1)
    departures += _compare(predictor, reference, samples[2:], batch_size=4)
    assert departures > 0  # the model's own answer leaves "normal": conditioning on it is exercised


@pytest.mark.parametrize(("arch", "language"), [("qwen2_5_vl", "zh"), ("qwen2_vl", "en"), ("qwen2_vl", "zh")])
def test_families_and_languages_match_reference(
    arch: str, language: str, backend_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Random-weight models of each family: every line's answer is arbitrary, so later lines are scored
    after non-normal words, multi-token labels and off-path branches often."""
    model = request.getfixturevalue(f"tiny_{arch}")
    root = make_dataset(tmp_path / "data", model_family=arch, language=language, short_prompts=True)
    predictor = RegionPredictor.load(model, meta=root, dtype=DTYPE, backend=backend_name)
    reference = LFReference(model, predictor.meta)
    samples = _samples(root, "test", 3)
    assert len({len(s["regions"]) for s in samples}) > 1  # different lengths: padding inside the batch
    assert _compare(predictor, reference, samples, batch_size=3) > 0


def test_generation_follows_the_greedy_path(
    merged_model: Path, scored_dataset: Path, backend_name: str
) -> None:
    """Greedy generation writes, line by line, the words of the reference's greedy constrained path."""
    predictor = RegionPredictor.load(merged_model, meta=scored_dataset, dtype=DTYPE, backend=backend_name)
    reference = LFReference(merged_model, predictor.meta)
    meta = predictor.meta
    samples = _samples(scored_dataset, "val", 6)
    generated = predictor.generate_samples(samples, batch_size=3, progress=False)
    parsed = 0
    for sample, row in zip(samples, generated, strict=True):
        if row["unparsed"] or row["missing"] or row["extra"] or row["image_verdict"] is None:
            continue
        parsed += 1
        ref = reference.score(sample)
        assert row["image_verdict"] == ref[0]["greedy"]
        for region, line in zip(row["regions"], ref[1:], strict=True):
            assert (region["label"] or meta.normal_word) == line["greedy"]
    assert parsed >= len(samples) // 2, [r["text"] for r in generated]
