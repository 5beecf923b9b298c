"""Verdict metrics at every evaluation of ``llamafactory-cli train``: the eval set scored like `predict`.

Why: ``eval_loss`` is the token cross-entropy averaged over every answer token, most of them region ids and
"normal" lines; it is a proxy for what the model is for. With ``roi_eval_verdicts: true`` each evaluation
also scores the eval dataset's regions file with the scorer of ``qwenvl-roi predict`` (qwenvl_roi.inference:
the "hf" backend on the live model, LLaMA-Factory's collator, greedy-consistent line scoring) and reduces the
predictions with ``qwenvl-roi eval``'s own functions (evaluation/records.py ``join``, evaluation/metrics.py
``sweep_threshold`` and ``compute_metrics``). The figures land in the metrics dict the Trainer logs, so
they are in ``trainer_state.json``'s ``log_history`` beside ``eval_loss`` and ``metric_for_best_model`` can
name them.

Where: HF ``Trainer.evaluate`` logs ``output.metrics`` before any ``on_evaluate`` callback runs, so the
metrics are added inside ``evaluation_loop``: ``llamafactory.train.sft.workflow.CustomSeq2SeqTrainer`` is
replaced by a picker that builds a subclass only when the run asks for verdicts (stock class otherwise), and
``plot_loss`` there gains the verdict figures. Both are listed in compat.SYMBOLS.

The eval set: the ``eval_dataset`` entry's ``file_name`` (``<out_dir>/sft_<split>.json``) names the regions
file beside it (``regions_<split>.jsonl``); ``roi_meta.meta_file`` must be the ``dataset_meta.json`` of that
folder. ``roi_eval_max_samples`` bounds the cost with a seeded choice of whole pictures (seed 0, kept in
file order; all of a picture's samples or none, since a picture's score is the max over them): the same
subset in every phase and run. Written once per run to ``<output_dir>/roi_eval/`` (the subset's regions file
and ``dataset_meta.json``), with each evaluation's predictions, so ``qwenvl-roi eval`` reproduces any row.

Several ranks: each scores a contiguous share (padded to equal length with a repeat whose result is dropped);
rank 0 gathers the rows in file order, computes the metrics and broadcasts them, so every rank logs and
compares the same figures. Under ZeRO-3 every forward gathers parameters collectively, so all ranks must run
the same forwards in step: every pass there is a full prefill (no cached prefix: a continuation without
pixels would skip the vision tower's gathers), and before each forward the ranks agree whether any still has
work; a rank that has none repeats a pass of its own and discards the result.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from . import compat, settings
from .dataset_match import DATA_CONFIG, _names

#: metrics where higher is better (each may be metric_for_best_model), as logged: ``<prefix>_<name>``
QUALITY_METRICS: tuple[str, ...] = (
    "image_auroc",
    "roi_auroc",
    "roi_within_abnormal_auroc",
    "image_line_auroc",
    "image_f1_at_best_threshold",
    "roi_f1_at_best_threshold",
)
#: logged beside them: the ROI-F1-best threshold on the eval set, the samples scored, the scoring time
INFO_METRICS: tuple[str, ...] = ("roi_best_threshold", "verdict_samples", "verdict_runtime")
SUBSET_SEED = 0
EVAL_FOLDER = "roi_eval"
_UNDEFINED_WHY = {
    "image_auroc": "it has {abn} abnormal and {nor} normal pictures (AUROC needs both)",
    "image_line_auroc": "it has {abn} abnormal and {nor} normal pictures (AUROC needs both)",
    "roi_auroc": "it has {pos} positive and {neg} negative regions (AUROC needs both)",
    "roi_within_abnormal_auroc": "its abnormal pictures hold {inside} negative regions (AUROC needs some)",
}


class VerdictSetupError(settings.RoiSettingsError):
    """roi_eval_verdicts cannot score this run's eval set (the message names the dataset, file and fix)."""


@dataclass(frozen=True)
class VerdictPlan:
    """What each evaluation scores, resolved once while the arguments are parsed (every rank)."""

    dataset: str
    regions_file: Path
    meta_file: Path
    samples: tuple[dict[str, Any], ...]  # the chosen samples, file order, images resolved
    total: int  # samples in the regions file
    prefix: str  # metric key prefix of the evaluations that get verdicts (eval, or eval_<name>)
    defined: tuple[str, ...]  # QUALITY_METRICS defined on the chosen samples
    model_path: str
    compute_dtype: str | None
    batch_size: int
    undefined_why: dict[str, str] = field(default_factory=dict)

    def keys(self) -> list[str]:
        """The quality metrics' logged names (plot_loss draws these)."""
        return [f"{self.prefix}_{m}" for m in self.defined]


