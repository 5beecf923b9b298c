"""`qwenvl-roi predict`: per-region P(abnormal) and label, for a converters' regions_*.jsonl (`--regions`,
what `eval` uses) or for the boxes an upstream detector proposes on new images (`--images --boxes`: one row
per image, resumable, sharded under torchrun; job.py).

The prompt settings come from dataset_meta.json (beside the regions file; with --boxes from --meta or the
adapter/model folder); the decision threshold from the inference config (`--inference-config`, else the
adapter folder, else the model folder, else 0.5). The flags become a `job.PredictJob`, run by `job.run` on
the default scoring backend ("hf").
"""

from __future__ import annotations

import argparse
import errno
import sys

# load_samples and check_out live with the job; imported here for the callers that know them from cli.py
from qwenvl_roi.inference.job import PredictJob, check_out, load_samples

__all__ = ["PredictJob", "add_arguments", "check_out", "job_from_args", "load_samples", "run"]


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
        "--boxes-format",
        default=None,
        choices=("jsonl", "txt", "yolo", "coco"),
        help="the form of --boxes (default: a file is jsonl, a folder txt): yolo = a folder of YOLO txt "
        "mirroring --images (fractions, optional confidence); coco = a COCO dataset file, or a results list "
        "with --coco-images",
    )
    parser.add_argument(
        "--coco-images",
        default=None,
        help="with --boxes-format coco and a results list [{image_id, category_id, bbox, score}]: the COCO "
        "dataset file (images with id and file_name relative to --images) its image_id refer to",
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


def job_from_args(args: argparse.Namespace) -> PredictJob:
    """The typed job the flags describe (checked when it runs: job.run)."""
    return PredictJob(
        model=args.model,
        adapter=args.adapter,
        regions=args.regions,
        boxes=args.boxes,
        boxes_format=args.boxes_format,
        coco_images=args.coco_images,
        images=args.images,
        meta=args.meta,
        strict=args.strict,
        out=args.out,
        mode=args.mode,
        batch_size=args.batch_size,
        inference_config=args.inference_config,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `qwenvl-roi predict`: bad input is one line on stderr and exit code 2."""
    from qwenvl_roi.errors import ConvertError, EncodingError, InputError
    from qwenvl_roi.inference import job

    try:
        return job.run(job_from_args(args))
    except (InputError, ConvertError, EncodingError) as exc:
        print(f"qwenvl-roi predict: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or a vanished folder while writing: one line, what is kept
        why = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        print(
            f"qwenvl-roi predict: error: writing {exc.filename or args.out} failed: {why}; the batches "
            f"finished so far are kept in {args.out}.partial/ (--boxes), so the same command resumes",
            file=sys.stderr,
        )
        return 1
