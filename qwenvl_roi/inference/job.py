"""`qwenvl-roi predict --images ROOT --boxes B`: score detector boxes at scale, resumable and sharded.

The input (detections.py) becomes a fixed list of batches of `--batch-size` images in input order. Under
torchrun each rank scores the pending batches ``j % world == rank`` on its own device; results are written
batch by batch (resumable.py), so a killed job rerun with the same command skips what is done. Every batch
is always scored with the same images, so the output is byte-identical for any number of ranks and restarts.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from qwenvl_roi.converters.names import shown
from qwenvl_roi.inference import detections, distributed, resumable


def _digest(path: Path) -> str:
    """A hash of the boxes input (a file, or every txt of a folder with its name)."""
    h = hashlib.sha256()
    from qwenvl_roi.converters.prepare import walk_files

    names = walk_files(path)[1] if path.is_dir() else [path.name]  # the txt files the job reads
    for name in names:
        h.update(os.fsencode(name) + b"\0")
        h.update((path / name if path.is_dir() else path).read_bytes())
    return h.hexdigest()


#: the files a model or adapter folder holds its weights in (safetensors, PyTorch pickles)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def weights_digest(folder: str | Path) -> str:
    """SHA-256 over the weight files of a model or adapter folder: each file's name and the hash of its
    bytes, files sorted by name.

    Why the bytes: a model retrained or rebuilt at the same path keeps its path, its config and even its
    safetensors header (same shapes and names), so only the weights tell it from the old one, and a resumed
    job must not add its scores to the old model's. Only the folder's own files count (what
    ``from_pretrained`` reads), not ``checkpoint-*/`` subfolders with their optimizer states.

    Cost: one read of every weight file, once per job (rank 0 under torchrun). Right after the model is
    loaded the files are usually in the page cache and SHA-256 runs at about 1.3 GB/s on the development
    CPU (AMD EPYC with SHA extensions): ~12 s for a 7B model in bf16 (~15 GB); from a cold disk it is
    bounded by the read speed instead (~15 s at 1 GB/s, over a minute from slow network storage).
    """
    h = hashlib.sha256()
    files = sorted(
        (p for p in Path(folder).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES),
        key=lambda p: p.name,
    )
    for path in files:
        with path.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").digest()  # read in chunks, never whole in memory
        h.update(os.fsencode(path.name) + b"\0" + digest)
    return h.hexdigest()


def model_digests(args: Any) -> dict[str, str | None]:
    """The weights' digests of ``--model`` and ``--adapter`` (None without an adapter)."""
    return {
        "model_weights": weights_digest(args.model),
        "adapter_weights": weights_digest(args.adapter) if args.adapter else None,
    }


def fingerprint(args: Any, predictor: Any, weights: dict[str, str | None] | None = None) -> dict[str, Any]:
    """What must be equal for partial results to be resumed: model (its path and the bytes of its weights,
    ``weights`` = ``model_digests(args)``, computed here when not given), prompt settings, inputs,
    batching, number format and device."""
    meta_hash = hashlib.sha256(predictor.meta.model_dump_json().encode()).hexdigest()
    return {
        "model": str(Path(args.model).resolve()),
        "adapter": str(Path(args.adapter).resolve()) if args.adapter else None,
        **(weights if weights is not None else model_digests(args)),
        "dataset_meta": meta_hash,
        "boxes": _digest(Path(args.boxes)),
        "images": str(Path(args.images).resolve()),
        "batch_size": args.batch_size,
        "threshold": predictor.config.threshold,
        # the numbers themselves: bf16 and fp32 scores differ, so do CPU and GPU kernels
        "dtype": str(predictor.model.dtype),
        "device_type": next(predictor.model.parameters()).device.type,
    }


