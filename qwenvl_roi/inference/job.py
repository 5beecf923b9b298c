"""`qwenvl-roi predict` as a typed job (`PredictJob`) run on a scoring backend (backend.py).

Two forms. ``--regions``: a converters' regions file, scored in one go (what `eval` uses). ``--images
--boxes``: the boxes an upstream detector proposes on new images (detections.py), resumable and sharded:
the input becomes a fixed list of batches of `--batch-size` images in input order. Under torchrun each rank
scores the pending batches ``j % world == rank`` on its own device; results are written batch by batch
(resumable.py), so a killed job rerun with the same command skips what is done. Every batch is always
scored with the same images, so the output is byte-identical for any number of ranks and restarts.

The CLI (cli.py) only turns its flags into a `PredictJob`; the Python API runs the same job with
``run(PredictJob(...), backend=...)``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qwenvl_roi.converters.names import shown
from qwenvl_roi.inference import detections, distributed, resumable
from qwenvl_roi.inference.backend import DEFAULT_BACKEND, ScoringBackend
from qwenvl_roi.schemas import check_records


class PredictJob(BaseModel):
    """What one `qwenvl-roi predict` is asked to do: every flag, typed (paths as given)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="base model folder, or a merged export")
    adapter: str | None = Field(None, description="LoRA adapter folder trained on `model`")
    regions: str | None = Field(None, description="regions_*.jsonl of the converters, meta beside it")
    boxes: str | None = Field(None, description="detector boxes: a JSONL file, or a folder of txt files")
    boxes_format: Literal["jsonl", "txt", "yolo", "coco"] | None = Field(
        None, description="with boxes: its form (None: a file is JSONL, a folder txt)"
    )
    coco_images: str | None = Field(
        None, description="with a COCO results list: the COCO dataset file its image_id refer to"
    )
    images: str | None = Field(None, description="with boxes: where relative image paths start")
    meta: str | None = Field(None, description="with boxes: dataset_meta.json or its folder")
    strict: bool = Field(False, description="with boxes: any input problem stops before scoring")
    out: str = Field(description="the predictions file to write")
    mode: Literal["score", "generate"] = "score"
    batch_size: int = Field(4, description="samples (regions) or images (boxes) per batch")
    inference_config: str | None = Field(None, description="threshold file written by `qwenvl-roi eval`")
    device: str | None = Field(None, description="cuda, cuda:1, cpu (None: the backend's choice)")
    dtype: str | None = Field(None, description="float32, bfloat16, float16 (None: the backend's choice)")
    progress: bool = Field(True, description="show progress bars")


def load_samples(path: str | Path) -> list[dict[str, Any]]:
    """regions_*.jsonl samples with the fields the prompt needs, checked with file:line messages; each
    ``image`` resolved to an absolute path (a relative one is relative to the regions file's folder)."""
    from pydantic import ValidationError

    from qwenvl_roi.converters.paths import resolve_image
    from qwenvl_roi.errors import InputError
    from qwenvl_roi.fileio import iter_jsonl
    from qwenvl_roi.schemas import errors_text
    from qwenvl_roi.schemas.regions import RegionSample

    samples = []
    for lineno, obj in iter_jsonl(path):
        try:  # the published contract (qwenvl_roi/schemas/regions.py): what prepare writes
            s = RegionSample.model_validate(obj)
        except ValidationError as exc:
            raise InputError(f"{path}:{lineno}: not a regions sample ({errors_text(exc)})") from None
        if not s.regions:
            raise InputError(f"{path}:{lineno}: sample {s.sample_id!r} has no candidate regions")
        image = resolve_image(s.image, path)  # relative: against the regions file's folder (out_dir)
        if not image.is_file():
            raise InputError(f"{path}:{lineno}: image {s.image} not found (looked for {image})")
        samples.append({**obj, "image": str(image)})
    if not samples:
        raise InputError(f"{path}: no samples (the file is empty)")
    return samples


