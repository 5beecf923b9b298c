"""The prompt built at inference equals, token for token, what LLaMA-Factory builds from the SFT file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qwenvl_roi.converters.meta import load_dataset_meta
from qwenvl_roi.converters.prompt import build_record

from qwenvl_roi.inference.encode import LAST_LINE_TAIL, PromptEncoder, load_tokenizer_and_processor

from .conftest import IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, make_dataset


def _llamafactory_ids(model: Path, root: Path, out: Path) -> list[list[int]]:
    """input_ids of roi_test as LLaMA-Factory's own SFT data pipeline builds them from sft_test.json."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(model),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": "roi_test",
            "dataset_dir": str(root),
            "template": "qwen2_vl",
            "cutoff_len": 4096,
            "image_max_pixels": IMAGE_MAX_PIXELS,
            "image_min_pixels": IMAGE_MIN_PIXELS,
            "output_dir": str(out),
            "overwrite_cache": True,
            "use_cpu": True,
            "bf16": False,
            "report_to": "none",
        }
    )
    module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    ds = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["train_dataset"]
    return [list(row["input_ids"]) for row in ds]


@pytest.mark.parametrize(("arch", "language"), [("qwen2_5_vl", "zh"), ("qwen2_vl", "en")])
def test_prompt_equals_llamafactory(
    arch: str, language: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    root = make_dataset(tmp_path / "data", model_family=arch, language=language)
    lf_ids = _llamafactory_ids(model, root, tmp_path / "out")
    meta = load_dataset_meta(root)
    encoder = PromptEncoder(*load_tokenizer_and_processor(str(model), meta), meta)
    samples = [json.loads(line) for line in (root / "regions_test.jsonl").read_text().splitlines()]
    assert len(lf_ids) == len(samples) == 10
    for sample, expected in zip(samples, lf_ids, strict=True):
        prompt, answer, _ = encoder.encode_record(build_record(sample, meta))
        assert prompt + answer == expected
        # the teacher-forced (all-normal) sequence has the same prompt, token for token
        enc = encoder.encode(sample)
        assert enc.input_ids[: enc.prompt_len] == expected[: len(prompt)]
        assert enc.prompt_len == len(prompt)
        assert encoder.prompt_ids(sample) == prompt
        # one slot per answer line; each slot's tokens are in the sequence where it says
        assert [s.key for s in enc.slots] == [meta.image_key] + [r["id"] for r in sample["regions"]]
        for slot in enc.slots:
            assert tuple(enc.input_ids[slot.start : slot.start + len(slot.token_ids)]) == slot.token_ids
        # the gold sequence's verdicts decode to the gold words at the same places
        gold = encoder.encode(sample, [r["label"] or meta.normal_word for r in sample["regions"]])
        assert gold.input_ids == expected
        for slot, region in zip(gold.slots[1:], sample["regions"], strict=True):
            text = encoder.tokenizer.decode(list(slot.token_ids)).replace(LAST_LINE_TAIL, "")
            assert text.strip() == (region["label"] or meta.normal_word)