_plan: VerdictPlan | None = None


def get_plan() -> VerdictPlan | None:
    """The plan of the run this process parsed (None: no verdict metrics)."""
    return _plan


def set_plan(plan: VerdictPlan | None) -> None:
    global _plan
    _plan = plan


# ---------------------------------------------------------------------------------------------------------
# Resolving the eval set (argument-parsing time: a wrong set stops the run before the model loads)


def choose_samples(samples: Sequence[dict[str, Any]], limit: int, seed: int = SUBSET_SEED) -> list[int]:
    """Indices (file order) of at most ``limit`` samples: a seeded shuffle of whole pictures, each taken when
    all its samples still fit. Everything when the file has at most ``limit`` samples."""
    if len(samples) <= limit:
        return list(range(len(samples)))
    by_image: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_image.setdefault(str(s["image"]), []).append(i)
    pictures = list(by_image.values())
    random.Random(seed).shuffle(pictures)
    chosen: list[int] = []
    for idx in pictures:
        if len(chosen) + len(idx) <= limit:
            chosen += idx
    return sorted(chosen)


def no_picture_fits(samples: Sequence[dict[str, Any]], limit: int) -> str:
    """Why ``limit`` chooses nothing (every picture has more samples than it), or "" when some fit."""
    if not samples or len(samples) <= limit:
        return ""
    smallest = min(Counter(str(s["image"]) for s in samples).values())  # samples per picture
    if smallest <= limit:
        return ""
    return (
        f"roi_eval_max_samples: {limit} fits no whole picture (a picture's samples are scored together, and "
        f"every picture has at least {smallest}); raise it to {smallest} or more"
    )


def _regions_file(dataset_dir: Path, entry: Any) -> tuple[Path | None, str]:
    """(regions file, '') for one of our region datasets, else (None, why not)."""
    if not isinstance(entry, dict):
        return None, "is not in dataset_info.json"
    if "roi_meta" not in entry:
        return None, "has no roi_meta (not written by `qwenvl-roi convert`)"
    file_name = entry.get("file_name")
    if not isinstance(file_name, str):
        return None, "has no local file_name"
    sft = dataset_dir / file_name
    stem = Path(file_name).name
    if not (stem.startswith("sft_") and stem.endswith(".json")):
        return None, f"file_name {file_name} is not a converters' sft_<split>.json"
    split = stem[len("sft_") : -len(".json")]
    regions = sft.parent / f"regions_{split}.jsonl"
    if split.startswith("image_"):
        return None, f"holds image-level samples ({stem}: one verdict per picture, no regions file)"
    if not regions.is_file():
        return None, f"has no regions file ({regions} is missing beside {sft}; re-run `qwenvl-roi convert`)"
    return regions, ""


def _defined(samples: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, str], int]:
    """The quality metrics the gold of ``samples`` defines, why the others are not, and the positives."""
    regions = [(str(s["image"]), bool(r["positive"])) for s in samples for r in s["regions"]]
    pos = sum(p for _, p in regions)
    abnormal = {img for img, p in regions if p}
    images = {img for img, _ in regions}
    inside = sum(not p for img, p in regions if img in abnormal)
    counts = {"abn": len(abnormal), "nor": len(images - abnormal), "pos": pos, "neg": len(regions) - pos}
    counts["inside"] = inside
    ok = {
        "image_auroc": counts["abn"] > 0 and counts["nor"] > 0,
        "image_line_auroc": counts["abn"] > 0 and counts["nor"] > 0,
        "roi_auroc": pos > 0 and counts["neg"] > 0,
        "roi_within_abnormal_auroc": inside > 0 and pos > 0,
    }
    why = {m: _UNDEFINED_WHY[m].format(**counts) for m, good in ok.items() if not good}
    defined = [m for m in QUALITY_METRICS if ok.get(m, True)]
    return defined, why, pos


def _eval_names(data_args: Any) -> list[str]:
    return _names(getattr(data_args, "eval_dataset", None))


