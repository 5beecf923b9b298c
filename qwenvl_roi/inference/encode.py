"""Token ids and image tensors built by LLaMA-Factory's own template and mm_plugin, plus verdict positions.

The prompt text comes only from `converters.prompt.build_record`, and the ids from LLaMA-Factory's
`qwen2_vl` template and its mm_plugin (image resize to image_max_pixels / image_min_pixels, then the
processor), exactly as its SFT data processor does. So the prompt at inference equals the training prompt
token for token by construction. Verdict positions are found from the answer text's character offsets,
never by assuming where token boundaries fall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwenvl_roi.converters.meta import DatasetMeta
from qwenvl_roi.converters.prompt import build_record, image_line

TEMPLATE_NAME = "qwen2_vl"  # LLaMA-Factory's template for both Qwen2-VL and Qwen2.5-VL
LAST_LINE_TAIL = "<|im_end|>"  # what follows the last answer line in the qwen2_vl template


class EncodingError(RuntimeError):
    """The tokenised answer does not line up with its text (tokenizer and template disagree)."""


@dataclass(frozen=True)
class VerdictSlot:
    """Where one verdict sits in the full token sequence."""

    key: str  # image key or region id
    start: int  # index of the first verdict token in the full sequence
    gap: str  # text between the previous token's end and the verdict (e.g. " ")
    tail: str  # what ends the line ("\n" or the end-of-turn token)
    token_ids: tuple[int, ...]  # the verdict tokens in the sequence, terminator included


@dataclass(frozen=True)
class EncodedSample:
    """One teacher-forced sample: the full ids, where the prompt ends, and the verdict slots."""

    input_ids: list[int]
    prompt_len: int
    images: list[str]
    slots: list[VerdictSlot]  # image line first, then regions in order
    answer: str = ""  # the teacher-forced assistant text


def load_tokenizer_and_processor(model_path: str, meta: DatasetMeta) -> tuple[Any, Any, Any]:
    """(tokenizer, processor, template) loaded and patched the way LLaMA-Factory's trainer does."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model import load_tokenizer

    model_args = ModelArguments(
        model_name_or_path=str(model_path),
        image_max_pixels=meta.image_max_pixels,
        image_min_pixels=meta.image_min_pixels,
    )
    module = load_tokenizer(model_args)
    tokenizer, processor = module["tokenizer"], module["processor"]
    if processor is None:
        raise EncodingError(f"{model_path}: no multimodal processor found (a Qwen-VL model folder is needed)")
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=TEMPLATE_NAME))
    return tokenizer, processor, template


def _overlapping(offsets: Sequence[tuple[int, int]], lo: int, hi: int) -> list[int]:
    return [i for i, (s, e) in enumerate(offsets) if s < hi and e > lo]


