"""The prompt built at inference equals, token for token, what LLaMA-Factory builds from the SFT file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qwenvl_roi.converters.meta import load_dataset_meta

from qwenvl_roi.inference.encode import PromptEncoder, load_tokenizer_and_processor

from .conftest import IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, make_dataset

LAST_LINE_TAIL = "<|im_end|>"  # the qwen2_vl template's end of turn


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
        prompt = encoder.prompt(sample).ids
        gold = [r["label"] or meta.normal_word for r in sample["regions"]]
        answer = encoder.answer(sample, any(r["positive"] for r in sample["regions"]), gold)
        assert list(prompt + answer.ids) == expected  # the gold answer: what LLaMA-Factory trains on
        # every line's path sits where the answer says and decodes to " <word><terminator>"
        words = [meta.abnormal_word if sample["positive_region_ids"] else meta.normal_word, *gold]
        for k, (start, path, word) in enumerate(zip(answer.starts, answer.paths, words, strict=True)):
            assert answer.ids[start : start + len(path)] == path
            end = "\n" if k < len(words) - 1 else LAST_LINE_TAIL
            assert encoder.tokenizer.decode(list(path)) == f" {word}{end}"
            assert path == encoder.word_paths(k, last=k == len(words) - 1)[word]


def test_each_image_is_preprocessed_once_and_batches_are_unchanged(
    tiny_qwen2_5_vl: Path, scored_dataset: Path
) -> None:
    """The encoder's template processes every image once per batch (prompt + collator), and the batch the
    training collator builds from it equals the one from LLaMA-Factory's untouched template."""
    import torch
    from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
    from transformers import AutoModelForImageTextToText

    meta = load_dataset_meta(scored_dataset)
    tokenizer, processor, template = load_tokenizer_and_processor(str(tiny_qwen2_5_vl), meta)
    encoder = PromptEncoder(tokenizer, processor, template, meta)
    calls: list[str] = []
    original = encoder.images.original
    encoder.images.original = lambda images, *rest: calls.extend(images) or original(images, *rest)
    samples = [json.loads(line) for line in (scored_dataset / "regions_val.jsonl").read_text().splitlines()][
        :3
    ]
    prompts = [encoder.prompt(s) for s in samples]
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_qwen2_5_vl))
    features = [
        {"input_ids": list(p.ids), "attention_mask": [1] * len(p.ids), "labels": [-100] * len(p.ids),
         "images": list(p.images), "videos": [], "audios": []}
        for p in prompts
    ]  # fmt: skip
    ours, stock = (
        SFTDataCollatorWith4DAttentionMask(
            template=t, model=model, tokenizer=tokenizer, processor=processor, label_pad_token_id=-100
        )([dict(f) for f in features])
        for t in (encoder.template, template)
    )
    assert sorted(calls) == sorted(s["image"] for s in samples)  # once each, prompt and batch together
    assert ours.keys() == stock.keys() and {"pixel_values", "position_ids"} <= set(ours)
    for key, value in stock.items():
        assert torch.equal(ours[key], value), key
    assert template.mm_plugin._get_mm_inputs != encoder.template.mm_plugin._get_mm_inputs
