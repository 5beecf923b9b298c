"""The scoring-backend seam: the registry, what any backend must provide, that the scorer needs nothing but
values of candidate tokens (log-probs from whole sequences, no cache hints, give the same scores), the
typed predict job, and that detector inputs are never changed behind the caller's back.

Whether a backend's scores are right is the conformance test's job (test_reference.py, every registered
backend)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from qwenvl_roi.inference.backend import (
    BACKENDS,
    BackendError,
    Pass,
    Request,
    ScoringBackend,
    backend_names,
    get_backend,
    register_backend,
    unregister_backend,
)

PROTOCOL_METHODS = ("unavailable", "load", "score", "release", "generate")


def test_registry_names_and_errors() -> None:
    from qwenvl_roi.inference.backends.hf import HFBackend

    assert backend_names()[: len(BACKENDS)] == list(BACKENDS) and "hf" in BACKENDS
    assert get_backend("hf") is HFBackend
    with pytest.raises(BackendError, match=r"unknown scoring backend 'nope' \(registered: hf"):
        get_backend("nope")
    with pytest.raises(BackendError, match="already registered"):
        register_backend("hf", HFBackend)
    register_backend("by-path", "qwenvl_roi.inference.backends.hf:HFBackend")
    try:
        assert get_backend("by-path") is HFBackend  # imported on first use
    finally:
        unregister_backend("by-path")
    assert "by-path" not in backend_names()


@pytest.mark.parametrize("name", backend_names())
def test_every_registered_backend_has_the_protocol(name: str) -> None:
    """What the conformance test cannot see when a backend is skipped here (not installed, no GPU)."""
    cls = get_backend(name)
    assert cls.name == name
    assert all(callable(getattr(cls, m, None)) for m in PROTOCOL_METHODS), name
    reason = cls.unavailable()
    assert reason is None or (isinstance(reason, str) and reason)


def _samples(root: Path, split: str, n: int) -> list[dict]:
    lines = (root / f"regions_{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def test_whole_sequences_and_log_probs_give_the_same_scores(
    tiny_qwen2_5_vl: Path, scored_dataset: Path
) -> None:
    """A backend shaped like vLLM's mapping (backend.py): every pass run as a whole sequence with the cache
    hints ignored, log-probs returned instead of logits. The scorer only compares values of one position,
    so the scores equal the "hf" backend's (float noise aside) and the written words are the same."""
    from qwenvl_roi.inference import RegionPredictor
    from qwenvl_roi.inference.backends.hf import HFBackend

    class WholeSequenceLogprobs(HFBackend):
        name = "whole-sequence-logprobs"

        def score(self, passes: Any) -> Any:
            self.reuse_prefix = False  # no cache of its own: every pass from its whole `ids`
            plain = [Pass(p.sample, p.images, replace(p.request, cut=0, commit=False)) for p in passes]
            return super().score(plain)

        def release(self, sample: Any) -> None:
            pass

        @staticmethod
        def _values(logits: Any, passes: Any, index: Any) -> Any:
            return HFBackend._values(logits.float().log_softmax(-1), passes, index)

    register_backend(WholeSequenceLogprobs.name, WholeSequenceLogprobs)
    try:
        other = RegionPredictor.load(tiny_qwen2_5_vl, meta=scored_dataset, backend=WholeSequenceLogprobs.name)
    finally:
        unregister_backend(WholeSequenceLogprobs.name)
    hf = RegionPredictor.load(tiny_qwen2_5_vl, meta=scored_dataset)
    samples = _samples(scored_dataset, "test", 4)
    a = hf.score_samples(samples, batch_size=4, progress=False)
    b = other.score_samples(samples, batch_size=4, progress=False)
    assert isinstance(other.backend, ScoringBackend) and other.backend.states == {}
    departed = 0
    for x, y in zip(a, b, strict=True):
        assert x["image_verdict"] == y["image_verdict"]
        assert x["image_line_score"] == pytest.approx(y["image_line_score"], abs=1e-6)
        for rx, ry in zip(x["regions"], y["regions"], strict=True):
            assert rx["score"] == pytest.approx(ry["score"], abs=1e-6)
            assert (rx["label"], rx["greedy"]) == (ry["label"], ry["greedy"])
            departed += rx["greedy"] != hf.meta.normal_word
    assert departed  # continuations and off-path branches ran


