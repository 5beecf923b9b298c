"""The "hf" scoring backend: transformers passes that see exactly what training fed the model.

A sample's first pass goes through LLaMA-Factory's own training collator (`SFTDataCollatorWith4DAttentionMask`
built as its SFT workflow builds it), so pixel values, `image_grid_thw` and the M-RoPE `position_ids` are
the trainer's. Later passes of the same sample (scoring continuations, decoding steps) re-use the cached
keys/values of its prefix, image included, and feed only new answer tokens; those are text tokens, whose
three M-RoPE position components all equal ``index + rope delta`` of that sample (the collator's delta).
Rows of different prefix lengths share one batch: each row's cached prefix is gathered into a padded
cache and masked where it has no tokens.

Models whose cache cannot be cut at an arbitrary token (recurrent / linear-attention layers) re-run the
whole sequence through the collator instead: slower, same numbers.

The protocol this implements, and what it asks of any backend: qwenvl_roi/inference/backend.py.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from qwenvl_roi.inference.backend import Pass, Values

if TYPE_CHECKING:
    from qwenvl_roi.inference.encode import Prompt, PromptEncoder


@dataclass
class _SampleState:
    """What the backend keeps of a sample between its passes."""

    images: tuple[Any, ...]
    seq: list[int]  # the sample's committed token sequence (prompt + answer so far)
    text_base: int  # position of a text token at index j after the image is j + text_base
    cache: Any = None  # a DynamicCache holding this sample in row `row`
    row: int = 0
    slots: Any = None  # cache slot of every index of `seq` (a LongTensor)


class HFBackend:
    """Batches prefills through LLaMA-Factory's collator and continuations over cached prefixes."""

    name: ClassVar[str] = "hf"

    def __init__(
        self,
        model: Any,
        encoder: PromptEncoder,
        *,
        device: Any = None,
        dtype: Any = None,
        inference_mode: bool = True,
    ) -> None:
        """``model``: loaded by `load`, or a live one (the plugin scores the model being trained). For a live
        model, ``device`` / ``dtype`` name where inputs go and the compute dtype when its first parameter
        cannot tell (a 4-bit weight, a ZeRO-3 partition); ``inference_mode=False`` computes under
        ``torch.no_grad`` instead, so that no inference tensor is created inside a training process."""
        import torch
        from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
        from llamafactory.extras.constants import IGNORE_INDEX

        self.model = model
        first = next(model.parameters())
        self.torch_device = torch.device(device) if device is not None else first.device
        self.torch_dtype = dtype if dtype is not None else first.dtype
        self.device = str(self.torch_device)
        self.dtype = str(self.torch_dtype).removeprefix("torch.")
        self.grad_off = torch.inference_mode if inference_mode else torch.no_grad
        self.ignore = IGNORE_INDEX
        tokenizer = encoder.tokenizer
        self.collator = SFTDataCollatorWith4DAttentionMask(
            template=encoder.template,  # the encoder's copy: each image preprocessed once per batch
            model=model,
            label_pad_token_id=IGNORE_INDEX,
            attn_implementation=getattr(model.config, "_attn_implementation", None),
            compute_dtype=self.torch_dtype,
            tokenizer=tokenizer,
            processor=encoder.processor,
        )
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        self.reuse_prefix: bool | None = None  # decided on the first cache seen
        self.states: dict[Hashable, _SampleState] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        """Never: torch, transformers and LLaMA-Factory are this package's own dependencies."""
        return None

    @classmethod
    def load(
        cls,
        model: str,
        adapter: str | None,
        encoder: PromptEncoder,
        device: str | None = None,
        dtype: str | None = None,
    ) -> HFBackend:
        """The model (+ merged adapter) in eval mode; CUDA + bfloat16 when a GPU is visible, else CPU +
        float32."""
        from qwenvl_roi.inference.model import load_model, pick_device_and_dtype

        dev, dt = pick_device_and_dtype(device, dtype)
        return cls(load_model(model, adapter, dev, dt), encoder)

    # --- the protocol -------------------------------------------------------------------------------------
    def score(self, passes: Sequence[Pass]) -> list[Values]:
        """Prefill the passes that start a sample (or cannot re-use a cache), extend the others from the
        cached prefix of their sample."""
        for p in passes:
            self._check_cut(p)
        out: list[Values | None] = [None] * len(passes)
        fresh = [i for i, p in enumerate(passes) if p.request.cut == 0 or not self.reuse_prefix]
        cont = [i for i in range(len(passes)) if i not in set(fresh)]
        if fresh:
            for i, got in zip(fresh, self._prefill([passes[i] for i in fresh]), strict=True):
                out[i] = got
        if cont:
            for i, got in zip(cont, self._extend([passes[i] for i in cont]), strict=True):
                out[i] = got
        return [o for o in out if o is not None]

    def release(self, sample: Hashable) -> None:
        """Drop a finished sample's cache."""
        self.states.pop(sample, None)

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int, stop: Collection[int]
    ) -> list[list[int]]:
        """Greedy decoding of a batch of prompts; the generated ids of each, stop token kept."""
        import torch

        batch, _ = self._collate([(tuple(p.images), list(p.ids)) for p in prompts])
        lengths = [len(p.ids) for p in prompts]
        last = torch.tensor([n - 1 for n in lengths])
        base = batch["position_ids"][1, torch.arange(len(prompts)), last] - last
        mask = batch["attention_mask"]
        with self.grad_off():
            out = self.model(**batch, use_cache=True, logits_to_keep=last.unique().to(self.torch_device))
            cols = {int(p): j for j, p in enumerate(last.unique().tolist())}
            logits = out.logits[torch.arange(len(prompts)), [cols[int(p)] for p in last]]
            cache = out.past_key_values
            generated: list[list[int]] = [[] for _ in prompts]
            done = [False] * len(prompts)
            for step in range(max_new_tokens):
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
                    position_ids=pos.to(self.torch_device),
                    past_key_values=cache,
                    use_cache=True,
                )
                cache, logits = out.past_key_values, out.logits[:, -1]
        return generated

    # --- internals ----------------------------------------------------------------------------------------
    def _check_cut(self, p: Pass) -> None:
        """A pass may only cut into what its sample committed: anything else would re-use the wrong cache."""
        req = p.request
        if req.cut == 0:
            return
        state = self.states.get(p.sample)
        if state is None or len(state.seq) < req.cut or state.seq[: req.cut] != list(req.ids[: req.cut]):
            raise ValueError(
                f"pass of sample {p.sample!r} cuts at {req.cut} into a sequence it did not commit"
            )

    def _collate(self, items: Sequence[tuple[tuple[Any, ...], list[int]]]) -> tuple[dict, Any]:
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
        moved = {k: v.to(self.torch_device) if hasattr(v, "to") else v for k, v in batch.items()}
        return moved, batch["position_ids"]

    @staticmethod
    def _values(logits: Any, passes: Sequence[Pass], index: Any) -> list[Values]:
        """Each pass's wanted values from logits [rows, kept positions, vocab]; ``index(r, position)`` gives
        the kept column of a pass's position."""
        import torch

        tokens = sorted({t for p in passes for _, ids in p.request.want for t in ids})
        column = {t: j for j, t in enumerate(tokens)}
        picked = logits.index_select(-1, torch.tensor(tokens, device=logits.device)).float().cpu().tolist()
        results = []
        for r, p in enumerate(passes):
            results.append(
                {pos: {t: picked[r][index(r, pos)][column[t]] for t in ids} for pos, ids in p.request.want}
            )
        return results

    def _prefill(self, passes: Sequence[Pass]) -> list[Values]:
        import torch

        batch, positions = self._collate([(tuple(p.images), list(p.request.ids)) for p in passes])
        keep = sorted({pos for p in passes for pos, _ in p.request.want})
        index = {pos: j for j, pos in enumerate(keep)}
        with self.grad_off():
            out = self.model(
                **batch,
                use_cache=self.reuse_prefix is not False,
                logits_to_keep=torch.tensor(keep, dtype=torch.long).to(self.torch_device),
            )
        results = self._values(out.logits, passes, lambda r, pos: index[pos])
        cache = out.past_key_values
        if self.reuse_prefix is None:
            self.reuse_prefix = cache is not None and _cuttable(cache)
        for b, p in enumerate(passes):
            ids = p.request.ids
            n = len(ids)
            base = int(positions[1, b, n - 1]) - (n - 1)
            if p.request.commit:
                state = _SampleState(tuple(p.images), list(ids), base)
                if self.reuse_prefix:
                    state.cache, state.row, state.slots = cache, b, torch.arange(n)
                self.states[p.sample] = state
        return results

    def _extend(self, passes: Sequence[Pass]) -> list[Values]:
        import torch
        from transformers import DynamicCache

        states = [self.states[p.sample] for p in passes]
        reqs = [p.request for p in passes]
        width = max(r.cut for r in reqs)
        n_new = max(len(r.ids) - r.cut for r in reqs)
        rows = len(passes)
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
            new = req.ids[req.cut :]
            ids[r, : len(new)] = torch.tensor(new)
            mask[r, : req.cut] = 1
            mask[r, width : width + len(new)] = 1
            pos[r] = torch.arange(req.cut, req.cut + n_new) + st.text_base
        keep = sorted({p - req.cut for req in reqs for p, _ in req.want})
        index = {p: j for j, p in enumerate(keep)}
        with self.grad_off():
            out = self.model(
                input_ids=ids.to(self.torch_device),
                attention_mask=mask.to(self.torch_device),
                position_ids=pos.unsqueeze(0).expand(4, -1, -1).to(self.torch_device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=torch.tensor(keep, dtype=torch.long).to(self.torch_device),
            )
        results = self._values(out.logits, passes, lambda r, p: index[p - reqs[r].cut])
        for r, (st, req) in enumerate(zip(states, reqs, strict=True)):
            if req.commit:
                st.seq = list(req.ids)
                st.cache, st.row = out.past_key_values, r
                st.slots = torch.cat([torch.arange(req.cut), width + torch.arange(len(req.ids) - req.cut)])
        return results


def _cuttable(cache: Any) -> bool:
    """True when every layer of the cache is plain keys/values that can be cut at any token."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
