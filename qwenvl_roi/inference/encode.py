"""Token ids from LLaMA-Factory's own template and image plugin, and where each answer line's verdict sits.

The prompt text comes only from `converters.prompt`, the ids from LLaMA-Factory's template (the model
family's, with its thinking setting: qwenvl_roi/families.py) and mm_plugin
(image resize to image_max_pixels / image_min_pixels, then the processor), exactly as its SFT data processor
builds them, so the prompt at inference equals the training prompt token for token.

A verdict's token *path* is the line as it is tokenised in context, from the token after ``key:`` through
the line's terminator (``\\n``, or the end-of-turn token on the last line): so the space before a word, a
digit that Qwen's pre-tokenizer splits off, or punctuation merged with the newline are all part of it.
Every path is checked against the tokenisation of the whole answer; a tokenizer that merges across the
boundary after ``:`` is refused instead of scored wrongly.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwenvl_roi.converters.meta import DatasetMeta
from qwenvl_roi.converters.prompt import answer_text, build_record
from qwenvl_roi.errors import EncodingError
from qwenvl_roi.families import family


@dataclass(frozen=True)
class Answer:
    """One assistant answer: its token ids and, per line, where the verdict path starts."""

    ids: tuple[int, ...]
    starts: tuple[int, ...]  # index (in ids) of each line's first path token, image line first
    paths: tuple[tuple[int, ...], ...]  # each line's path tokens (through its terminator)


@dataclass(frozen=True)
class Prompt:
    """System + user turn + assistant header of one sample, as LLaMA-Factory encodes it."""

    ids: tuple[int, ...]
    images: tuple[str, ...]


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
    # the family's template and thinking setting, as its recipes train with (qwenvl_roi/families.py)
    template_args = family(meta.model_family).template_args
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(**template_args))
    return tokenizer, processor, template


class _OncePerImage:
    """The image plugin's preprocessing (load, resize, the processor), run once per image while held.

    LLaMA-Factory preprocesses an image twice for one sample: to count its tokens for the prompt and
    again in the collator. Wrapped around a copy of the template's image plugin, each image is processed
    on its own and the results are concatenated, as the processor does for a list; `clear` drops them
    (the predictor holds one batch).
    """

    def __init__(self, original: Any) -> None:
        self.original = original
        self.results: dict[str | int, dict[str, Any]] = {}

    def __call__(self, images: list[Any], videos: list[Any], audios: list[Any], processor: Any) -> dict:
        import torch

        if videos or audios or not images:
            return self.original(images, videos, audios, processor)
        parts = []
        for image in images:
            key = image if isinstance(image, str) else id(image)  # an in-memory picture lives for the batch
            if key not in self.results:
                self.results[key] = dict(self.original([image], [], [], processor))
            parts.append(self.results[key])
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def clear(self) -> None:
        self.results.clear()


class PromptEncoder:
    """LLaMA-Factory-identical ids for regions samples, and the token paths of the allowed words."""

    def __init__(self, tokenizer: Any, processor: Any, template: Any, meta: DatasetMeta) -> None:
        self.tokenizer = tokenizer
        self.processor = processor
        # a copy of the template whose image plugin processes each image once (LLaMA-Factory's registry
        # object stays untouched)
        self.template = copy.copy(template)
        self.template.mm_plugin = copy.copy(template.mm_plugin)
        self.images = _OncePerImage(template.mm_plugin._get_mm_inputs)
        self.template.mm_plugin._get_mm_inputs = self.images
        self.meta = meta
        self.end_of_turn: str = template.stop_words[0]
        suffix = "".join(s for s in template.format_assistant.apply(content="\x00") if isinstance(s, str))
        head, sep, self.assistant_suffix = suffix.partition("\x00")
        if head or not sep or not self.assistant_suffix.startswith(self.end_of_turn):
            raise EncodingError(f"unexpected assistant format of the template: {suffix!r}")
        self._checked_template = False
        self._word_paths: dict[tuple[bool, bool], dict[str, tuple[int, ...]]] = {}

    # --- prompts ------------------------------------------------------------------------------------------
    def _encode_record(self, record: Mapping[str, Any]) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) as LLaMA-Factory's SFT processor builds them for a sharegpt record."""
        system = None
        messages = []
        for m in record["messages"]:
            if m["role"] == "system":
                system = m["content"]
            else:
                messages.append({"role": m["role"], "content": m["content"]})
        images = list(record["images"])
        plugin = self.template.mm_plugin
        messages = plugin.process_messages(messages, images, [], [], self.processor)
        prefix, _ = plugin.process_token_ids([], [], images, [], [], self.tokenizer, self.processor)
        pairs = self.template.encode_multiturn(self.tokenizer, messages, system, None)
        prompt_ids = list(prefix)
        for source, target in pairs[:-1]:
            prompt_ids += source + target
        prompt_ids += pairs[-1][0]
        return prompt_ids, list(pairs[-1][1])

    def prompt(self, sample: Mapping[str, Any]) -> Prompt:
        """The sample's prompt ids (system + user turn with the image tokens + assistant header)."""
        normal = [self.meta.normal_word] * len(sample["regions"])
        record = build_record(sample, self.meta, normal)
        prompt_ids, answer_ids = self._encode_record(record)
        if not self._checked_template:
            # once: the answer tokenised on its own equals the template's answer ids
            alone = self._tokens(record["messages"][-1]["content"] + self.assistant_suffix)
            if alone != answer_ids:
                raise EncodingError(
                    f"sample {sample.get('sample_id')}: the answer tokenised alone differs from the "
                    "template's ids"
                )
            self._checked_template = True
        return Prompt(tuple(prompt_ids), tuple(record["images"]))

    # --- answers ------------------------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer(self, sample: Mapping[str, Any], image_abnormal: bool, verdicts: Sequence[str]) -> Answer:
        """The answer with these words, tokenised as a whole, and every line's path located in it."""
        content = answer_text(sample, self.meta, verdicts, image_abnormal=image_abnormal)
        text = content + self.assistant_suffix
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        lines = content.split("\n")
        keys = [self.meta.image_key] + [r["id"] for r in sample["regions"]]
        sid = sample.get("sample_id")
        if len(lines) != len(keys):
            raise EncodingError(f"sample {sid}: {len(lines)} answer lines for {len(keys)} keys")
        starts, paths = [], []
        pos = 0
        for k, (line, key) in enumerate(zip(lines, keys, strict=True)):
            head = f"{key}:"
            if not line.startswith(head):
                raise EncodingError(
                    f"sample {sample.get('sample_id')}: line {line!r} does not start {head!r}"
                )
            a = pos + len(head)
            b = pos + len(line) + (1 if k < len(lines) - 1 else len(self.end_of_turn))
            first = next((i for i, (s, _) in enumerate(offsets) if s >= a), None)
            if first is None or offsets[first][0] != a or (first and offsets[first - 1][1] > a):
                raise EncodingError(
                    f"sample {sid}: the tokenizer merges {head!r} with the text after it, "
                    "so the verdict of that line cannot be scored on its own"
                )
            last = next(i for i, (_, e) in enumerate(offsets) if e >= b)
            starts.append(first)
            paths.append(tuple(ids[first : last + 1]))
            pos += len(line) + 1
        return Answer(tuple(ids), tuple(starts), tuple(paths))

    def word_paths(self, line: int, last: bool) -> dict[str, tuple[int, ...]]:
        """Allowed words of a line (image line 0: normal/abnormal; regions: normal/labels) -> token paths."""
        words = (
            [self.meta.normal_word, self.meta.abnormal_word]
            if line == 0
            else [self.meta.normal_word, *self.meta.labels]
        )
        end = self.end_of_turn if last else "\n"
        key = (line == 0, last)
        if key not in self._word_paths:
            paths = {}
            for word in words:
                enc = self.tokenizer(f": {word}{end}", add_special_tokens=False, return_offsets_mapping=True)
                idx = [i for i, (_, e) in enumerate(enc["offset_mapping"]) if e > 1]
                if not idx or enc["offset_mapping"][idx[0]][0] != 1:
                    raise EncodingError(f"the tokenizer merges ':' with {' ' + word!r}")
                paths[word] = tuple(enc["input_ids"][i] for i in idx)
            self._word_paths[key] = paths
        return self._word_paths[key]
