"""`qwenvl-roi eval`: ROI- and image-level metrics, the threshold chosen on val, a report and curves.

The threshold is either given, or swept on validation predictions (F1-best at ROI level) and then applied
unchanged to the evaluated predictions; the chosen value is written to an inference config that
`predict` and the Python API use by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from qwenvl_roi.errors import OutputError
from qwenvl_roi.outputs import claim, legacy_json, staged

if TYPE_CHECKING:
    from qwenvl_roi.evaluation.gallery import GalleryOptions

METRICS_JSON = "metrics.json"
EVAL_LEGACY = legacy_json(METRICS_JSON, "threshold", "threshold_source", "roi")  # eval before the marker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `qwenvl-roi eval`."""
    parser.add_argument(
        "--predictions", required=True, help="predictions.jsonl written by `qwenvl-roi predict`"
    )
    parser.add_argument("--gold", required=True, help="the regions_X.jsonl the predictions were made for")
    parser.add_argument(
        "--threshold", type=float, default=None, help="fixed threshold (abnormal if score >= it)"
    )
    parser.add_argument("--val-predictions", default=None, help="predictions on val, to choose the threshold")
    parser.add_argument("--val-gold", default=None, help="regions_val.jsonl matching --val-predictions")
    parser.add_argument(
        "--model-dir",
        action="append",
        default=[],
        help="also write the inference config and the gold's dataset_meta.json into this adapter/model "
        "folder (repeatable), so `predict` and the Python API use the chosen threshold and prompt "
        "settings by default",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (metrics.json, report.md, roc.png, pr.png, confusion.png, gallery/index.html)",
    )
    parser.add_argument(
        "--gallery-limit",
        type=int,
        default=1000,
        help="pictures in gallery/ (false negatives, false positives, label confusions first); 0: none",
    )
    parser.add_argument("--gallery-page-size", type=int, default=200, help="pictures per gallery page")
    parser.add_argument(
        "--gallery-max-side", type=int, default=512, help="thumbnail size bound (pixels, longer side)"
    )
    parser.add_argument(
        "--gallery-format", choices=["jpeg", "png"], default="jpeg", help="thumbnail file format"
    )


def _canonical_labels(gold_path: str) -> tuple[list[str], str | None]:
    """Labels from dataset_meta.json beside the gold file; (labels, warning) when it is absent."""
    from qwenvl_roi.converters.meta import load_dataset_meta
    from qwenvl_roi.errors import ConvertError

    try:
        return list(load_dataset_meta(gold_path).labels), None
    except ConvertError as exc:
        return [], f"per-label figures use only labels seen in gold/predictions ({exc})"


