"""`qwenvl-roi predict`: per-region P(abnormal) and label, for a converters' regions_*.jsonl (`--regions`,
what `eval` uses) or for the boxes an upstream detector proposes on new images (`--images --boxes`: one row
per image, resumable, sharded under torchrun; job.py).

The prompt settings come from dataset_meta.json (beside the regions file; with --boxes from --meta or the
adapter/model folder); the decision threshold from the inference config (`--inference-config`, else the
adapter folder, else the model folder, else 0.5).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `qwenvl-roi predict`."""
    parser.add_argument("--model", required=True, help="base model folder, or a merged export")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder trained on --model")
    parser.add_argument(
        "--regions", default=None, help="regions_*.jsonl (dataset_meta.json must be beside it)"
    )
    parser.add_argument(
        "--boxes",
        default=None,
        help="detector boxes instead of --regions: a JSONL file ({image, boxes, id}) or a folder of "
        "same-stem txt files in the annotation format (label column optional)",
    )
    parser.add_argument(
        "--images",
        default=None,
        help="with --boxes: the folder relative image paths start from (default: the boxes file's folder, "
        "or the txt folder itself)",
    )
    parser.add_argument(
        "--meta",
        default=None,
        help="with --boxes: dataset_meta.json or its folder (default: the adapter, then the model folder)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="with --boxes: any input problem stops before scoring (exit 2)"
    )
    parser.add_argument("--out", required=True, help="predictions.jsonl to write")
    parser.add_argument("--mode", choices=("score", "generate"), default="score", help="default: score")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per forward pass (default 4)")
    parser.add_argument(
        "--inference-config", default=None, help="threshold file written by `qwenvl-roi eval`"
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument(
        "--dtype", default=None, help="float32, bfloat16 (default: bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def load_samples(path: str | Path) -> list[dict[str, Any]]:
    """regions_*.jsonl samples with the fields the prompt needs, checked with file:line messages; each
    ``image`` resolved to an absolute path (a relative one is relative to the regions file's folder)."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    from qwenvl_roi.converters.paths import resolve_image
    from qwenvl_roi.evaluation.files import InputError, iter_jsonl
    from qwenvl_roi.evaluation.records import Finite

    class _Region(BaseModel):
        model_config = ConfigDict(extra="allow")
        id: str
        box: list[Finite]  # Infinity / NaN / a 400-digit integer: this line's error, not a traceback

    class _Sample(BaseModel):
        model_config = ConfigDict(extra="allow")
        sample_id: str
        image: str
        width: int
        height: int
        regions: list[_Region]

    samples = []
    for lineno, obj in iter_jsonl(path):
        try:
            s = _Sample.model_validate(obj)
        except ValidationError as exc:
            errs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InputError(f"{path}:{lineno}: not a regions sample ({errs})") from None
        if not s.regions:
            raise InputError(f"{path}:{lineno}: sample {s.sample_id!r} has no candidate regions")
        if any(len(r.box) != 4 for r in s.regions):
            raise InputError(f"{path}:{lineno}: every box must be [x1, y1, x2, y2]")
        image = resolve_image(s.image, path)  # relative: against the regions file's folder (out_dir)
        if not image.is_file():
            raise InputError(f"{path}:{lineno}: image {s.image} not found (looked for {image})")
        samples.append({**obj, "image": str(image)})
    if not samples:
        raise InputError(f"{path}: no samples (the file is empty)")
    return samples


def check_out(out: str | Path) -> None:
    """Refuse an ``--out`` that cannot be written before the model loads and everything is scored (minutes
    to hours of work lost at the last step otherwise). Its folder must exist or be creatable, and be
    writable: probed with a real temporary file, since permission bits say nothing for root and nothing
    about a read-only mount. Nothing is left behind (missing folders are created only when writing)."""
    from qwenvl_roi.evaluation.files import InputError

    path = Path(out).absolute()
    if path.is_dir():
        raise InputError(f"--out {out}: is a folder; give the path of the predictions file to write")
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


def run(args: argparse.Namespace) -> int:
    """Entry point of `qwenvl-roi predict`."""
    from qwenvl_roi.converters.config import ConvertError
    from qwenvl_roi.evaluation.files import InputError, write_jsonl_atomic
    from qwenvl_roi.inference.encode import EncodingError

    try:
        if args.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
        if (args.regions is None) == (args.boxes is None):
            raise InputError("give either --regions (a converters' regions file) or --boxes (detector boxes)")
        check_out(args.out)
        if args.boxes is not None:
            return _run_boxes(args)
        if args.images is not None or args.meta is not None or args.strict:
            raise InputError("--images, --meta and --strict go with --boxes")
        samples = load_samples(args.regions)
        from qwenvl_roi.inference.predictor import RegionPredictor

        predictor = RegionPredictor.load(
            args.model,
            adapter=args.adapter,
            meta=args.regions,
            inference_config=args.inference_config,
            device=args.device,
            dtype=args.dtype,
        )
        if args.mode == "score":
            rows = predictor.score_samples(samples, batch_size=args.batch_size, progress=not args.no_progress)
        else:
            rows = predictor.generate_samples(
                samples, batch_size=args.batch_size, progress=not args.no_progress
            )
    except (InputError, ConvertError, EncodingError) as exc:
        print(f"qwenvl-roi predict: error: {exc}", file=sys.stderr)
        return 2
    write_jsonl_atomic(args.out, rows)
    flagged = sum(bool(r["abnormal"]) for row in rows for r in row["regions"])
    unparsed = sum(r["score"] is None for row in rows for r in row["regions"])
    msg = f"{len(rows)} samples, {flagged} regions flagged at threshold {predictor.config.threshold:.4f}"
    if args.mode == "generate":
        msg += f", {unparsed} regions unparsed"
    print(f"{msg} -> {args.out}")
    return 0


def _run_boxes(args: argparse.Namespace) -> int:
    """The detector-boxes form (job.py); --images defaults to where the boxes are."""
    from qwenvl_roi.evaluation.files import InputError
    from qwenvl_roi.inference import job

    if args.mode != "score":
        raise InputError("--boxes scores (--mode score); generate mode takes --regions")
    boxes = Path(args.boxes)
    if args.images is None:
        args.images = str(boxes if boxes.is_dir() else boxes.parent)
    if not Path(args.images).is_dir():
        raise InputError(f"--images {args.images}: not a folder")
    return job.run(args)