def check_out(out: str | Path, inputs: tuple[str | Path | None, ...] = ()) -> None:
    """Refuse an ``--out`` that cannot be written before the model loads and everything is scored (minutes
    to hours of work lost at the last step otherwise). Its folder must exist or be creatable, and be
    writable: probed with a real temporary file, since permission bits say nothing for root and nothing
    about a read-only mount. Nothing is left behind (missing folders are created only when writing).
    ``--out`` may not be one of the ``inputs`` (the regions or boxes file) nor lie inside an input folder
    (a txt folder of boxes): the predictions would replace what they were made from."""
    from qwenvl_roi.errors import InputError

    path = Path(out).absolute()
    if path.is_dir():
        raise InputError(f"--out {out}: is a folder; give the path of the predictions file to write")
    real = Path(os.path.realpath(path))
    for given in inputs:
        if given is None:
            continue
        source = Path(os.path.realpath(given))
        if real == source or (source.is_dir() and source in real.parents):
            raise InputError(
                f"--out {out}: is {'inside the input folder' if real != source else 'the input'} {given}; "
                "the predictions would replace what they are made from, so write them elsewhere"
            )
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--out {out}: cannot create the folder {folder}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".qwenvl-roi-write-check-", dir=existing)
    except OSError as exc:
        where = f"the folder {existing}" + ("" if existing == folder else f" (to create {folder})")
        raise InputError(f"--out {out}: cannot write in {where}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def run(job: PredictJob, backend: str | type[ScoringBackend] = DEFAULT_BACKEND) -> int:
    """Run a predict job on a scoring backend (a registered name or class); 0 when done. Bad input raises
    `InputError` (the CLI prints it and exits 2) before the model loads wherever it can be seen earlier."""
    from qwenvl_roi.errors import InputError

    if job.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {job.batch_size}")
    if (job.regions is None) == (job.boxes is None):
        raise InputError("give either --regions (a converters' regions file) or --boxes (detector boxes)")
    check_out(job.out, (job.regions, job.boxes, job.coco_images))
    if job.coco_images is not None and job.boxes_format != "coco":
        raise InputError("--coco-images goes with --boxes-format coco (a COCO results list)")
    if job.boxes is not None:
        if job.mode != "score":
            raise InputError("--boxes scores (--mode score); generate mode takes --regions")
        boxes = Path(job.boxes)
        if job.images is None:  # --images defaults to where the boxes are
            job = job.model_copy(update={"images": str(boxes if boxes.is_dir() else boxes.parent)})
        assert job.images is not None
        if not Path(job.images).is_dir():
            raise InputError(f"--images {job.images}: not a folder")
        return _run_boxes(job, backend)
    if job.images is not None or job.meta is not None or job.strict or job.boxes_format is not None:
        raise InputError("--images, --meta, --strict and --boxes-format go with --boxes")
    return _run_regions(job, backend)


def _run_regions(job: PredictJob, backend: str | type[ScoringBackend]) -> int:
    """The regions-file form: every sample scored (or generated) in one go, written atomically."""
    from qwenvl_roi.fileio import write_jsonl
    from qwenvl_roi.inference.predictor import RegionPredictor

    assert job.regions is not None
    samples = load_samples(job.regions)
    predictor = RegionPredictor.load(
        job.model,
        adapter=job.adapter,
        meta=job.regions,
        inference_config=job.inference_config,
        device=job.device,
        dtype=job.dtype,
        backend=backend,
    )
    if job.mode == "score":
        rows = predictor.score_samples(samples, batch_size=job.batch_size, progress=job.progress)
    else:
        rows = predictor.generate_samples(samples, batch_size=job.batch_size, progress=job.progress)
    check_records("predictions", rows)  # the published contract of a --regions row, before any writing
    write_jsonl(job.out, rows)
    flagged = sum(bool(r["abnormal"]) for row in rows for r in row["regions"])
    unparsed = sum(r["score"] is None for row in rows for r in row["regions"])
    msg = f"{len(rows)} samples, {flagged} regions flagged at threshold {predictor.config.threshold:.4f}"
    if job.mode == "generate":
        msg += f", {unparsed} regions unparsed"
    print(f"{msg} -> {job.out}")
    return 0


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
def folder_digest(folder: str | Path) -> str:
    """SHA-256 over the files of a model or adapter folder: each file's name and the hash of its bytes,
    files sorted by name.

    Why the bytes: a model retrained or rebuilt at the same path keeps its path, its config and even its
    safetensors header (same shapes and names), so only the weights tell it from the old one; and a changed
    processor or tokenizer file (image_mean, a pixel limit) changes every score as surely. A resumed job
    must not add its scores to the old model's. Only the folder's own files count (what
    ``from_pretrained`` reads), not ``checkpoint-*/`` subfolders with their optimizer states.

    Cost: one read of every file, once per job (rank 0 under torchrun). Right after the model is loaded
    the files are usually in the page cache and SHA-256 runs at about 1.3 GB/s on the development CPU (AMD
    EPYC with SHA extensions): ~12 s for a 7B model in bf16 (~15 GB); from a cold disk it is bounded by the
    read speed instead (~15 s at 1 GB/s, over a minute from slow network storage).
    """
    h = hashlib.sha256()
    files = sorted((p for p in Path(folder).iterdir() if p.is_file()), key=lambda p: p.name)
    for path in files:
        with path.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").digest()  # read in chunks, never whole in memory
        h.update(os.fsencode(path.name) + b"\0" + digest)
    return h.hexdigest()


def model_digests(job: PredictJob) -> dict[str, str | None]:
    """The digests of the ``--model`` and ``--adapter`` folders (None without an adapter)."""
    return {
        "model_files": folder_digest(job.model),
        "adapter_files": folder_digest(job.adapter) if job.adapter else None,
    }


def images_digest(jobs: list[detections.ImageJob]) -> str:
    """SHA-256 over every input image's path, size and modification time: a picture replaced between two
    runs of a job (same name, other pixels) is not resumed with the old picture's scores. The stat is what
    build tools trust; hashing every picture's bytes would cost a second read of the whole input."""
    h = hashlib.sha256()
    for j in jobs:
        if j.path is None:
            continue
        try:
            st = os.stat(j.path)
            h.update(os.fsencode(str(j.path)) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(os.fsencode(str(j.path)) + b"\0missing\n")
    return h.hexdigest()


def fingerprint(
    job: PredictJob,
    predictor: Any,
    weights: dict[str, str | None] | None = None,
    image_stamp: str | None = None,
) -> dict[str, Any]:
    """What must be equal for partial results to be resumed: model (its path and the bytes of its files,
    ``weights`` = ``model_digests(job)``, computed here when not given), prompt settings, inputs (the
    boxes' bytes, the images' ``images_digest``), batching, and the numbers themselves: backend, dtype and
    device type."""
    assert job.boxes is not None and job.images is not None
    meta_hash = hashlib.sha256(predictor.meta.model_dump_json().encode()).hexdigest()
    backend = predictor.backend
    stamp = {
        "model": str(Path(job.model).resolve()),
        "adapter": str(Path(job.adapter).resolve()) if job.adapter else None,
        **(weights if weights is not None else model_digests(job)),
        "dataset_meta": meta_hash,
        "boxes": _digest(Path(job.boxes)),
        "images": str(Path(job.images).resolve()),
        "image_files": image_stamp,
        "batch_size": job.batch_size,
        "threshold": predictor.config.threshold,
        # the numbers themselves: bf16 and fp32 scores differ, so do CPU and GPU kernels (spelled as torch
        # spells the dtype, as before backends existed, so a job started then still resumes)
        "dtype": f"torch.{backend.dtype}",
        "device_type": backend.device.split(":")[0],
    }
    if backend.name != DEFAULT_BACKEND:  # another engine's kernels, other numbers ("hf": absent, as before)
        stamp["backend"] = backend.name
    if job.boxes_format is not None:  # how the boxes were read (absent: as before the flag, still resumable)
        stamp["boxes_format"] = job.boxes_format
    if job.coco_images is not None:  # the images a COCO results list refers to
        stamp["coco_images"] = _digest(Path(job.coco_images))
    return stamp


def score_batch(predictor: Any, jobs: list[detections.ImageJob], batch_size: int) -> list[dict[str, Any]]:
    """Output rows of one batch of images (bad images get their error row, the rest are scored)."""
    prepared = [detections.load(detections.check(job), predictor.meta) for job in jobs]
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
                error = f"{p.job.source}: cannot score image {where} ({type(exc).__name__}: {exc})"
                prepared[i] = replace(p, job=replace(p.job, error=error))
    out = [
        detections.output_row(p, r, predictor.config.threshold)
        for p, r in zip(prepared, per_image, strict=True)
    ]
    check_records("predictions", out)  # the published contract of a --boxes row (a ContractError: our bug)
    return out


def _run_boxes(job: PredictJob, backend: str | type[ScoringBackend]) -> int:
    """The detector-boxes form: resumable, sharded under torchrun (``job.images`` already resolved)."""
    from tqdm import tqdm

    from qwenvl_roi.inference.predictor import RegionPredictor

    assert job.boxes is not None and job.images is not None
    ranks = distributed.from_environment()
    out = Path(job.out)
    coco_images = Path(job.coco_images) if job.coco_images is not None else None
    jobs = detections.read_jobs(Path(job.boxes), Path(job.images), job.boxes_format, coco_images)
    if job.strict:  # every image header and box checked before anything is scored
        problems = []
        for checked in (detections.check(j).job for j in jobs):
            problems += [checked.error] if checked.error else []
            problems += checked.problems
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
    # one job per --out at a time: a second one would mix its batches in, or remove the partial results
    # the first still needs when it finishes
    with resumable.exclusive(out, ranks.rank):
        predictor = RegionPredictor.load(
            job.model,
            adapter=job.adapter,
            meta=job.meta,
            inference_config=job.inference_config,
            device=ranks.device(job.device),
            dtype=job.dtype,
            backend=backend,
        )
        plan = [jobs[i : i + job.batch_size] for i in range(0, len(jobs), job.batch_size)]
        sizes = [len(b) for b in plan]
        hashed = ranks.from_first(lambda: (model_digests(job), images_digest(jobs)))  # hashed once
        stamp = fingerprint(job, predictor, *hashed)
        done = resumable.completed_batches(out, stamp, sizes)
        ranks.barrier()  # every rank has read what earlier runs finished before anyone writes more
        pending = [b for b in range(len(plan)) if b not in done]
        mine = pending[ranks.rank :: ranks.world]
        if ranks.rank == 0 and done:
            print(
                f"resuming: {len(done)} of {len(plan)} batches already done in {resumable.partial_dir(out)}"
            )
        writer = resumable.PartWriter(out, stamp, ranks.rank) if mine else None
        bar = tqdm(total=len(mine), desc=f"predict rank {ranks.rank}", unit="batch", disable=not job.progress)
        for b in mine:
            rows = score_batch(predictor, plan[b], job.batch_size)
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
            empty = sum(1 for r in rows if "error" not in r and not r.get("boxes"))
            print(
                f"{len(rows)} images, {flagged} judged abnormal at threshold "
                f"{predictor.config.threshold:.4f}, {empty} without a box (nothing to score), "
                f"{failed} could not be scored, {noted} input problems (see each row) -> {out}"
            )
    ranks.barrier()
    ranks.close()
    return 0