class PromptEncoder:
    """Builds LLaMA-Factory-identical ids for regions samples and the token sequences of verdict words."""

    def __init__(self, tokenizer: Any, processor: Any, template: Any, meta: DatasetMeta) -> None:
        self.tokenizer = tokenizer
        self.processor = processor
        self.template = template
        self.meta = meta
        self._alt_cache: dict[tuple[str, str, str], tuple[int, ...]] = {}

    # --- ids -------------------------------------------------------------------------------------------
    def _messages(self, record: Mapping[str, Any]) -> tuple[list[dict[str, str]], str | None]:
        system = None
        messages = []
        for m in record["messages"]:
            if m["role"] == "system":
                system = m["content"]
            else:
                messages.append({"role": m["role"], "content": m["content"]})
        return messages, system

    def encode_record(self, record: Mapping[str, Any]) -> tuple[list[int], list[int], list[dict[str, str]]]:
        """(prompt ids, answer ids, processed messages) as LLaMA-Factory's SFT processor builds them."""
        messages, system = self._messages(record)
        images = list(record["images"])
        plugin = self.template.mm_plugin
        messages = plugin.process_messages(messages, images, [], [], self.processor)
        prefix, _ = plugin.process_token_ids([], [], images, [], [], self.tokenizer, self.processor)
        pairs = self.template.encode_multiturn(self.tokenizer, messages, system, None)
        prompt_ids = list(prefix)
        for source, target in pairs[:-1]:
            prompt_ids += source + target
        prompt_ids += pairs[-1][0]
        return prompt_ids, list(pairs[-1][1]), messages

    def prompt_ids(self, sample: Mapping[str, Any]) -> list[int]:
        """Ids of system + user turn + assistant header (what generation starts from)."""
        verdicts = [self.meta.normal_word] * len(sample["regions"])
        return self.encode_record(build_record(sample, self.meta, verdicts))[0]

    def encode(
        self,
        sample: Mapping[str, Any],
        verdicts: Sequence[str] | None = None,
        image_abnormal: bool | None = None,
    ) -> EncodedSample:
        """Teacher-forced sample with the given verdicts (default: all normal) and its verdict slots.

        `image_abnormal` overrides the image line that build_record derives from the verdicts (to replay
        exactly what a model generated); the line itself still comes from converters.prompt.
        """
        if verdicts is None:
            verdicts = [self.meta.normal_word] * len(sample["regions"])
        record = build_record(sample, self.meta, verdicts)
        if image_abnormal is not None:
            body = record["messages"][-1]["content"].split("\n", 1)[1:]
            new = "\n".join([image_line(self.meta, image_abnormal), *body])
            record = {**record, "messages": [*record["messages"][:-1], {"role": "assistant", "content": new}]}
        prompt_ids, answer_ids, messages = self.encode_record(record)
        content = messages[-1]["content"]
        answer = content + "<|im_end|>\n"  # the qwen2_vl assistant slot
        enc = self.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) != answer_ids:
            raise EncodingError(
                f"sample {sample.get('sample_id')}: the answer tokenised alone differs from the "
                "template's ids"
            )
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        lines = content.split("\n")
        keys = [self.meta.image_key] + [r["id"] for r in sample["regions"]]
        if len(lines) != len(keys):
            raise EncodingError(
                f"sample {sample.get('sample_id')}: {len(lines)} answer lines for {len(keys)} keys"
            )
        slots = []
        pos = 0
        for i, (line, key) in enumerate(zip(lines, keys, strict=True)):
            head = f"{key}: "
            if not line.startswith(head):
                raise EncodingError(
                    f"sample {sample.get('sample_id')}: answer line {line!r} does not start {head!r}"
                )
            a, b = pos + len(head), pos + len(line)
            tail = "\n" if i < len(lines) - 1 else LAST_LINE_TAIL
            idx = _overlapping(offsets, a, b + len(tail))
            if not idx or idx != list(range(idx[0], idx[-1] + 1)):
                raise EncodingError(f"sample {sample.get('sample_id')}: cannot locate the verdict of {key}")
            prev_end = offsets[idx[0] - 1][1] if idx[0] > 0 else 0
            gap = answer[prev_end:a]
            token_ids = tuple(answer_ids[j] for j in idx)
            expected = self.alternative_ids(gap, answer[a:b], tail)
            if token_ids != expected:
                raise EncodingError(
                    f"sample {sample.get('sample_id')}: verdict {answer[a:b]!r} of {key} tokenises "
                    f"differently in context {token_ids} than alone {expected}"
                )
            slots.append(VerdictSlot(key, len(prompt_ids) + idx[0], gap, tail, token_ids))
            pos += len(line) + 1
        return EncodedSample(prompt_ids + answer_ids, len(prompt_ids), list(record["images"]), slots, content)

    def alternative_ids(self, gap: str, word: str, tail: str) -> tuple[int, ...]:
        """Token ids of `word` (plus its line terminator) as they appear after `gap` in an answer."""
        key = (gap, word, tail)
        if key not in self._alt_cache:
            text = gap + word + tail
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            idx = _overlapping([tuple(o) for o in enc["offset_mapping"]], len(gap), len(text))
            self._alt_cache[key] = tuple(enc["input_ids"][j] for j in idx)
        return self._alt_cache[key]

    def check_alternatives(self, sample: Mapping[str, Any]) -> None:
        """Verify, on one sample, that every label tokenises in context as `alternative_ids` says."""
        for label in self.meta.labels:
            self.encode(sample, [label] * len(sample["regions"]))

    # --- images ------------------------------------------------------------------------------------------
    def mm_inputs(self, batch: Sequence[EncodedSample]) -> dict[str, Any]:
        """pixel_values / image_grid_thw for a batch, from LLaMA-Factory's mm_plugin."""
        images = [img for s in batch for img in s.images]
        imglens = [len(s.images) for s in batch]
        zeros = [0] * len(batch)
        return self.template.mm_plugin.get_mm_inputs(
            images, [], [], imglens, zeros, zeros, [s.input_ids for s in batch], self.processor
        )
