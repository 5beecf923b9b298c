"""An independent reference for region scores: LLaMA-Factory's own data pipeline and a brute-force search.

Nothing here uses `qwenvl_roi.inference`. Each candidate answer is encoded by LLaMA-Factory's
`SupervisedDatasetProcessor` (its template and image plugin, as in training), batched by its training
collator `SFTDataCollatorWith4DAttentionMask` (which computes the M-RoPE `position_ids`), and run through
the model in ONE full forward pass per allowed word and line. The documented probabilities are then read
by brute force:

- line k's allowed words: image line = normal / abnormal word, region line = normal word / canonical labels;
- the earlier lines are the words the model itself writes: at every token where allowed words branch, the
  branch with the highest logit (greedy constrained decoding);
- P(word) = product along the word's token path (the line tokenised as a whole, from the token after
  "key:" through the line's terminator) of the next-token probabilities renormalised over the branches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from qwenvl_roi.converters.meta import DatasetMeta
from qwenvl_roi.converters.prompt import system_text, user_text

from qwenvl_roi.families import family


class LFReference:
    """Brute-force region scores of a model folder through LLaMA-Factory's training data path."""

    def __init__(self, model_path: str | Path, meta: DatasetMeta) -> None:
        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
        from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
        from llamafactory.extras.constants import IGNORE_INDEX
        from llamafactory.hparams import DataArguments, ModelArguments
        from llamafactory.model import load_tokenizer
        from transformers import AutoModelForImageTextToText

        self.meta = meta
        module = load_tokenizer(
            ModelArguments(
                model_name_or_path=str(model_path),
                image_max_pixels=meta.image_max_pixels,
                image_min_pixels=meta.image_min_pixels,
            )
        )
        # the family's template and thinking setting, as its recipes train with
        data_args = DataArguments(**family(meta.model_family).template_args, cutoff_len=1_000_000)
        tmpl = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
        self.tokenizer = module["tokenizer"]
        self.dataset_processor = SupervisedDatasetProcessor(template=tmpl, data_args=data_args, **module)
        self.model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.float32).eval()
        self.collator = SFTDataCollatorWith4DAttentionMask(
            template=tmpl,
            model=self.model,
            pad_to_multiple_of=8,
            label_pad_token_id=IGNORE_INDEX,
            attn_implementation=self.model.config._attn_implementation,
            compute_dtype=torch.float32,
            **module,
        )
        self.ignore = IGNORE_INDEX
        self.end_of_turn = tmpl.stop_words[0]
        self.forward_passes = 0

    def _logits(self, sample: Mapping[str, Any], lines: Sequence[str]) -> tuple[torch.Tensor, list[int], int]:
        """(logits [L, V], input_ids, index of the first answer token) for an answer of these lines."""
        ids, labels = self.dataset_processor._encode_data_example(
            prompt=[{"role": "user", "content": user_text(sample, self.meta)}],
            response=[{"role": "assistant", "content": "\n".join(lines)}],
            system=system_text(self.meta),
            tools="",
            images=[sample["image"]],
            videos=[],
            audios=[],
        )
        answer_start = next(i for i, t in enumerate(labels) if t != self.ignore)
        feature = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
        batch = self.collator([{**feature, "images": [sample["image"]], "videos": [], "audios": []}])
        batch.pop("labels")
        with torch.inference_mode():
            logits = self.model(**batch).logits[0, : len(ids)].double()
        self.forward_passes += 1
        return logits, ids, answer_start

    def _path(self, lines: Sequence[str], k: int, ids: list[int], answer_start: int) -> tuple[int, int]:
        """[a, b): the tokens of line k after "key:" through its terminator, found by tokenising prefixes."""
        before = "\n".join(lines[:k]) + ("\n" if k else "")
        key = lines[k].split(":", 1)[0] + ":"
        end = "\n" if k < len(lines) - 1 else self.end_of_turn
        bounds = []
        for text in (before + key, before + lines[k] + end):
            prefix = self.tokenizer.encode(text, add_special_tokens=False)
            assert ids[answer_start : answer_start + len(prefix)] == prefix, f"{text!r} is no token prefix"
            bounds.append(answer_start + len(prefix))
        return bounds[0], bounds[1]

    def score(self, sample: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per line: {"probs": {word: P}, "greedy": word}, image line first, then the regions in order."""
        meta = self.meta
        keys = [meta.image_key] + [r["id"] for r in sample["regions"]]
        chosen: list[str] = []
        out = []
        for k in range(len(keys)):
            words = [meta.normal_word, meta.abnormal_word] if k == 0 else [meta.normal_word, *meta.labels]
            paths, rows = {}, {}
            for word in words:
                line_words = [*chosen, word] + [meta.normal_word] * (len(keys) - k - 1)
                lines = [f"{kk}: {w}" for kk, w in zip(keys, line_words, strict=True)]
                logits, ids, start = self._logits(sample, lines)
                a, b = self._path(lines, k, ids, start)
                paths[word] = tuple(ids[a:b])
                rows[word] = logits[a - 1 : b - 1]  # row d predicts path token d
            assert len(set(paths.values())) == len(paths), paths

            def children(prefix: tuple[int, ...], paths: dict = paths) -> list[int]:
                d = len(prefix)
                return sorted({p[d] for p in paths.values() if len(p) > d and p[:d] == prefix})

            probs = {}
            for word, path in paths.items():
                p = 1.0
                for d in range(len(path)):
                    kids = children(path[:d])
                    p *= float(torch.softmax(rows[word][d, kids], 0)[kids.index(path[d])])
                probs[word] = p
            node: tuple[int, ...] = ()
            while node not in paths.values():
                kids = children(node)
                owner = next(w for w, p in paths.items() if p[: len(node)] == node)
                values = rows[owner][len(node), kids]
                node = (*node, kids[int(torch.argmax(values))])  # ties: the lowest token id, as argmax
            greedy = next(w for w, p in paths.items() if p == node)
            chosen.append(greedy)
            out.append({"probs": probs, "greedy": greedy})
        return out