def evaluate(
    predictions: str,
    gold: str,
    out_dir: str,
    threshold: float | None = None,
    val_predictions: str | None = None,
    val_gold: str | None = None,
    model_dirs: list[str] | None = None,
    gallery: GalleryOptions | None = None,
) -> dict:
    """Compute metrics, write metrics.json, the gallery, the report, curves and the inference config;
    return metrics. ``gallery`` None: default gallery options; ``limit=0``: no gallery."""
    from qwenvl_roi.errors import InputError
    from qwenvl_roi.evaluation.gallery import GalleryOptions, write_gallery
    from qwenvl_roi.evaluation.metrics import compute_metrics, sweep_threshold
    from qwenvl_roi.evaluation.records import join
    from qwenvl_roi.evaluation.report import write_report
    from qwenvl_roi.fileio import sorted_keys, write_json, write_text
    from qwenvl_roi.inference.config import InferenceConfig, save_inference_config
    from qwenvl_roi.schemas import check_record

    if threshold is not None and (val_predictions or val_gold):
        raise InputError("give either --threshold or --val-predictions/--val-gold, not both")
    if bool(val_predictions) != bool(val_gold):
        raise InputError("--val-predictions and --val-gold go together")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold {threshold} is outside [0, 1]")
    for folder in model_dirs or []:  # checked before anything is computed or written
        if not Path(folder).is_dir():
            raise InputError(f"--model-dir {folder}: not a folder")
    claim(out_dir, "eval", legacy=EVAL_LEGACY)  # a folder we may not write is refused before the work

    val_info = None
    no_regions: list[str] = []  # gold samples without regions: in no metric, said in the warnings
    if val_predictions:
        val_regions = join(val_predictions, val_gold, no_regions)
        threshold, val_info = sweep_threshold(val_regions)
        source = "val"
    elif threshold is not None:
        source = "given"
    else:
        threshold, source = 0.5, "default"

    regions = join(predictions, gold, no_regions)
    labels, label_warning = _canonical_labels(gold)
    metrics = compute_metrics(regions, threshold, labels)
    metrics["threshold_source"] = source
    if no_regions:
        metrics["warnings"].insert(
            0,
            f"{len(no_regions)} gold sample(s) have no regions, so their images are in no metric (ROI or "
            f"image): {', '.join(no_regions[:5])}{' ...' if len(no_regions) > 5 else ''}",
        )
    if source == "default":
        metrics["warnings"].insert(0, "no --threshold and no validation predictions: threshold 0.5 used")
    if label_warning:
        metrics["warnings"].append(label_warning)
    if val_info is not None:
        metrics["val"] = {"threshold": threshold, **val_info}
    metrics["inputs"] = {"predictions": str(predictions), "gold": str(gold)}
    if val_predictions:
        metrics["inputs"].update({"val_predictions": str(val_predictions), "val_gold": str(val_gold)})

    gallery = gallery or GalleryOptions()
    config = InferenceConfig(
        threshold=threshold, threshold_source=source, val_f1=None if val_info is None else val_info["f1"]
    )
    # every output lands as one set: the folder holds the complete old set or the complete new one
    with staged(out_dir, "eval", legacy=EVAL_LEGACY) as out:
        if gallery.limit > 0:
            metrics["gallery"] = write_gallery(metrics, regions, gold, out, gallery)
            metrics["warnings"] += [f"gallery: {w}" for w in metrics["gallery"]["warnings"]]
        check_record("metrics", metrics)  # the file's contract (qwenvl_roi/schemas/metrics.py), checked
        write_json(out / METRICS_JSON, sorted_keys(metrics))
        write_report(metrics, regions, out)
        save_inference_config(config, out)
    meta_file = Path(gold).parent / "dataset_meta.json"
    for folder in model_dirs or []:
        save_inference_config(config, folder)
        if meta_file.is_file():
            write_text(Path(folder) / meta_file.name, meta_file.read_text(encoding="utf-8"))
    return metrics


def run(args: argparse.Namespace) -> int:
    """Entry point of `qwenvl-roi eval`; bad input -> one clear line on stderr and exit code 2."""
    from pydantic import ValidationError

    from qwenvl_roi.errors import InputError, MetricsError
    from qwenvl_roi.evaluation.gallery import GalleryOptions

    try:
        options = GalleryOptions(
            limit=args.gallery_limit,
            page_size=args.gallery_page_size,
            max_side=args.gallery_max_side,
            image_format=args.gallery_format,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--gallery-" + str(err["loc"][0]).replace("_", "-").replace("image-", "")
        print(f"qwenvl-roi eval: error: {flag}: {err['msg']}", file=sys.stderr)
        return 2
    try:
        metrics = evaluate(
            args.predictions,
            args.gold,
            args.out,
            threshold=args.threshold,
            val_predictions=args.val_predictions,
            val_gold=args.val_gold,
            model_dirs=args.model_dir,
            gallery=options,
        )
    except (InputError, MetricsError, OutputError) as exc:
        print(f"qwenvl-roi eval: error: {exc}", file=sys.stderr)
        return 2
    roi, image = metrics["roi"], metrics["image"]
    auroc = "n/a" if image["auroc"] is None else f"{image['auroc']:.4f}"
    print(
        f"threshold {metrics['threshold']:.4f} ({metrics['threshold_source']}); "
        f"ROI P/R/F1 {roi['precision']:.4f}/{roi['recall']:.4f}/{roi['f1']:.4f}; "
        f"image P/R/F1 {image['precision']:.4f}/{image['recall']:.4f}/{image['f1']:.4f}, AUROC {auroc}; "
        f"-> {Path(args.out) / METRICS_JSON}"
    )
    if "gallery" in metrics:
        g = metrics["gallery"]
        print(f"gallery: {g['shown']} of {g['pictures']} pictures -> {Path(args.out) / g['index']}")
    for w in metrics["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0