def build_plan(
    roi: settings.RoiSettings | None,
    model_args: Any,
    data_args: Any,
    training_args: Any,
    finetuning_args: Any = None,
) -> VerdictPlan | None:
    """The plan for a run with roi_eval_verdicts that evaluates; None when it gets no verdicts.
    VerdictSetupError when the eval set is not one of ours, or the metric for the best model cannot work."""
    recipe = settings._recipe_name()
    stage = getattr(finetuning_args, "stage", "sft")
    if roi is not None and roi.roi_eval_verdicts and stage != "sft":
        raise VerdictSetupError(
            f"{recipe}: roi_eval_verdicts scores the answers of supervised fine-tuning (stage: sft); "
            f"stage: {stage} would evaluate without them. Set stage: sft or roi_eval_verdicts: false"
        )
    plan = None
    strategy = getattr(training_args, "eval_strategy", "no")
    during_training = str(getattr(strategy, "value", strategy)) != "no"
    if roi is not None and roi.roi_eval_verdicts and (during_training or training_args.do_eval):
        from transformers import Trainer

        mismatch = evaluation_loop_mismatch(Trainer.evaluation_loop)
        if mismatch:
            raise VerdictSetupError(f"{recipe}: roi_eval_verdicts: {mismatch}")
        plan = _resolve(roi, model_args, data_args, training_args, recipe)
    if during_training:  # the Trainer reads metric_for_best_model at every evaluation during training
        check_best_metric(training_args, plan, recipe)
    return plan


def _resolve(
    roi: settings.RoiSettings, model_args: Any, data_args: Any, training_args: Any, recipe: str
) -> VerdictPlan:
    from qwenvl_roi.converters.meta import META_FILE

    from qwenvl_roi.errors import InputError
    from qwenvl_roi.inference.job import load_samples

    err = VerdictSetupError
    names = _eval_names(data_args)
    if getattr(training_args, "fsdp", None):
        raise err(
            f"{recipe}: roi_eval_verdicts scores the live model and does not run under FSDP; use "
            "DeepSpeed ZeRO-2/3 (recipes/deepspeed/) or set roi_eval_verdicts: false"
        )
    if not names:
        split = getattr(data_args, "val_size", 0) or 0
        hint = f" (val_size: {split} splits evaluation samples off the training set: no regions file)"
        hint = hint if split else ""
        raise err(
            f"{recipe}: roi_eval_verdicts: true scores the eval set, but the run has no eval_dataset{hint}; "
            "set eval_dataset to a converted region dataset (e.g. roi_val), or roi_eval_verdicts: false"
        )
    dataset_dir = Path(str(getattr(data_args, "dataset_dir", "data")))
    info_path = dataset_dir / DATA_CONFIG
    if str(dataset_dir).startswith("REMOTE:") or not info_path.is_file():
        raise err(
            f"{recipe}: roi_eval_verdicts needs a local dataset_dir holding {DATA_CONFIG}: {dataset_dir}"
        )
    info = json.loads(info_path.read_text(encoding="utf-8"))
    ours, why_not = {}, {}
    for name in names:
        regions, why = _regions_file(dataset_dir, info.get(name))
        if regions is None:
            why_not[name] = why
        else:
            ours[name] = regions
    if len(ours) != 1:
        if not ours:
            listed = "; ".join(f"{n!r} {w}" for n, w in why_not.items())
            raise err(
                f"{recipe}: roi_eval_verdicts: true needs an eval_dataset written by `qwenvl-roi convert` "
                f"(region samples with a regions_<split>.jsonl beside its sft file), but in {info_path} "
                f"{listed}. Set eval_dataset to one (e.g. roi_val) or roi_eval_verdicts: false"
            )
        raise err(
            f"{recipe}: roi_eval_verdicts scores one region dataset, but eval_dataset names "
            f"{len(ours)}: {', '.join(ours)}; keep one of them (others without regions files may stay)"
        )
    ((name, regions_file),) = ours.items()
    meta_file = (dataset_dir / str(info[name]["roi_meta"].get("meta_file", ""))).resolve()
    beside = (regions_file.parent / META_FILE).resolve()
    if meta_file != beside:
        raise err(
            f"{info_path}: dataset {name!r}: roi_meta.meta_file is {meta_file} but the scorer reads the "
            f"{META_FILE} beside {regions_file} ({beside}); re-run `qwenvl-roi convert`"
        )
    if not beside.is_file():
        raise err(f"{info_path}: dataset {name!r}: {beside} is missing; re-run `qwenvl-roi convert`")
    try:
        samples = load_samples(regions_file)
    except InputError as exc:
        raise err(f"{recipe}: eval dataset {name!r}: {exc}") from None
    sft = dataset_dir / info[name]["file_name"]
    records = len(json.loads(sft.read_text(encoding="utf-8")))
    if records != len(samples):
        raise err(
            f"{recipe}: eval dataset {name!r}: {sft} has {records} records but {regions_file} has "
            f"{len(samples)} samples: they come from different conversions; re-run `qwenvl-roi convert`"
        )
    chosen = [samples[i] for i in choose_samples(samples, roi.roi_eval_max_samples)]
    too_small = no_picture_fits(samples, roi.roi_eval_max_samples)
    if too_small:
        raise err(f"{recipe}: eval dataset {name!r}: {too_small}")
    defined, why, positives = _defined(chosen)
    if len(chosen) < len(samples):
        what = f"the {len(chosen)} chosen samples of {name!r} hold"
    else:
        what = f"{name!r} holds"
    if not positives:
        raise err(
            f"{recipe}: roi_eval_verdicts: {what} no positive region: no threshold and no F1 can be "
            "chosen on it; evaluate on a split with defects"
            + (" (or raise roi_eval_max_samples)" if len(chosen) < len(samples) else "")
        )
    # eval_on_each_dataset: LLaMA-Factory hands the Trainer a dict, whose evaluations are named eval_<name>
    prefix = f"eval_{name}" if getattr(data_args, "eval_on_each_dataset", False) else "eval"
    dtype = getattr(model_args, "compute_dtype", None)
    return VerdictPlan(
        dataset=name,
        regions_file=regions_file,
        meta_file=beside,
        samples=tuple(chosen),
        total=len(samples),
        prefix=prefix,
        defined=tuple(defined),
        model_path=str(model_args.model_name_or_path),
        compute_dtype=None if dtype is None else str(dtype).removeprefix("torch."),
        batch_size=max(1, int(getattr(training_args, "per_device_eval_batch_size", 1) or 1)),
        undefined_why={m: f"{what.rsplit(' ', 1)[0]}: {w}" for m, w in why.items()},
    )


