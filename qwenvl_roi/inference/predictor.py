"""The Python API: per-region P(abnormal) and most likely label for an image and its candidate regions.

    from qwenvl_roi.inference import RegionPredictor
    predictor = RegionPredictor.load("path/to/merged-or-base", adapter="path/to/adapter")
    result = predictor.predict_image("part.png", [[10, 20, 80, 90], [100, 40, 160, 120]])

Scoring mode (default) reads every answer line's probabilities as a greedy constrained decoder sees them
(scoring.py): one teacher-forced pass per sample, plus a short continuation from the cached prefix for each
line the model answers with something other than "normal". Generate mode decodes greedily and parses the
answer, reporting what it cannot parse instead of guessing. The model passes are a scoring backend's
(backend.py: the protocol and the registry); the default, "hf" (backends/hf.py), feeds the model what
LLaMA-Factory's training collator feeds it, M-RoPE positions included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qwenvl_roi.converters.meta import META_FILE, DatasetMeta, load_dataset_meta
from qwenvl_roi.converters.prompt import parse_answer
from qwenvl_roi.errors import EncodingError, InputError
from qwenvl_roi.families import find_family
from qwenvl_roi.inference.backend import DEFAULT_BACKEND, Pass, ScoringBackend, get_backend
from qwenvl_roi.inference.config import (
    InferenceConfig,
    find_inference_config,
    load_inference_config,
)
from qwenvl_roi.inference.encode import PromptEncoder, load_tokenizer_and_processor
from qwenvl_roi.inference.model import check_model_path
from qwenvl_roi.inference.scoring import LineTrees, SampleScore, prediction_record, score_sample


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _model_type(model: str) -> str:
    """The model folder's HF ``model_type``, read from its config before any backend loads the weights."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model), "model_type", "")


