"""`qwenvl-roi scan-labels`: label distribution of the annotations and a ready-to-paste label_map block.

Every annotation format is read by its source (converters/sources/), the one prepare uses, so the labels
counted are the labels prepare will see. With ``--out X.json`` the JSON goes to the file, a bar chart of
the merged labels to ``X.png``, and a summary plus the YAML block to stdout; without it stdout carries only
the JSON (machine-readable) and the YAML block goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from qwenvl_roi.errors import ConvertError
from qwenvl_roi.fileio import dumps, write_json

from .config import DataConfig, format_validation_error, load_data_config, report_error
from .label_chart import write_label_chart
from .labels import count_labels, scan_summary
from .parse import Problem
from .sources import FORMATS, SourceError, make_source
from .walk import data_skips

#: data.yaml keys that scan-labels also takes as flags
FLAG_KEYS = (
    "abnormal_dir",
    "annotation_format",
    "annotations_dir",
    "yolo_names",
    "coco_json",
    "column_delim",
)


def _flag_words(message: str) -> str:
    """A config error in the words of the command line (``yolo_names`` -> ``--yolo-names``)."""
    pattern = r"\b(" + "|".join(FLAG_KEYS) + r")\b"
    return re.sub(pattern, lambda m: "--" + m.group(1).replace("_", "-"), message)


def settings_from_flags(
    abnormal_dir: str | Path,
    column_delim: str = ";",
    annotation_format: str = "txt",
    annotations_dir: str | Path | None = None,
    yolo_names: str | Path | None = None,
    coco_json: str | Path | None = None,
) -> DataConfig:
    """The settings scan-labels reads, from its flags, validated as data.yaml is (errors name the flags)."""
    if not column_delim or not column_delim.strip():
        raise ConvertError("--column-delim must be a visible character such as ';'")
    keys: dict[str, Any] = {
        "abnormal_dir": abnormal_dir,
        "normal_dir": None,
        "column_delim": column_delim,
        "annotation_format": annotation_format,
        "annotations_dir": annotations_dir,
        "yolo_names": yolo_names,
        "coco_json": coco_json,
    }
    try:
        return DataConfig.model_validate(keys)
    except ValidationError as exc:
        raise ConvertError(_flag_words(format_validation_error(exc, "scan-labels", {}))) from None


def scan_labels(
    abnormal_dir: str | Path | None = None,
    column_delim: str = ";",
    progress: bool | None = None,
    *,
    config: DataConfig | None = None,
) -> dict[str, Any]:
    """Boxes and images per raw label, the merged variant groups, the label_map YAML and any problems.

    ``config``: the settings (data.yaml, or settings_from_flags for other formats); without it the
    seed's txt files under ``abnormal_dir`` are read."""
    if config is None:
        if abnormal_dir is None:
            raise ConvertError("scan-labels needs --abnormal-dir or --config")
        root = Path(abnormal_dir)
        if not root.is_dir():
            raise ConvertError(f"--abnormal-dir {root} does not exist or is not a folder")
        config = settings_from_flags(root, column_delim)
    cfg = config
    folder = cfg.annotations_dir or cfg.abnormal_dir
    if cfg.annotation_format != "coco" and not folder.is_dir():
        key = (
            "dataset_root"
            if cfg.dataset_layout
            else "annotations_dir"
            if cfg.annotations_dir
            else "abnormal_dir"
        )
        raise ConvertError(f"{key} {folder} does not exist or is not a folder")
    try:
        source = make_source(cfg)
        problems: list[Problem] = []  # the walk's first (symlink loops, folders linked twice)
        pairs: list[tuple[str, str]] = []
        disable = None if progress is None else not progress
        skip = data_skips(folder, cfg.out_dir, cfg.normal_dir)  # what convert's walk does not read either
        scanned = source.scan(problems, skip)
        for key, read in tqdm(scanned, desc="scan-labels", unit="file", disable=disable):
            problems += read.problems
            pairs += [(b.label, key) for b in read.boxes]
    except SourceError as exc:
        raise ConvertError(str(exc)) from None
    boxes, images = count_labels(pairs)
    summary = scan_summary(boxes, images)
    if cfg.dataset_layout is not None:  # a benchmark layout: its masks are the annotations
        found: dict[str, Any] = {
            "dataset_layout": cfg.dataset_layout,
            "mask_files": getattr(source, "masks_found", 0),
        }
    elif cfg.annotation_format == "txt":
        found = {"txt_files": source.files_found}
    else:
        found = {"annotation_format": cfg.annotation_format, "annotation_files": source.files_found}
    return {
        "abnormal_dir": cfg.abnormal_dir.as_posix(),
        **found,
        "boxes": sum(boxes.values()),
        **summary,
        "problems": [p.as_dict() for p in problems],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--abnormal-dir",
        default=None,
        help="the images folder (abnormal images and, for txt, their .txt files); overrides --config's",
    )
    parser.add_argument(
        "--config", default=None, help="read the annotation settings from this data.yaml (flags override it)"
    )
    parser.add_argument(
        "--annotation-format", default=None, choices=FORMATS, help="the annotations' format (default txt)"
    )
    parser.add_argument(
        "--annotations-dir",
        default=None,
        help="folder of the per-image annotation files mirroring the images folder (default: beside them)",
    )
    parser.add_argument(
        "--yolo-names", default=None, help="yolo: a classes.txt or an Ultralytics dataset YAML"
    )
    parser.add_argument("--coco-json", default=None, help="coco: the COCO file")
    parser.add_argument(
        "--column-delim", default=None, help="txt: column delimiter (full-width '；' is always accepted)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="write the JSON here and the bar chart beside it as .png (default: print the JSON)",
    )