def _verdict_metric(key: str) -> str | None:
    """The verdict metric a metric_for_best_model key names (``eval_`` optional), else None."""
    for name in (*QUALITY_METRICS, *INFO_METRICS):
        if key == f"eval_{name}" or key.endswith(f"_{name}") and key.startswith("eval_"):
            return name
    return None


def check_best_metric(training_args: Any, plan: VerdictPlan | None, recipe: str) -> None:
    """metric_for_best_model naming a verdict metric must be logged at every evaluation and be a quality
    measure that is compared the right way round; refused before training, not at the first evaluation."""
    chosen = getattr(training_args, "metric_for_best_model", None)
    if not chosen:
        return
    key = chosen if chosen.startswith("eval_") else f"eval_{chosen}"
    name = _verdict_metric(key)
    err = VerdictSetupError
    if name is None:
        names = [f"{plan.prefix if plan else 'eval'}_{m}" for m in (*QUALITY_METRICS, *INFO_METRICS)]
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.85)
        if close:  # a misspelt verdict metric would only fail at the first evaluation, steps later
            raise err(
                f"{recipe}: metric_for_best_model: {chosen} is not logged by any evaluation (did you mean "
                f"{close[0]!r}?)"
            )
        return
    if plan is None:
        raise err(
            f"{recipe}: metric_for_best_model: {chosen} is a qwenvl-roi verdict metric; it is only logged "
            "with roi_eval_verdicts: true and an evaluation (eval_strategy: steps or epoch) on a converted "
            "eval_dataset (e.g. roi_val)"
        )
    if name not in QUALITY_METRICS:
        choices = ", ".join(f"{plan.prefix}_{m}" for m in QUALITY_METRICS)
        raise err(
            f"{recipe}: metric_for_best_model: {chosen} is not a quality measure; choose one of {choices}"
        )
    if key != f"{plan.prefix}_{name}":
        raise err(
            f"{recipe}: metric_for_best_model: {chosen} is not logged by this run; its verdict metrics are "
            f"named {plan.prefix}_<metric>, e.g. {plan.prefix}_{name}"
        )
    if name not in plan.defined:
        why = plan.undefined_why[name]
        raise err(f"{recipe}: metric_for_best_model: {chosen} is undefined on this eval set: {why}")
    if getattr(training_args, "greater_is_better", None) is False:
        raise err(
            f"{recipe}: metric_for_best_model: {chosen} is better when higher; set greater_is_better: true "
            "(false would keep the worst checkpoint)"
        )


