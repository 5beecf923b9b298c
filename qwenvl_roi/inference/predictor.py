"""The Python API: per-region P(abnormal) and most likely label for an image and its candidate regions.

    from qwenvl_roi.inference import RegionPredictor
    predictor = RegionPredictor.load("path/to/merged-or-base", adapter="path/to/adapter")
    result = predictor.predict_image("part.png", [[10, 20, 80, 90], [100, 40, 160, 120]])

Scoring mode (default) runs ONE teacher-forced forward pass per sample and reads the verdict-token
probabilities of all its regions; generate mode decodes greedily and parses the answer, reporting what it
cannot parse instead of guessing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qwenvl_roi.converters.meta import DatasetMeta, load_dataset_meta
from qwenvl_roi.converters.prompt import answer_text, parse_answer
from qwenvl_roi.evaluation.files import InputError
from qwenvl_roi.inference.config import (
    InferenceConfig,
    find_inference_config,
    load_inference_config,
)
from qwenvl_roi.inference.encode import EncodedSample, PromptEncoder, load_tokenizer_and_processor
from qwenvl_roi.inference.model import check_model_path, load_model, pick_device_and_dtype
from qwenvl_roi.inference.scoring import SlotPlan, plan_slot, word_probabilities

META_FILE = "dataset_meta.json"


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class RegionPredictor:
    """A loaded model + processor + dataset settings that scores candidate regions."""

    def __init__(
        self, model: Any, encoder: PromptEncoder, config: InferenceConfig, device: Any, dtype: Any
    ) -> None:
        self.model = model
        self.encoder = encoder
        self.meta = encoder.meta
        self.config = config
        self.device = device
        self.dtype = dtype
        self._checked = False
        if not self.meta.labels:
            raise InputError(
                "dataset_meta.json lists no canonical labels: nothing to tell 'normal' apart from"
            )

    @classmethod
    def load(
        cls,
        model: str | Path,
        adapter: str | Path | None = None,
        meta: str | Path | DatasetMeta | None = None,
        inference_config: str | Path | InferenceConfig | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> RegionPredictor:
        """Load model (+ adapter) and processor.

        `meta`: a DatasetMeta, or a dataset_meta.json / its folder / a regions file beside it; by default
        dataset_meta.json in the adapter folder, then the model folder (`qwenvl-roi eval --model-dir` puts
        it there). `inference_config`: the threshold file; by default the one in the adapter, then model
        folder, else threshold 0.5.
        """
        model = check_model_path(model)
        if adapter is not None:
            adapter = check_model_path(adapter, "adapter", "adapter_config.json")
        folders = [adapter, model]
        if meta is None:
            found = next(
                (Path(f) / META_FILE for f in folders if f and (Path(f) / META_FILE).is_file()), None
            )
            if found is None:
                raise InputError(
                    f"no {META_FILE} in {adapter or model}: pass meta= (the converters' out_dir) or run "
                    "`qwenvl-roi eval --model-dir` to store it beside the model"
                )
            meta = found
        if not isinstance(meta, DatasetMeta):
            meta = load_dataset_meta(meta)
        if inference_config is None:
            found_cfg = find_inference_config(*folders)
            config = load_inference_config(found_cfg) if found_cfg else InferenceConfig()
        elif isinstance(inference_config, InferenceConfig):
            config = inference_config
        else:
            config = load_inference_config(inference_config)
        dev, dt = pick_device_and_dtype(device, dtype)
        tokenizer, processor, template = load_tokenizer_and_processor(str(model), meta)
        net = load_model(model, adapter, dev, dt)
        return cls(net, PromptEncoder(tokenizer, processor, template, meta), config, dev, dt)

    # --- shared plumbing ---------------------------------------------------------------------------------
    def _alternatives(self, slot_index: int, gap: str, tail: str) -> dict[str, tuple[int, ...]]:
        words = (
            [self.meta.normal_word, self.meta.abnormal_word]
            if slot_index == 0
            else [self.meta.normal_word, *self.meta.labels]
        )
        return {w: self.encoder.alternative_ids(gap, w, tail) for w in words}

    def _tensors(
        self, seqs: Sequence[Sequence[int]], images: Sequence[Sequence[str]], left_pad: bool
    ) -> dict:
        import torch

        pad = self.encoder.tokenizer.pad_token_id
        if pad is None:
            pad = self.encoder.tokenizer.eos_token_id
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            sl = slice(width - len(s), width) if left_pad else slice(0, len(s))
            ids[i, sl] = torch.tensor(list(s), dtype=torch.long)
            mask[i, sl] = 1
        batch = [EncodedSample(list(s), 0, list(im), []) for s, im in zip(seqs, images, strict=True)]
        mm = self.encoder.mm_inputs(batch)
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        for k, v in mm.items():
            if hasattr(v, "to"):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(self.dtype)
            inputs[k] = v
        return inputs

    def _logits_at(
        self, seqs: Sequence[Sequence[int]], images: Sequence[Sequence[str]], wanted: Sequence[Sequence[int]]
    ) -> list[dict[int, Any]]:
        """One forward pass over right-padded `seqs`; logits (float32, CPU) at the wanted positions."""
        import torch

        inputs = self._tensors(seqs, images, left_pad=False)
        keep = sorted({p for ps in wanted for p in ps})
        with torch.inference_mode():
            out = self.model(**inputs, logits_to_keep=torch.tensor(keep, device=self.device), use_cache=False)
        logits = out.logits.float().cpu()
        col = {p: j for j, p in enumerate(keep)}
        return [{p: logits[i, col[p]] for p in ps} for i, ps in enumerate(wanted)]

    # --- scoring mode ------------------------------------------------------------------------------------
    def score_samples(
        self,
        samples: Sequence[Mapping[str, Any]],
        batch_size: int = 4,
        progress: bool = True,
        verdicts: Sequence[Sequence[str] | None] | None = None,
        image_abnormal: Sequence[bool | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Teacher-forced scores, one forward pass per sample (batched).

        `verdicts` / `image_abnormal`: the answer to teacher-force per sample (default: all normal, the
        image line derived from the verdicts); a slot's probabilities are conditioned on the lines before it.
        """
        from tqdm import tqdm

        if samples and not self._checked:
            self.encoder.check_alternatives(samples[0])
            self._checked = True
        results: list[dict[str, Any]] = []
        order = list(range(len(samples)))
        bar = tqdm(total=len(samples), desc="score", unit="sample", disable=not progress)
        for chunk in _batches(order, batch_size):
            encoded = [
                self.encoder.encode(
                    samples[i],
                    None if verdicts is None else verdicts[i],
                    None if image_abnormal is None else image_abnormal[i],
                )
                for i in chunk
            ]
            plans = [
                [
                    plan_slot(slot.start, slot.token_ids, self._alternatives(k, slot.gap, slot.tail))
                    for k, slot in enumerate(enc.slots)
                ]
                for enc in encoded
            ]
            wanted = [sorted({q.position for p in ps for q in p.queries if not q.prefix}) for ps in plans]
            main = self._logits_at([e.input_ids for e in encoded], [e.images for e in encoded], wanted)
            extra = self._extra_logits(encoded, plans)
            for i, ps, got in zip(chunk, plans, main, strict=True):
                table = {}
                for p in ps:
                    for q in p.queries:
                        row = got[q.position] if not q.prefix else extra[(id(p), q.position, q.prefix)]
                        table[(q.position, q.prefix)] = [float(row[c]) for c in q.children]
                probs = [word_probabilities(p, table) for p in ps]
                results.append(self._score_record(samples[i], probs))
            bar.update(len(chunk))
        bar.close()
        return results

    def _extra_logits(self, encoded: Sequence[EncodedSample], plans: Sequence[Sequence[SlotPlan]]) -> dict:
        """Logits for branching points off the teacher-forced path (labels sharing a prefix)."""
        jobs = []
        for enc, ps in zip(encoded, plans, strict=True):
            for p in ps:
                for q in p.queries:
                    if q.prefix:
                        jobs.append((id(p), q, enc.input_ids[: p.start] + list(q.prefix), enc.images))
        out: dict = {}
        for chunk in _batches(jobs, max(1, len(encoded))):
            seqs = [j[2] for j in chunk]
            got = self._logits_at(seqs, [j[3] for j in chunk], [[len(s) - 1] for s in seqs])
            for (pid, q, seq, _), g in zip(chunk, got, strict=True):
                out[(pid, q.position, q.prefix)] = g[len(seq) - 1]
        return out

    def _score_record(
        self, sample: Mapping[str, Any], probs: Sequence[Mapping[str, float]]
    ) -> dict[str, Any]:
        normal = self.meta.normal_word
        regions = []
        for region, p in zip(sample["regions"], probs[1:], strict=True):
            score = min(1.0, max(0.0, 1.0 - p[normal]))
            label = max(self.meta.labels, key=lambda lab, p=p: (p[lab], -self.meta.labels.index(lab)))
            regions.append(
                {
                    "id": region["id"],
                    "score": score,
                    "label": label,
                    "abnormal": score >= self.config.threshold,
                    "greedy": normal if p[normal] >= p[label] else label,
                }
            )
        out: dict[str, Any] = {"image": sample["image"], "regions": regions}
        if "sample_id" in sample:
            out = {"sample_id": sample["sample_id"], **out}
        out["image_line_score"] = probs[0][self.meta.abnormal_word]
        return out

    # --- generate mode -----------------------------------------------------------------------------------
    def generate_samples(
        self,
        samples: Sequence[Mapping[str, Any]],
        batch_size: int = 4,
        progress: bool = True,
        max_new_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Greedy generation + parse_answer; unparseable regions get score/label None and are listed."""
        import torch
        from tqdm import tqdm

        tok = self.encoder.tokenizer
        stop = self.encoder.template.get_stop_token_ids(tok)
        longest = max(
            [self.meta.normal_word, *self.meta.labels], key=lambda w: len(tok.encode(" " + w + "\n"))
        )
        results: list[dict[str, Any]] = []
        bar = tqdm(total=len(samples), desc="generate", unit="sample", disable=not progress)
        for chunk in _batches(list(samples), batch_size):
            prompts = [self.encoder.prompt_ids(s) for s in chunk]
            budget = max_new_tokens or max(
                len(tok.encode(answer_text(s, self.meta, [longest] * len(s["regions"])))) + 8 for s in chunk
            )
            inputs = self._tensors(prompts, [[s["image"]] for s in chunk], left_pad=True)
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=budget,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=stop,
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stop[0],
                )
            width = inputs["input_ids"].shape[1]
            for s, row in zip(chunk, out, strict=True):
                text = tok.decode(row[width:].tolist(), skip_special_tokens=True)
                results.append(self._generated_record(s, text))
            bar.update(len(chunk))
        bar.close()
        return results

    def _generated_record(self, sample: Mapping[str, Any], text: str) -> dict[str, Any]:
        parsed = parse_answer(text, self.meta)
        regions = []
        for region in sample["regions"]:
            verdict = parsed.regions.get(region["id"])
            if verdict is None:
                regions.append({"id": region["id"], "score": None, "label": None, "abnormal": None})
            else:
                abnormal = verdict != self.meta.normal_word
                regions.append(
                    {
                        "id": region["id"],
                        "score": 1.0 if abnormal else 0.0,
                        "label": verdict if abnormal else None,
                        "abnormal": abnormal,
                    }
                )
        missing = [r["id"] for r in sample["regions"] if r["id"] not in parsed.regions]
        known = {r["id"] for r in sample["regions"]}
        extra = [rid for rid in parsed.regions if rid not in known]
        out: dict[str, Any] = {"image": sample["image"], "regions": regions}
        if "sample_id" in sample:
            out = {"sample_id": sample["sample_id"], **out}
        out.update(
            {
                "image_verdict": parsed.image,
                "text": text,
                "unparsed": parsed.unparsed,
                "missing": missing,
                "extra": extra,
            }
        )
        return out

    # --- one image -----------------------------------------------------------------------------------------
    def predict_image(
        self, image: str | Path, boxes: Sequence[Sequence[float]], mode: str = "score"
    ) -> dict[str, Any]:
        """Score one image and its candidate boxes ([x1, y1, x2, y2] in original pixels, ids R1, R2, ...)."""
        from PIL import Image

        path = str(Path(image).resolve())
        with Image.open(path) as im:
            width, height = im.size
        sample = {
            "sample_id": path,
            "image": path,
            "width": width,
            "height": height,
            "regions": [
                {"id": f"{self.meta.region_id_prefix}{i + 1}", "box": [float(v) for v in box]}
                for i, box in enumerate(boxes)
            ],
        }
        if mode == "score":
            return self.score_samples([sample], progress=False)[0]
        if mode == "generate":
            return self.generate_samples([sample], progress=False)[0]
        raise InputError(f"mode must be 'score' or 'generate', got {mode!r}")
