"""Model passes that see exactly what training fed the model.

A sample's first pass goes through LLaMA-Factory's own training collator (`SFTDataCollatorWith4DAttentionMask`
built as its SFT workflow builds it), so pixel values, `image_grid_thw` and the M-RoPE `position_ids` are
the trainer's. Later passes of the same sample (scoring continuations, decoding steps) re-use the cached
keys/values of its prefix, image included, and feed only new answer tokens; those are text tokens, whose
three M-RoPE position components all equal ``index + rope delta`` of that sample (the collator's delta).
Rows of different prefix lengths share one batch: each row's cached prefix is gathered into a padded
cache and masked where it has no tokens.

Models whose cache cannot be cut at an arbitrary token (recurrent / linear-attention layers) re-run the
whole sequence through the collator instead: slower, same numbers.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from qwenvl_roi.inference.scoring import Request


@dataclass
class _SampleState:
    """What the engine keeps of a sample between its passes."""

    images: tuple[str, ...]
    seq: list[int]  # the sample's current token sequence (prompt + answer so far)
    text_base: int  # position of a text token at index j after the image is j + text_base
    cache: Any = None  # a DynamicCache holding this sample in row `row`
    row: int = 0
    slots: Any = None  # cache slot of every index of `seq` (a LongTensor)


class Engine:
    """Batches prefills through LLaMA-Factory's collator and continuations over cached prefixes."""

    def __init__(
        self, model: Any, tokenizer: Any, processor: Any, template: Any, columns: Sequence[int]
    ) -> None:
        import torch
        from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
        from llamafactory.extras.constants import IGNORE_INDEX

        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.ignore = IGNORE_INDEX
        self.collator = SFTDataCollatorWith4DAttentionMask(
            template=template,
            model=model,
            label_pad_token_id=IGNORE_INDEX,
            attn_implementation=getattr(model.config, "_attn_implementation", None),
            compute_dtype=self.dtype,
            tokenizer=tokenizer,
            processor=processor,
        )
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        self.columns = torch.tensor(list(columns), dtype=torch.long)
        self.reuse_prefix: bool | None = None  # decided on the first cache seen
        self.states: dict[Hashable, _SampleState] = {}

    # --- public -------------------------------------------------------------------------------------------
    def run(self, jobs: Sequence[tuple[Hashable, Sequence[str], Request]]) -> list[dict[int, Any]]:
        """Run every (sample key, images, request) job; one {position: logits over columns} per job."""
        out: list[dict[int, Any] | None] = [None] * len(jobs)
        fresh = [i for i, (_, _, r) in enumerate(jobs) if r.cut == 0 or not self.reuse_prefix]
        cont = [i for i in range(len(jobs)) if i not in set(fresh)]
        if fresh:
            seqs = []
            for i in fresh:
                key, images, req = jobs[i]
                prefix = self.states[key].seq[: req.cut] if req.cut else []
                seqs.append((key, tuple(images), [*prefix, *req.tokens], req))
            for i, got in zip(fresh, self._prefill(seqs), strict=True):
                out[i] = got
        if cont:
            for i, got in zip(cont, self._extend([jobs[i] for i in cont]), strict=True):
                out[i] = got
        return [o for o in out if o is not None]

    def forget(self, key: Hashable) -> None:
        """Drop a finished sample's cache."""
        self.states.pop(key, None)

    def greedy(self, prompts: Sequence[tuple[Sequence[str], Sequence[int]]], max_new: int, stop: set[int]):
        """Greedy decoding of a batch of (images, prompt ids); the generated ids of each, stop token kept."""
        import torch

        batch, _ = self._collate([(tuple(im), list(ids)) for im, ids in prompts])
        lengths = [len(ids) for _, ids in prompts]
        last = torch.tensor([n - 1 for n in lengths])
        base = batch["position_ids"][1, torch.arange(len(prompts)), last] - last
        mask = batch["attention_mask"]
        with torch.inference_mode():
            out = self.model(**batch, use_cache=True, logits_to_keep=last.unique().to(self.device))
            cols = {int(p): j for j, p in enumerate(last.unique().tolist())}
            logits = out.logits[torch.arange(len(prompts)), [cols[int(p)] for p in last]]
            cache = out.past_key_values
            generated: list[list[int]] = [[] for _ in prompts]
            done = [False] * len(prompts)
            for step in range(max_new):
                nxt = logits.argmax(-1)
                for b, t in enumerate(nxt.tolist()):
                    if not done[b]:
                        generated[b].append(t)
                        done[b] = t in stop
                if all(done):
                    break
                pos = (last + 1 + step + base.cpu()).view(1, -1, 1).expand(4, -1, 1)
                mask = torch.cat(
                    [mask, torch.ones((len(prompts), 1), dtype=mask.dtype, device=mask.device)], 1
                )
                out = self.model(
                    input_ids=nxt.view(-1, 1),
                    attention_mask=mask,
                    position_ids=pos.to(self.device),
                    past_key_values=cache,
                    use_cache=True,
                )
                cache, logits = out.past_key_values, out.logits[:, -1]
        return generated

    # --- internals ----------------------------------------------------------------------------------------
    def _collate(self, items: Sequence[tuple[tuple[str, ...], list[int]]]) -> tuple[dict, Any]:
        """The training collator's batch for (images, ids) rows (right-padded), moved to the device."""
        features = [
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [self.ignore] * len(ids),
                "images": list(images),
                "videos": [],
                "audios": [],
            }
            for images, ids in items
        ]
        batch = self.collator(features)
        batch.pop("labels", None)
        moved = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}
        return moved, batch["position_ids"]

    def _select(self, logits: Any) -> Any:
        return logits.index_select(-1, self.columns.to(logits.device)).float().cpu()

    def _prefill(self, seqs: Sequence[tuple[Hashable, tuple[str, ...], list[int], Request]]) -> list[dict]:
        import torch

        batch, positions = self._collate([(images, ids) for _, images, ids, _ in seqs])
        keep = sorted({p for *_, req in seqs for p in req.keep})
        index = {p: j for j, p in enumerate(keep)}
        with torch.inference_mode():
            out = self.model(
                **batch,
                use_cache=self.reuse_prefix is not False,
                logits_to_keep=torch.tensor(keep, dtype=torch.long).to(self.device),
            )
        logits = self._select(out.logits)
        cache = out.past_key_values
        if self.reuse_prefix is None:
            self.reuse_prefix = cache is not None and _cuttable(cache)
        results = []
        for b, (key, images, ids, req) in enumerate(seqs):
            n = len(ids)
            base = int(positions[1, b, n - 1]) - (n - 1)
            if req.commit:
                state = _SampleState(images, list(ids), base)
                if self.reuse_prefix:
                    state.cache, state.row, state.slots = cache, b, torch.arange(n)
                self.states[key] = state
            results.append({p: logits[b, index[p]] for p in req.keep})
        return results

    def _extend(self, jobs: Sequence[tuple[Hashable, Sequence[str], Request]]) -> list[dict]:
        import torch
        from transformers import DynamicCache

        states = [self.states[key] for key, _, _ in jobs]
        reqs = [req for _, _, req in jobs]
        width = max(r.cut for r in reqs)
        n_new = max(len(r.tokens) for r in reqs)
        rows = len(jobs)
        layers = []
        for layer in range(len(states[0].cache.layers)):
            parts = []
            for st, req in zip(states, reqs, strict=True):
                src = st.cache.layers[layer]
                idx = st.slots[: req.cut].to(src.keys.device)
                parts.append((src.keys[st.row].index_select(1, idx), src.values[st.row].index_select(1, idx)))
            h, _, d = parts[0][0].shape
            keys = parts[0][0].new_zeros((rows, h, width, d))
            values = parts[0][1].new_zeros((rows, h, width, parts[0][1].shape[-1]))
            for r, (k, v) in enumerate(parts):
                keys[r, :, : k.shape[1]] = k
                values[r, :, : v.shape[1]] = v
            layers.append((keys, values))
        cache = DynamicCache(layers)
        ids = torch.full((rows, n_new), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width + n_new), dtype=torch.long)
        pos = torch.zeros((rows, n_new), dtype=torch.long)
        for r, (st, req) in enumerate(zip(states, reqs, strict=True)):
            ids[r, : len(req.tokens)] = torch.tensor(req.tokens)
            mask[r, : req.cut] = 1
            mask[r, width : width + len(req.tokens)] = 1
            pos[r] = torch.arange(req.cut, req.cut + n_new) + st.text_base
        keep = sorted({p - req.cut for req in reqs for p in req.keep})
        index = {p: j for j, p in enumerate(keep)}
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=pos.unsqueeze(0).expand(4, -1, -1).to(self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=torch.tensor(keep, dtype=torch.long).to(self.device),
            )
        logits = self._select(out.logits)
        results = []
        for r, (st, req) in enumerate(zip(states, reqs, strict=True)):
            if req.commit:
                st.seq = st.seq[: req.cut] + list(req.tokens)
                st.cache, st.row = out.past_key_values, r
                st.slots = torch.cat([torch.arange(req.cut), width + torch.arange(len(req.tokens))])
            results.append({p: logits[r, index[p - req.cut]] for p in req.keep})
        return results


def _cuttable(cache: Any) -> bool:
    """True when every layer of the cache is plain keys/values that can be cut at any token."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