# ---------------------------------------------------------------------------------------------------------
# Scoring at an evaluation (every rank)


class _Lockstep:
    """A scoring backend whose every forward runs in step with the other ranks' (ZeRO-3).

    Each `score` call is one forward (every pass a full prefill). Before it, the ranks agree (all-reduce MAX)
    that some rank still has work; `finish` repeats a pass of this rank's, result dropped, until none has.
    """

    def __init__(self, backend: Any, device: Any) -> None:
        self.backend = backend
        backend.reuse_prefix = False  # a continuation without pixels would skip the vision tower's gathers
        self.device, self.dtype, self.name = backend.device, backend.dtype, backend.name
        self.torch_device = device
        self.spare: Any = None
        self.forwards = 0  # forwards run, own and repeated
        self.repeats = 0  # of them, repeats whose result was dropped

    def _anyone(self, busy: bool) -> bool:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if busy else 0], device=self.torch_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def score(self, passes: Sequence[Any]) -> list[Any]:
        from qwenvl_roi.inference.backend import Pass, Request

        self._anyone(True)
        if self.spare is None:
            p = passes[0]
            self.spare = Pass(("roi_eval_spare",), p.images, Request(p.request.ids, p.request.want))
        self.forwards += 1
        return self.backend.score(passes)

    def release(self, sample: Any) -> None:
        self.backend.release(sample)

    def finish(self) -> None:
        while self._anyone(False):
            self.backend.score([self.spare])
            self.forwards += 1
            self.repeats += 1


def _dist() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _share(n: int, rank: int, world: int) -> tuple[list[int], int]:
    """This rank's contiguous block of sample indices; (indices, how many are its own). A rank left without
    samples (fewer samples than ranks) scores sample 0 and drops it: under ZeRO-3 it must run forwards too."""
    size = math.ceil(n / world)
    real = list(range(rank * size, min(n, (rank + 1) * size)))
    return (real or [0]), len(real)


class _Scorer:
    """The prompt encoder of the run (built once per process) and the scoring of one evaluation."""

    def __init__(self, plan: VerdictPlan) -> None:
        from qwenvl_roi.converters.meta import load_dataset_meta

        from qwenvl_roi.inference.encode import PromptEncoder, load_tokenizer_and_processor

        self.plan = plan
        meta = load_dataset_meta(plan.meta_file)
        tokenizer, processor, template = load_tokenizer_and_processor(plan.model_path, meta)
        self.encoder = PromptEncoder(tokenizer, processor, template, meta)

    def rows(self, model: Any, device: Any, zero3: bool) -> tuple[list[dict[str, Any]] | None, str]:
        """Score this rank's share of the plan's samples on ``model`` (eval mode, no grad, modes restored);
        rank 0 gets every row in file order (other ranks None) and a line on how the ranks shared the work."""
        import torch

        from qwenvl_roi.inference.backends.hf import HFBackend
        from qwenvl_roi.inference.config import InferenceConfig
        from qwenvl_roi.inference.predictor import RegionPredictor

        rank, world = _dist()
        indices, real = _share(len(self.plan.samples), rank, world)
        share = [self.plan.samples[i] for i in indices]
        dtype = getattr(torch, self.plan.compute_dtype) if self.plan.compute_dtype else None
        modes = {m: m.training for m in model.modules()}
        config = getattr(model, "config", None)
        use_cache = getattr(config, "use_cache", None)
        model.eval()
        try:
            with torch.no_grad():
                backend: Any = HFBackend(
                    model, self.encoder, device=device, dtype=dtype, inference_mode=False
                )
                lockstep = _Lockstep(backend, device) if zero3 and world > 1 else None
                predictor = RegionPredictor(lockstep or backend, self.encoder, InferenceConfig())
                rows = predictor.score_samples(share, batch_size=self.plan.batch_size, progress=False)
                if lockstep is not None:
                    lockstep.finish()
        finally:
            for sub, training in modes.items():  # exactly as before, module by module
                sub.training = training
            if config is not None and use_cache is not None:
                config.use_cache = use_cache
            self.encoder.images.clear()
        rows = rows[:real]
        if world == 1:
            return rows, ""
        import torch.distributed as dist

        counts = (real, lockstep.forwards, lockstep.repeats) if lockstep is not None else (real, -1, -1)
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object((rows, counts), gathered, dst=0)
        if rank != 0:
            return None, ""
        assert gathered is not None
        shares = [c for _, c in gathered]
        note = f"{world} ranks scored {[c[0] for c in shares]} samples"
        if lockstep is not None:
            note += (
                f"; ZeRO-3 lockstep: {[c[1] for c in shares]} forwards per rank, of them "
                f"{[c[2] for c in shares]} repeats whose result was dropped"
            )
        return [row for part, _ in gathered for row in part], note