class RegionPredictor:
    """A scoring backend (the loaded model) + prompt encoder + dataset settings: scores candidate regions."""

    def __init__(self, backend: ScoringBackend, encoder: PromptEncoder, config: InferenceConfig) -> None:
        self.backend = backend
        self.encoder = encoder
        self.meta = encoder.meta
        self.config = config
        self.device: str = backend.device
        self.dtype: str = backend.dtype
        self._checked = False
        if not self.meta.labels:
            raise InputError(
                "dataset_meta.json lists no canonical labels: nothing to tell 'normal' apart from"
            )
        self.trees = LineTrees(encoder)
        self.trees.tokens()  # every kind of line's words tokenised now: a tokenizer that cannot fails here

    @classmethod
    def load(
        cls,
        model: str | Path,
        adapter: str | Path | None = None,
        meta: str | Path | DatasetMeta | None = None,
        inference_config: str | Path | InferenceConfig | None = None,
        device: str | None = None,
        dtype: str | None = None,
        backend: str | type[ScoringBackend] = DEFAULT_BACKEND,
    ) -> RegionPredictor:
        """Load model (+ adapter) and processor.

        `meta`: a DatasetMeta, or a dataset_meta.json / its folder / a regions file beside it; by default
        dataset_meta.json in the adapter folder, then the model folder (`qwenvl-roi eval --model-dir` puts
        it there). `inference_config`: the threshold file; by default the one in the adapter, then model
        folder, else threshold 0.5. `backend`: a registered scoring backend's name (backend.py) or class.
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
        tokenizer, processor, template = load_tokenizer_and_processor(str(model), meta)
        model_type = _model_type(model)
        fam = find_family(model_type)
        family = fam.name if fam else None
        if family != meta.model_family:
            raise InputError(
                f"dataset_meta.json says model_family={meta.model_family} but {model} is "
                f"{family or model_type!r}: its prompts would carry coordinates in another frame; use the "
                f"model the data was converted for, or re-convert with model_family: {family or model_type}"
            )
        encoder = PromptEncoder(tokenizer, processor, template, meta)
        backend_cls = get_backend(backend) if isinstance(backend, str) else backend
        adapter_path = str(adapter) if adapter is not None else None
        return cls(backend_cls.load(str(model), adapter_path, encoder, device, dtype), encoder, config)

    # --- scoring mode ------------------------------------------------------------------------------------
    def check_in_context(self, sample: Mapping[str, Any]) -> None:
        """Verify on one sample that every allowed word tokenises inside a whole answer as on its own."""
        n = len(sample["regions"])
        trees = self.trees.for_sample(n + 1)
        for abnormal, label in [(False, self.meta.normal_word), *((True, lab) for lab in self.meta.labels)]:
            answer = self.encoder.answer(sample, abnormal, [label] * n)
            image_word = self.meta.abnormal_word if abnormal else self.meta.normal_word
            words = [image_word] + [label] * n
            for k, (word, tree) in enumerate(zip(words, trees, strict=True)):
                if answer.paths[k] != tree.paths[word]:
                    raise EncodingError(
                        f"{word!r} tokenises as {answer.paths[k]} inside an answer but {tree.paths[word]} "
                        "on its own; scoring would read the wrong tokens"
                    )

    def score_samples(
        self, samples: Sequence[Mapping[str, Any]], batch_size: int = 4, progress: bool = True
    ) -> list[dict[str, Any]]:
        """Every line's probabilities as greedy constrained decoding sees them (scoring.py), batched.

        A batch's first passes run together; so do the continuations its samples need afterwards.
        """
        from tqdm import tqdm

        if samples and not self._checked:
            self.check_in_context(samples[0])
            self._checked = True
        results: list[dict[str, Any]] = []
        bar = tqdm(total=len(samples), desc="score", unit="sample", disable=not progress)
        for chunk in _batches(list(samples), batch_size):
            prompts = [self.encoder.prompt(s) for s in chunk]
            runs = [score_sample(self.trees, s, p.ids) for s, p in zip(chunk, prompts, strict=True)]
            pending = {i: next(run) for i, run in enumerate(runs)}
            done: dict[int, SampleScore] = {}
            while pending:
                passes = [Pass(i, prompts[i].images, req) for i, reqs in pending.items() for req in reqs]
                answers = iter(self.backend.score(passes))
                following = {}
                for i, reqs in pending.items():
                    try:
                        following[i] = runs[i].send([next(answers) for _ in reqs])
                    except StopIteration as finished:
                        done[i] = finished.value
                        self.backend.release(i)
                pending = following
            self.encoder.images.clear()
            for i, sample in enumerate(chunk):
                results.append(prediction_record(sample, done[i], self.meta, self.config.threshold))
            bar.update(len(chunk))
        bar.close()
        return results

    # --- generate mode -----------------------------------------------------------------------------------
    def generate_samples(
        self,
        samples: Sequence[Mapping[str, Any]],
        batch_size: int = 4,
        progress: bool = True,
        max_new_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Greedy generation (same inputs and positions as scoring) + parse_answer; unparseable regions
        get score/label None and are listed."""
        from tqdm import tqdm

        tok = self.encoder.tokenizer
        stop = set(self.encoder.template.get_stop_token_ids(tok))
        longest = max(
            [self.meta.normal_word, *self.meta.labels], key=lambda w: len(tok.encode(" " + w + "\n"))
        )
        results: list[dict[str, Any]] = []
        bar = tqdm(total=len(samples), desc="generate", unit="sample", disable=not progress)
        for chunk in _batches(list(samples), batch_size):
            prompts = [self.encoder.prompt(s) for s in chunk]
            budget = max_new_tokens or max(
                len(self.encoder.answer(s, True, [longest] * len(s["regions"])).ids) + 8 for s in chunk
            )
            outputs = self.backend.generate(prompts, budget, stop)
            self.encoder.images.clear()
            for s, ids in zip(chunk, outputs, strict=True):
                results.append(self._generated_record(s, tok.decode(ids, skip_special_tokens=True)))
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
        """Score one image and its candidate boxes: [x1, y1, x2, y2] in original pixels of the image as shown
        (EXIF orientation applied), named R1, R2, ... in input order.

        The image is read as the converters prepared the training images; boxes are checked against it (a
        box outside it gets score None and a note); more boxes than the model judges at once are split into
        several prompts, as `qwenvl-roi predict --boxes` does.
        """
        from qwenvl_roi.inference import detections

        path = Path(image).resolve()
        job = detections.ImageJob(
            str(path), str(path), str(path), path, [[float(v) for v in b] for b in boxes]
        )
        prepared = detections.load(detections.check(job), self.meta)
        job = prepared.job  # with what checking and reading the image found
        if job.error is not None:
            raise InputError(job.error)
        samples = prepared.samples(self.meta)
        if mode == "generate":
            if len(samples) != 1 or len(prepared.usable) != len(boxes):
                raise InputError(
                    f"generate mode takes 1 to {self.meta.max_boxes_per_image} boxes inside the image "
                    f"({'; '.join(job.problems) or f'{len(boxes)} given'})"
                )
            return {**self.generate_samples(samples, progress=False)[0], "image": str(path)}
        if mode != "score":
            raise InputError(f"mode must be 'score' or 'generate', got {mode!r}")
        rows = self.score_samples(samples, progress=False) if samples else []
        scored = [r for row in rows for r in row["regions"]]
        by_index = {i: r for (i, _), r in zip(prepared.usable, scored, strict=True)}
        regions = []
        for i in range(len(boxes)):
            got = by_index.get(i, {"score": None, "label": None, "abnormal": None, "greedy": None})
            entry = {"id": f"{self.meta.region_id_prefix}{i + 1}"}
            entry.update({k: got[k] for k in ("score", "label", "abnormal", "greedy")})
            if i in prepared.notes:
                entry["note"] = prepared.notes[i]
            regions.append(entry)
        lines = [row["image_line_score"] for row in rows]
        return {
            "image": str(path),
            "regions": regions,
            "image_line_score": max(lines) if lines else None,
            "image_verdict": next(
                (r["image_verdict"] for r in rows if r["image_verdict"] != self.meta.normal_word),
                self.meta.normal_word if rows else None,
            ),
            "problems": job.problems,
        }