def score_batch(predictor: Any, jobs: list[detections.ImageJob], batch_size: int) -> list[dict[str, Any]]:
    """Output rows of one batch of images (bad images get their error row, the rest are scored)."""
    prepared = [detections.check(job) for job in jobs]
    for p in prepared:
        detections.load(p, predictor.meta)
    samples, owners = [], []
    for i, p in enumerate(prepared):
        for sample in p.samples(predictor.meta) if p.job.error is None else []:
            samples.append(sample)
            owners.append(i)
    per_image: list[list[dict[str, Any]]] = [[] for _ in prepared]
    try:
        rows = predictor.score_samples(samples, batch_size=batch_size, progress=False) if samples else []
        for owner, row in zip(owners, rows, strict=True):
            per_image[owner].append(row)
    except Exception:  # one image the processor or model cannot take: find it, score the others alone
        for i, p in enumerate(prepared):
            mine = [s for s, owner in zip(samples, owners, strict=True) if owner == i]
            if not mine:
                continue
            try:
                per_image[i] = predictor.score_samples(mine, batch_size=batch_size, progress=False)
            except Exception as exc:
                where = shown(str(p.job.path))
                p.job.error = f"{p.job.source}: cannot score image {where} ({type(exc).__name__}: {exc})"
    return [
        detections.output_row(p, r, predictor.config.threshold)
        for p, r in zip(prepared, per_image, strict=True)
    ]


def run(args: Any) -> int:
    """Entry point of the detector-boxes form of `qwenvl-roi predict`."""
    from tqdm import tqdm

    from qwenvl_roi.inference.predictor import RegionPredictor

    ranks = distributed.from_environment()
    out = Path(args.out)
    jobs = detections.read_jobs(Path(args.boxes), Path(args.images))
    if args.strict:  # every image header and box checked before anything is scored
        problems = []
        for job in jobs:
            detections.check(job)
            problems += [job.error] if job.error else []
            problems += job.problems
        if problems:
            if ranks.rank == 0:
                for p in problems:
                    print(f"qwenvl-roi predict: error: {p}", file=sys.stderr)
                print(
                    f"qwenvl-roi predict: {len(problems)} input problem(s); --strict: nothing scored",
                    file=sys.stderr,
                )
            ranks.close()
            return 2
    predictor = RegionPredictor.load(
        args.model,
        adapter=args.adapter,
        meta=args.meta,
        inference_config=args.inference_config,
        device=ranks.device(args.device),
        dtype=args.dtype,
    )
    plan = [jobs[i : i + args.batch_size] for i in range(0, len(jobs), args.batch_size)]
    sizes = [len(b) for b in plan]
    stamp = fingerprint(args, predictor, ranks.from_first(lambda: model_digests(args)))  # hashed once
    done = resumable.completed_batches(out, stamp, sizes)
    ranks.barrier()  # every rank has read what earlier runs finished before anyone writes more
    pending = [b for b in range(len(plan)) if b not in done]
    mine = pending[ranks.rank :: ranks.world]
    if ranks.rank == 0 and done:
        print(f"resuming: {len(done)} of {len(plan)} batches already done in {resumable.partial_dir(out)}")
    writer = resumable.PartWriter(out, stamp, ranks.rank) if mine else None
    bar = tqdm(total=len(mine), desc=f"predict rank {ranks.rank}", unit="batch", disable=args.no_progress)
    for b in mine:
        rows = score_batch(predictor, plan[b], args.batch_size)
        assert writer is not None
        writer.add(b, rows)
        bar.update(1)
    bar.close()
    if writer is not None:
        writer.close()
    ranks.barrier()  # every share is on disk
    if ranks.rank == 0:
        batches = resumable.completed_batches(out, stamp, sizes)
        resumable.finish(out, batches, len(plan))
        rows = [row for b in range(len(plan)) for row in batches[b]]
        flagged = sum(1 for r in rows if r.get("image_abnormal"))
        failed = sum(1 for r in rows if "error" in r)
        noted = sum(len(r.get("problems", [])) for r in rows)
        print(
            f"{len(rows)} images, {flagged} judged abnormal at threshold {predictor.config.threshold:.4f}, "
            f"{failed} could not be scored, {noted} input problems (see each row) -> {out}"
        )
    ranks.barrier()
    ranks.close()
    return 0