def write_gold(plan: VerdictPlan, folder: Path) -> Path:
    """The chosen samples (images resolved) and their dataset_meta.json in ``folder``: the eval set as
    files `qwenvl-roi predict --regions` and `eval --gold` take. Written at the first evaluation of a run."""
    from qwenvl_roi.fileio import write_bytes, write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    write_bytes(folder / plan.meta_file.name, plan.meta_file.read_bytes())
    gold = folder / plan.regions_file.name
    write_jsonl(gold, [dict(s) for s in plan.samples])
    return gold


def metrics_of(rows: Sequence[dict[str, Any]], gold: Path, preds: Path) -> dict[str, float]:
    """`qwenvl-roi eval`'s figures for the rows (written to ``preds``) against ``gold``, the threshold chosen
    F1-best on the same set (as ``eval --val-predictions P --val-gold G`` with P and G the eval set), keyed
    by QUALITY/INFO_METRICS names."""
    from qwenvl_roi.converters.meta import load_dataset_meta

    from qwenvl_roi.evaluation.metrics import compute_metrics, sweep_threshold
    from qwenvl_roi.evaluation.records import join
    from qwenvl_roi.fileio import write_jsonl
    from qwenvl_roi.schemas import check_records

    check_records("predictions", rows)
    write_jsonl(preds, list(rows))
    regions = join(preds, gold)
    threshold, _ = sweep_threshold(regions)
    labels = list(load_dataset_meta(gold).labels)  # as `eval` reads them: the meta beside the gold
    m = compute_metrics(regions, threshold, labels)
    figures: dict[str, float | None] = {
        "image_auroc": m["image"]["auroc"],  # type: ignore[index]
        "roi_auroc": m["roi"]["auroc"],  # type: ignore[index]
        "roi_within_abnormal_auroc": m["roi_within_abnormal"]["auroc"],  # type: ignore[index]
        "image_line_auroc": m.get("image_line", {}).get("auroc"),  # type: ignore[union-attr]
        "image_f1_at_best_threshold": m["image"]["f1"],  # type: ignore[index]
        "roi_f1_at_best_threshold": m["roi"]["f1"],  # type: ignore[index]
        "roi_best_threshold": float(threshold),
    }
    return {k: float(v) for k, v in figures.items() if v is not None}