def _settings(args: argparse.Namespace) -> DataConfig | None:
    """None for the seed's plain ``--abnormal-dir [--column-delim]`` (read as it always was)."""
    given = {k: getattr(args, k) for k in FLAG_KEYS if getattr(args, k) is not None}
    if args.config:
        return load_data_config(args.config, given)
    if set(given) <= {"abnormal_dir", "column_delim"}:
        return None
    if args.abnormal_dir is None:
        raise ConvertError("scan-labels needs --abnormal-dir or --config")
    return settings_from_flags(**{**given, "column_delim": args.column_delim or ";"})


def check_outputs(out: Path) -> None:
    """--out is the JSON; the chart goes beside it as <stem>.png. Neither may be a folder, --out may not be
    the chart itself, and a PNG there that this command did not draw (a user's picture) is not replaced."""
    from .label_chart import is_label_chart

    chart = out.with_suffix(".png")
    if out.suffix.lower() == ".png":
        raise ConvertError(f"--out {out}: is where the JSON goes (the chart is written beside it as .png)")
    for path in (out, chart):
        if path.is_dir():
            raise ConvertError(f"--out {out}: {path} is a folder")
    if chart.exists() and not is_label_chart(chart) and not _ours(out, chart):
        raise ConvertError(
            f"--out {out}: {chart} exists and was not drawn by scan-labels; choose another --out "
            "(nothing was changed)"
        )


def _ours(out: Path, chart: Path) -> bool:
    """A chart from before the PNG marker: the JSON beside it is a scan-labels result naming it."""
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("chart") == chart.name and "label_map_yaml" in data


def run(args: argparse.Namespace) -> int:
    try:
        config = _settings(args)
        if args.out:
            check_outputs(Path(args.out))  # before the scan, not after
        result = scan_labels(args.abnormal_dir, args.column_delim or ";", config=config)
        if args.out:
            chart = Path(args.out).with_suffix(".png")
            result["chart"] = chart.name
            result["chart_legend"] = write_label_chart(result["merged"], chart)
            write_json(args.out, result)
    except ConvertError as exc:
        return report_error(exc)
    except OSError as exc:
        print(f"error: writing {exc.filename or args.out} failed: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.out:
        chart = Path(args.out).with_suffix(".png")
        for row in result["merged"]:
            variants = ", ".join(row["variants"])
            print(f"{row['label']}: {row['boxes']} boxes in {row['images']} images  [{variants}]")
        if result["problems"]:
            print(f"{len(result['problems'])} problem line(s); see {args.out}")
        print(f"wrote {args.out} and the bar chart {chart}\n\n# paste into configs/data.yaml:")
        print(result["label_map_yaml"], end="")
    else:
        print(dumps(result))
        print("# paste into configs/data.yaml:", file=sys.stderr)
        print(result["label_map_yaml"], end="", file=sys.stderr)
    return 0