def test_hf_backend_refuses_a_cut_it_did_not_commit(tiny_qwen2_5_vl: Path, scored_dataset: Path) -> None:
    from qwenvl_roi.inference import RegionPredictor

    predictor = RegionPredictor.load(tiny_qwen2_5_vl, meta=scored_dataset)
    prompt = predictor.encoder.prompt(_samples(scored_dataset, "test", 1)[0])
    ids = prompt.ids
    got = predictor.backend.score([Pass("s", prompt.images, Request(ids, ((len(ids) - 1, (1, 2)),)))])
    assert list(got[0]) == [len(ids) - 1] and set(got[0][len(ids) - 1]) == {1, 2}
    with pytest.raises(ValueError, match="did not commit"):  # nothing committed for "s"
        predictor.backend.score([Pass("s", prompt.images, Request(ids, ((len(ids) - 1, (1, 2)),), cut=4))])


def test_predict_job_has_every_flag() -> None:
    """The CLI's flags become a PredictJob, field for field (--no-progress as progress)."""
    from qwenvl_roi.inference.cli import add_arguments, job_from_args
    from qwenvl_roi.inference.job import PredictJob

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert set(PredictJob.model_fields) == (dests - {"no_progress"}) | {"progress"}
    argv = [
        "--model", "m", "--adapter", "a", "--boxes", "b.jsonl", "--images", "i", "--meta", "d", "--strict",
        "--out", "o.jsonl", "--batch-size", "7", "--inference-config", "c.json", "--device", "cpu",
        "--dtype", "bfloat16", "--no-progress",
    ]  # fmt: skip
    job = job_from_args(parser.parse_args(argv))
    assert job == PredictJob(
        model="m", adapter="a", boxes="b.jsonl", images="i", meta="d", strict=True, out="o.jsonl",
        batch_size=7, inference_config="c.json", device="cpu", dtype="bfloat16", progress=False,
    )  # fmt: skip
    assert job_from_args(parser.parse_args(["--model", "m", "--regions", "r", "--out", "o"])) == PredictJob(
        model="m", regions="r", out="o"
    )


def test_fingerprint_of_the_hf_backend_is_the_one_before_backends(tmp_path: Path) -> None:
    """A job started before the seam existed resumes: the "hf" stamp keeps its keys and values; another
    backend's numbers are told apart by its name."""
    from qwenvl_roi.inference.job import PredictJob, fingerprint

    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text("{}\n")
    job = PredictJob(model=str(tmp_path), boxes=str(boxes), images=str(tmp_path), out="o.jsonl")
    meta = SimpleNamespace(model_dump_json=lambda: "{}")
    weights = {"model_files": "w", "adapter_files": None}

    def stamp(name: str, device: str, dtype: str) -> dict:
        backend = SimpleNamespace(name=name, device=device, dtype=dtype)
        predictor = SimpleNamespace(meta=meta, config=SimpleNamespace(threshold=0.5), backend=backend)
        return fingerprint(job, predictor, weights, "i")

    hf = stamp("hf", "cpu", "float32")
    assert (hf["dtype"], hf["device_type"]) == ("torch.float32", "cpu") and "backend" not in hf
    assert sorted(hf) == sorted(
        ["model", "adapter", "model_files", "adapter_files", "dataset_meta", "boxes", "images",
         "image_files", "batch_size", "threshold", "dtype", "device_type"]
    )  # fmt: skip
    other = stamp("vllm", "cuda:3", "bfloat16")
    assert (other["backend"], other["device_type"], other["dtype"]) == ("vllm", "cuda", "torch.bfloat16")


def test_check_and_load_leave_their_arguments_alone(scored_dataset: Path, tmp_path: Path) -> None:
    from qwenvl_roi.converters.meta import load_dataset_meta

    from qwenvl_roi.inference.detections import ImageJob, check, load

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60x40, shown 40x60
    image = tmp_path / "rotated.jpg"
    Image.new("RGB", (60, 40), (120, 120, 120)).save(image, exif=exif)
    job = ImageJob("k", "rotated.jpg", "boxes.jsonl:1", image, [[2, 2, 38, 58], [30, 50, 90, 90]])
    checked = check(job)
    assert job.problems == [] and job.error is None
    assert any("clipped" in p for p in checked.job.problems) and checked.job is not job
    loaded = load(checked, load_dataset_meta(scored_dataset))
    assert checked.picture is None and not any("upright" in p for p in checked.job.problems)
    assert loaded.picture is not None and loaded.picture.size == (40, 60)
    assert any("read upright as 8-bit RGB" in p for p in loaded.job.problems)
    missing = ImageJob("m", "gone.png", "boxes.jsonl:2", tmp_path / "gone.png", [[1, 1, 5, 5]])
    assert check(missing).job.error is not None and missing.error is None