def evaluate(trainer: Any, plan: VerdictPlan, prefix: str) -> dict[str, float]:
    """The verdict metrics of the model ``trainer`` trains, named ``<prefix>_<metric>``, on every rank."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    start = time.perf_counter()
    scorer = trainer.__dict__.get("_qwenvl_roi_scorer")
    if scorer is None:  # once per trainer: tokenizer, processor and template as `predict` loads them
        scorer = trainer.__dict__["_qwenvl_roi_scorer"] = _Scorer(plan)
    rank, world = _dist()
    rows, note = scorer.rows(trainer.model, trainer.args.device, is_deepspeed_zero3_enabled())
    figures: dict[str, float] | None = None
    if rows is not None:
        folder = Path(trainer.args.output_dir) / EVAL_FOLDER
        seen: dict[int, int] = trainer.__dict__.setdefault("_qwenvl_roi_evaluations", {})
        if not seen:
            write_gold(plan, folder)
        step = int(trainer.state.global_step)
        seen[step] = seen.get(step, 0) + 1  # evaluated again at the same step: after training, best loaded
        preds = folder / f"predictions-step{step}{'' if seen[step] == 1 else f'-{seen[step]}'}.jsonl"
        figures = metrics_of(rows, folder / plan.regions_file.name, preds)
        chosen = f"{len(plan.samples)} of {plan.total}" if len(plan.samples) < plan.total else "all"
        _logger().info_rank0(
            f"qwenvl-roi verdict metrics at step {step}: {chosen} samples of {plan.dataset} "
            f"({plan.regions_file}) in {time.perf_counter() - start:.1f} s; predictions: {preds}"
            + (f"; {note}" if note else "")
        )
    if world > 1:
        import torch.distributed as dist

        box = [figures]
        dist.broadcast_object_list(box, src=0)
        figures = box[0]
    assert figures is not None
    figures["verdict_samples"] = float(len(plan.samples))
    figures["verdict_runtime"] = round(time.perf_counter() - start, 4)
    return {f"{prefix}_{k}": v for k, v in figures.items()}


def _logger() -> Any:
    get_logger = compat.get("llamafactory.extras.logging", "get_logger")
    return get_logger("llamafactory.qwenvl_roi")  # under LLaMA-Factory's configured root logger


# ---------------------------------------------------------------------------------------------------------
# The patch of llamafactory.train.sft.workflow


#: the parameters VerdictTrainer.evaluation_loop relies on (metric_key_prefix may come positionally, 5th)
EVALUATION_LOOP_PARAMS = ("self", "dataloader", "description", "prediction_loss_only", "ignore_keys")
EVALUATION_LOOP_PARAMS += ("metric_key_prefix",)


def evaluation_loop_mismatch(method: Any) -> str:
    """Why ``method`` (transformers' Trainer.evaluation_loop) is not the one the verdict trainer wraps, or "".

    Why: the override is transformers', not LLaMA-Factory's (compat.py checks those); a transformers whose
    evaluation_loop took other parameters would have the verdicts added to the wrong evaluations or to none,
    silently. pyproject.toml pins transformers; this check names the difference if the pin is lifted."""
    import inspect

    names = tuple(inspect.signature(method).parameters)
    if names[: len(EVALUATION_LOOP_PARAMS)] == EVALUATION_LOOP_PARAMS:
        return ""
    return (
        f"transformers' Trainer.evaluation_loop takes ({', '.join(names)}); the verdict metrics wrap "
        f"({', '.join(EVALUATION_LOOP_PARAMS)}). Use the pinned transformers (pyproject.toml) or "
        "roi_eval_verdicts: false"
    )


@functools.cache
def _verdict_trainer(stock: type) -> type:
    """The SFT trainer class whose evaluation_loop adds the verdict metrics to the metrics it returns."""

    class VerdictTrainer(stock):  # type: ignore[misc, valid-type]
        __doc__ = f"{stock.__name__} with qwenvl-roi verdict metrics at each evaluation (plugin/verdicts.py)."

        def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
            output = super().evaluation_loop(*args, **kwargs)
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            plan = get_plan()
            if plan is not None and prefix == plan.prefix:
                output.metrics.update(evaluate(self, plan, prefix))
            return output

    VerdictTrainer.__name__ = VerdictTrainer.__qualname__ = stock.__name__
    return VerdictTrainer


def _trainer_picker(stock: type) -> Callable[..., Any]:
    """Stands in for the trainer class in run_sft: the stock class unless this run asks for verdicts."""

    def CustomSeq2SeqTrainer(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 (the name run_sft calls)
        cls = _verdict_trainer(stock) if get_plan() is not None else stock
        return cls(*args, **kwargs)

    CustomSeq2SeqTrainer.__doc__ = stock.__doc__
    CustomSeq2SeqTrainer.__wrapped__ = stock  # type: ignore[attr-defined]
    return CustomSeq2SeqTrainer


def patch_sft_workflow(module: ModuleType) -> None:
    """Verdict metrics in the SFT trainer's evaluations and in its plots (both fall through without)."""
    stock = compat.get(module, "CustomSeq2SeqTrainer")
    original_plot = compat.get(module, "plot_loss")

    @functools.wraps(original_plot)
    def plot_loss(save_dictionary: str, keys: list[str] | None = None) -> None:
        plan = get_plan()
        if keys is None:
            return (
                original_plot(save_dictionary)
                if plan is None
                else original_plot(save_dictionary, keys=["loss", *plan.keys()])
            )
        return original_plot(save_dictionary, keys=list(keys) + (plan.keys() if plan is not None else []))

    compat.replace(module, "CustomSeq2SeqTrainer", _trainer_picker(stock))
    compat.replace(module, "plot_loss", plot_loss)
